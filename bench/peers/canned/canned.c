/*
 * canned: the no-parse responder of the libprefork benchmark, the practical upper bound of
 * what an HTTP/1.1 server can do on this machine.
 *
 * It does not parse HTTP. Every "\r\n\r\n" it reads counts as one request (true for wrk's
 * bodiless GETs), and for each batch read from a connection it writes that many copies of
 * one canned response with ONE write. Anything a real server does on top of this (parsing,
 * framing, calling a handler, building a response) is what the benchmark prices.
 *
 *   canned [--addr HOST:PORT] [--children N] [--threads]   (N = 0: one per CPU of the mask)
 *
 * --threads is the blocking scenario's limit instead: each child accepts with blocking calls
 * and gives every connection its own thread, which reads a request, sleeps the "ms=N" its
 * target asks for, and writes the canned response. No event loop, no hand-off between
 * threads: the least CPU a server can spend per request when each sleeping request holds an
 * OS thread, as a C handler on libprefork's handler threads does.
 *
 * The master binds one SO_REUSEPORT socket per child (so each child has its own accept
 * queue), forks the children (this program is single-threaded, so fork without exec is
 * safe), waits until each has set up its epoll loop, prints
 *   ready pid=<master pid> children=<pid>,<pid>,...
 * and waits for SIGTERM/SIGINT, which it forwards to the children before reaping them and
 * exiting 0. Children die with the master (PR_SET_PDEATHSIG).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CHILDREN 256
#define BATCH 512 /* responses in the canned buffer: one write covers up to this many */
#define RBUF (64 * 1024)
#define MAX_EVENTS 512

static const char RESP_FMT[] = "HTTP/1.1 200 OK\r\n"
                               "Server: canned\r\n"
                               "Content-Type: text/plain\r\n"
                               "Content-Length: 13\r\n"
                               "Date: %s\r\n"
                               "\r\n"
                               "Hello, World!";

static char resp_buf[BATCH * 256];
static size_t resp_len;
static time_t resp_date;

/* Rebuilds the canned buffer when the second changes, so Date is as fresh as a real server's.
 * The length never changes (IMF-fixdate has a fixed width), so pending byte counts stay valid;
 * a response cut by a partial write across the change may carry two half-dates, which wrk
 * does not look at. */
/* Writes the canned response dated `now` into out; returns its length. */
static size_t format_response(char *out, size_t cap, time_t now) {
    struct tm tm;
    gmtime_r(&now, &tm);
    char date[64];
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    int n = snprintf(out, cap, RESP_FMT, date);
    if (n <= 0 || (size_t)n >= cap)
        abort();
    return (size_t)n;
}

static void refresh_date(void) {
    time_t now = time(NULL);
    if (now == resp_date)
        return;
    resp_date = now;
    char one[256];
    resp_len = format_response(one, sizeof one, now);
    for (size_t i = 0; i < BATCH; i++)
        memcpy(resp_buf + i * resp_len, one, resp_len);
}

struct conn {
    uint64_t pending; /* response bytes owed to the client */
    unsigned match;   /* how much of "\r\n\r\n" the last bytes matched */
    int open;
};

static struct conn *conns;
static size_t conns_cap;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void close_conn(int fd) {
    conns[fd].open = 0;
    close(fd);
}

/* Counts request ends in buf, carrying the partial match across reads. */
static uint64_t count_ends(struct conn *c, const char *buf, size_t n) {
    static const char pat[4] = {'\r', '\n', '\r', '\n'};
    uint64_t ends = 0;
    unsigned m = c->match;
    for (size_t i = 0; i < n; i++) {
        char ch = buf[i];
        if (ch == pat[m]) {
            if (++m == 4) {
                ends++;
                m = 0;
            }
        } else {
            m = ch == '\r';
        }
    }
    c->match = m;
    return ends;
}

/* Writes what is owed; returns -1 when the connection failed. */
static int flush_conn(int fd, struct conn *c) {
    size_t total = BATCH * resp_len;
    while (c->pending > 0) {
        size_t done_in_resp = (resp_len - c->pending % resp_len) % resp_len;
        size_t len = total - done_in_resp;
        if (len > c->pending)
            len = (size_t)c->pending;
        ssize_t w = write(fd, resp_buf + done_in_resp, len);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0; /* EPOLLOUT (edge) tells us when to go on */
            if (errno == EINTR)
                continue;
            return -1;
        }
        c->pending -= (uint64_t)w;
    }
    return 0;
}

static void on_readable(int fd, char *buf) {
    struct conn *c = &conns[fd];
    uint64_t ends = 0;
    for (;;) {
        ssize_t n = read(fd, buf, RBUF);
        if (n > 0) {
            ends += count_ends(c, buf, (size_t)n);
            if (n < RBUF)
                break; /* drained: new data raises a new edge */
            continue;
        }
        if (n == 0) {
            close_conn(fd);
            return;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        if (errno == EINTR)
            continue;
        close_conn(fd);
        return;
    }
    c->pending += ends * resp_len;
    if (flush_conn(fd, c) < 0)
        close_conn(fd);
}

static void accept_all(int lfd, int ep) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return; /* EAGAIN, or EMFILE & co: try again on the next edge */
        }
        if ((size_t)fd >= conns_cap) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conns[fd] = (struct conn){0, 0, 1};
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                                 .data.fd = fd};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
            close_conn(fd);
    }
}

static void child_main(int lfd, int ready_fd) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        die("getrlimit");
    conns_cap = rl.rlim_cur;
    conns = calloc(conns_cap, sizeof *conns);
    char *buf = malloc(RBUF);
    if (!conns || !buf)
        die("malloc");
    refresh_date();

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN | EPOLLET, .data.fd = lfd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0)
        die("epoll_ctl listener");
    if (write(ready_fd, "r", 1) != 1)
        die("write ready");
    close(ready_fd);

    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, 1000);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        refresh_date();
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                accept_all(lfd, ep);
                continue;
            }
            if (!conns[fd].open)
                continue; /* closed earlier in this batch */
            uint32_t e = evs[i].events;
            if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                on_readable(fd, buf);
            else if ((e & EPOLLOUT) && conns[fd].pending > 0 && flush_conn(fd, &conns[fd]) < 0)
                close_conn(fd);
        }
    }
}

/* --threads: one request at a time per connection, on the connection's own thread. */
static void *conn_thread(void *arg) {
    int fd = (int)(intptr_t)arg;
    char buf[4096], resp[256];
    size_t have = 0, len = 0;
    time_t dated = (time_t)-1; /* the second resp is dated, reformatted when it changes */
    for (;;) {
        ssize_t n = read(fd, buf + have, sizeof buf - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        have += (size_t)n;
        char *end;
        while ((end = memmem(buf, have, "\r\n\r\n", 4)) != NULL) {
            size_t used = (size_t)(end + 4 - buf);
            const char *ms = memmem(buf, used, "ms=", 3);
            if (ms) {
                long v = atol(ms + 3);
                struct timespec t = {v / 1000, (v % 1000) * 1000000L};
                while (nanosleep(&t, &t) < 0 && errno == EINTR)
                    ;
            }
            time_t now = time(NULL);
            if (now != dated) {
                len = format_response(resp, sizeof resp, now);
                dated = now;
            }
            for (size_t off = 0; off < len;) {
                ssize_t w = write(fd, resp + off, len - off);
                if (w < 0 && errno == EINTR)
                    continue;
                if (w <= 0)
                    goto out;
                off += (size_t)w;
            }
            memmove(buf, buf + used, have - used);
            have -= used;
        }
        if (have == sizeof buf)
            break; /* a head over 4 KiB: not one of wrk's */
    }
out:
    close(fd);
    return NULL;
}

static void child_threads(int lfd, int ready_fd) {
    if (fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) & ~O_NONBLOCK) < 0)
        die("fcntl");
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    if (write(ready_fd, "r", 1) != 1)
        die("write ready");
    close(ready_fd);
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE)
                usleep(1000);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pthread_t t;
        if (pthread_create(&t, &attr, conn_thread, (void *)(intptr_t)fd) != 0)
            close(fd);
    }
}

static int listen_reuseport(const struct sockaddr_in *addr) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        die("setsockopt");
    if (bind(fd, (const struct sockaddr *)addr, sizeof *addr) < 0)
        die("bind");
    if (listen(fd, 4096) < 0)
        die("listen");
    return fd;
}

static void parse_addr(const char *s, struct sockaddr_in *out) {
    const char *colon = strrchr(s, ':');
    if (!colon) {
        fprintf(stderr, "canned: --addr wants HOST:PORT, got %s\n", s);
        exit(2);
    }
    char host[64];
    size_t hl = (size_t)(colon - s);
    if (hl >= sizeof host) {
        fprintf(stderr, "canned: host too long in %s\n", s);
        exit(2);
    }
    memcpy(host, s, hl);
    host[hl] = 0;
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    out->sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, hl ? host : "0.0.0.0", &out->sin_addr) != 1) {
        fprintf(stderr, "canned: bad IPv4 host in %s\n", s);
        exit(2);
    }
}

int main(int argc, char **argv) {
    const char *addr_s = "127.0.0.1:8080";
    int children = 0, threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--addr") && i + 1 < argc)
            addr_s = argv[++i];
        else if (!strcmp(argv[i], "--children") && i + 1 < argc)
            children = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads"))
            threads = 1;
        else {
            fprintf(stderr, "usage: canned [--addr HOST:PORT] [--children N] [--threads]\n");
            return 2;
        }
    }
    if (children <= 0) {
        cpu_set_t set;
        children = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    }
    if (children > MAX_CHILDREN)
        children = MAX_CHILDREN;

    struct sockaddr_in addr;
    parse_addr(addr_s, &addr);
    int lfds[MAX_CHILDREN];
    for (int i = 0; i < children; i++)
        lfds[i] = listen_reuseport(&addr);

    sigset_t sigs, old;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGCHLD);
    sigprocmask(SIG_BLOCK, &sigs, &old);

    int ready[2];
    if (pipe2(ready, O_CLOEXEC) < 0)
        die("pipe2");
    pid_t master = getpid();
    pid_t pids[MAX_CHILDREN];
    for (int i = 0; i < children; i++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            sigprocmask(SIG_SETMASK, &old, NULL);
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != master)
                _exit(1);
            close(ready[0]);
            for (int j = 0; j < children; j++)
                if (j != i)
                    close(lfds[j]);
            if (threads)
                child_threads(lfds[i], ready[1]);
            else
                child_main(lfds[i], ready[1]);
            _exit(0);
        }
        pids[i] = pid;
    }
    close(ready[1]);
    int got = 0;
    char b;
    while (got < children) {
        ssize_t r = read(ready[0], &b, 1);
        if (r == 1)
            got++;
        else if (r == 0 || errno != EINTR)
            break;
    }
    close(ready[0]);
    int status = 0;
    if (got == children) {
        printf("ready pid=%d children=", (int)master);
        for (int i = 0; i < children; i++)
            printf(i ? ",%d" : "%d", (int)pids[i]);
        printf("\n");
        fflush(stdout);
        int sig = 0;
        sigwait(&sigs, &sig);
        if (sig == SIGCHLD) {
            fprintf(stderr, "canned: a child exited; stopping\n");
            status = 1;
        }
    } else {
        fprintf(stderr, "canned: only %d of %d children became ready\n", got, children);
        status = 1;
    }
    for (int i = 0; i < children; i++)
        kill(pids[i], SIGTERM);
    for (int i = 0; i < children; i++)
        while (waitpid(pids[i], NULL, 0) < 0 && errno == EINTR)
            ;
    return status;
}
