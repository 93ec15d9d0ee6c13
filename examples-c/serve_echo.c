/*
 * serve_echo: libprefork's supervisor around a server of your own. Each child runs a
 * line-echo TCP server with its own poll(2) loop instead of the library's HTTP engine (serve
 * mode, prefork_set_serve); the master still binds, starts, replaces and stops the children.
 *
 *   serve_echo [--addr HOST:PORT] [--children N] [--reuseport] [--explicit-ready]
 *              (defaults: 127.0.0.1:7000, 2 children, ready when serve starts)
 *
 * A client gets "hello from PID" on connecting, then every line it sends back. Try
 * `nc 127.0.0.1 7000`; kill a child with SIGKILL to see it replaced; SIGTERM the master to
 * see every child say "bye" to its clients and exit 0.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "prefork.h"

/* Connections one child serves at once; more wait in the listener's backlog. */
#define MAX_CONNS 64
/* A line longer than this is echoed in pieces of this size. */
#define LINE_MAX_LEN 1024

struct conn {
    int fd; /* -1: free slot */
    size_t len;
    char line[LINE_MAX_LEN];
};

static void say(const char *line) {
    fputs(line, stdout);
    fflush(stdout);
}

/* Writes all of buf, or gives up: an example does not queue output for slow readers, it drops
 * them (MSG_NOSIGNAL: a client that went away must not kill the child with SIGPIPE). */
static bool send_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        buf += n;
        len -= (size_t)n;
    }
    return true;
}

static void close_conn(struct conn *c) {
    close(c->fd);
    c->fd = -1;
    c->len = 0;
}

static void accept_all(int listen_fd, struct conn *conns) {
    for (;;) {
        int fd = accept(listen_fd, NULL, NULL);
        if (fd < 0) return; /* EAGAIN: no more for now; other errors: try on the next event */
        struct conn *slot = NULL;
        for (int i = 0; i < MAX_CONNS && !slot; i++)
            if (conns[i].fd < 0) slot = &conns[i];
        char hello[64];
        int n = snprintf(hello, sizeof hello, "hello from %ld\n", (long)getpid());
        if (!slot || !send_all(fd, hello, (size_t)n)) {
            close(fd);
            continue;
        }
        slot->fd = fd;
        slot->len = 0;
    }
}

/* Reads what the client sent and echoes every complete line; false when it is done. */
static bool echo(struct conn *c) {
    ssize_t n = recv(c->fd, c->line + c->len, sizeof c->line - c->len, 0);
    if (n < 0 && errno == EINTR) return true;
    if (n <= 0) return false;
    c->len += (size_t)n;
    char *start = c->line, *end = c->line + c->len, *nl;
    while ((nl = memchr(start, '\n', (size_t)(end - start))) != NULL) {
        if (!send_all(c->fd, start, (size_t)(nl + 1 - start))) return false;
        start = nl + 1;
    }
    c->len = (size_t)(end - start);
    if (c->len == sizeof c->line) { /* no newline in a full buffer: echo it as it is */
        if (!send_all(c->fd, c->line, c->len)) return false;
        c->len = 0;
    }
    memmove(c->line, start, c->len);
    return true;
}

/*
 * The child's server. It owns listen_fd; stop_fd is the library's, readable once this child
 * must stop (the master's SIGTERM, the master's death, prefork_shutdown). Its return value is
 * the child's exit status.
 */
static int serve(void *user_data, int listen_fd, int stop_fd) {
    bool explicit_ready = *(bool *)user_data;
    struct conn *conns = malloc(MAX_CONNS * sizeof *conns);
    if (!conns) return 1;
    for (int i = 0; i < MAX_CONNS; i++) conns[i].fd = -1;
    /* Accepted sockets inherit O_NONBLOCK from the listener: one blocked client cannot stall
     * the loop. The listener's flag is shared with every child, which all set it alike. */
    int flags = fcntl(listen_fd, F_GETFL);
    if (flags < 0 || fcntl(listen_fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        free(conns);
        return 1;
    }
    if (explicit_ready && prefork_child_ready() != PREFORK_OK) {
        fprintf(stderr, "serve_echo: %s\n", prefork_last_error());
        free(conns);
        return 1;
    }
    char line[64];
    snprintf(line, sizeof line, "serving pid=%ld\n", (long)getpid());
    say(line);

    struct pollfd fds[2 + MAX_CONNS];
    int status = 0;
    for (;;) {
        fds[0] = (struct pollfd){.fd = stop_fd, .events = POLLIN};
        fds[1] = (struct pollfd){.fd = listen_fd, .events = POLLIN};
        for (int i = 0; i < MAX_CONNS; i++) /* a negative fd is ignored by poll */
            fds[2 + i] = (struct pollfd){.fd = conns[i].fd, .events = POLLIN};
        if (poll(fds, 2 + MAX_CONNS, -1) < 0) {
            if (errno == EINTR) continue;
            status = 1;
            break;
        }
        if (fds[0].revents) break; /* POLLIN or POLLHUP: time to stop */
        if (fds[1].revents) accept_all(listen_fd, conns);
        for (int i = 0; i < MAX_CONNS; i++)
            if (conns[i].fd >= 0 && fds[2 + i].revents && !echo(&conns[i])) close_conn(&conns[i]);
    }

    snprintf(line, sizeof line, "stopping pid=%ld\n", (long)getpid());
    say(line);
    close(listen_fd); /* new connections go to the other children */
    for (int i = 0; i < MAX_CONNS; i++) {
        if (conns[i].fd < 0) continue;
        send_all(conns[i].fd, "bye\n", 4);
        close_conn(&conns[i]);
    }
    free(conns);
    return status;
}

static void exit_child(void *user_data) {
    char line[64];
    (void)user_data;
    snprintf(line, sizeof line, "exit_child pid=%ld\n", (long)getpid());
    say(line);
}

/* prefork_new requires a request handler; serve mode never calls it. */
static void unused_handle(void *user_data, const prefork_request *req, prefork_response *resp) {
    (void)user_data;
    (void)req;
    prefork_response_set_status(resp, 500);
}

static int on_master_ready(void *user_data, const int32_t *pids, size_t count) {
    (void)user_data;
    printf("ready pid=%ld children=", (long)getpid());
    for (size_t i = 0; i < count; i++) printf(i ? ",%ld" : "%ld", (long)pids[i]);
    say("\n");
    return 0;
}

static void on_child_exit(void *user_data, int32_t pid, int32_t exit_code, int32_t signal) {
    char line[80];
    (void)user_data;
    snprintf(line, sizeof line, "child_exit pid=%ld code=%ld signal=%ld\n", (long)pid,
             (long)exit_code, (long)signal);
    say(line);
}

static int on_child_recover(void *user_data, int32_t old_pid, int32_t new_pid) {
    char line[80];
    (void)user_data;
    snprintf(line, sizeof line, "recover old=%ld new=%ld\n", (long)old_pid, (long)new_pid);
    say(line);
    return 0;
}

static int usage(const char *problem, const char *arg) {
    fprintf(stderr,
            "%s%s\nusage: serve_echo [--addr HOST:PORT] [--children N] [--reuseport] "
            "[--explicit-ready]\n",
            problem, arg);
    return 2;
}

int main(int argc, char **argv) {
    const char *addr = "127.0.0.1:7000";
    unsigned long children = 2;
    bool reuseport = false, explicit_ready = false;
    for (int i = 1; i < argc; i++) {
        char *end;
        if (strcmp(argv[i], "--reuseport") == 0) {
            reuseport = true;
        } else if (strcmp(argv[i], "--explicit-ready") == 0) {
            explicit_ready = true;
        } else if (strcmp(argv[i], "--addr") == 0 && i + 1 < argc) {
            addr = argv[++i];
        } else if (strcmp(argv[i], "--children") == 0 && i + 1 < argc) {
            children = strtoul(argv[++i], &end, 10);
            if (*argv[i] == '\0' || *end != '\0' || children > 1024)
                return usage("not a child count: ", argv[i]);
        } else {
            return usage("unknown flag or missing value: ", argv[i]);
        }
    }

    prefork_handler handler = {.handle = unused_handle, .exit_child = exit_child};
    prefork_serve serve_mode = {
        .user_data = &explicit_ready,
        .serve = serve,
        .ready = explicit_ready ? PREFORK_SERVE_READY_EXPLICIT : PREFORK_SERVE_READY_ON_START,
    };
    prefork_hooks hooks = {
        .on_master_ready = on_master_ready,
        .on_child_exit = on_child_exit,
        .on_child_recover = on_child_recover,
    };
    prefork *server;
    if (prefork_new(&handler, &server) != PREFORK_OK) {
        fprintf(stderr, "serve_echo: %s\n", prefork_last_error());
        return 1;
    }
    prefork_result r = prefork_set_serve(server, &serve_mode);
    if (r == PREFORK_OK) r = prefork_set_hooks(server, &hooks);
    if (r == PREFORK_OK) r = prefork_set_children(server, (uint32_t)children);
    if (r == PREFORK_OK) r = prefork_set_reuseport(server, reuseport);
    /* In the master: supervises until SIGTERM. In a child: runs serve and exits with its
     * status, so this call only returns there when the child could not start. */
    if (r == PREFORK_OK) r = prefork_listen_and_serve(server, addr);
    if (r != PREFORK_OK) fprintf(stderr, "serve_echo: %s\n", prefork_last_error());
    prefork_free(server);
    return r == PREFORK_OK ? 0 : 1;
}
