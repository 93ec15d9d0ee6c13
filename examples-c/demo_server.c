/*
 * demo_server: the README's demo, and the program the end-to-end tests drive.
 *
 *   demo_server [--addr ADDR]... [--unix-mode OCTAL] [--children N] [--reuseport]
 *     [--network tcp4|tcp6|tcp]
 *     [--grace-ms N] [--shutdown-delay-ms N] [--recover-threshold N] [--recover-interval-ms N]
 *     [--max-body BYTES]
 *     [--header-timeout-ms N] [--idle-timeout-ms N] [--handler-threads N] [--allow-crash]
 *     [--user NAME] [--group NAME] [--cpu-affinity] [--batch]
 *     [--proxy-protocol] [--proxy-allow CIDR]...
 *     [--child-timeout-ms N] [--max-requests N] [--max-requests-jitter N] [--max-child-age-ms N]
 *     [--tls-cert FILE --tls-key FILE]... [--tls-embed]
 *
 * --addr may be repeated: every child serves every address. An address is HOST:PORT (TCP;
 * [::1]:PORT for IPv6), unix:/path (a Unix socket file, its mode --unix-mode, e.g. 660),
 * unix:@name (an abstract Unix socket) or systemd (every socket systemd passes: socket
 * activation, e.g. under systemd-socket-activate). Before the ready line the master prints
 * "listeners ADDR ADDR ..." (ports chosen for port 0 filled in).
 *
 * With --tls-cert and --tls-key it serves HTTPS on every --addr. Repeat the pair for more
 * certificates, chosen by the client's server name (SNI); the first pair is the default.
 * --tls-embed reads the files in the master and hands their text to the in-memory entry
 * point instead of the file names. With --proxy-protocol too, each connection's PROXY
 * protocol header comes first, then the TLS handshake.
 *
 * --batch takes the event loop's requests through prefork_handler.handle_batch, several in
 * one call, as a language binding does (bench/probe weighs the two against each other).
 *
 * Routes (any method): /  /echo  /headers  /pid  /sleep?ms=N  /defer?ms=N  /status?code=N
 * /stats  /peer  /local  /health  /upgrade (with "Upgrade: echo")  /crash (with --allow-crash);
 * and OPTIONS *.
 *
 * /health is the health check for a load balancer or an orchestrator's readiness probe: 200
 * while serving, 503 once the server is stopping (prefork_stopping()), so that during the
 * --shutdown-delay-ms after a SIGTERM the balancer takes this instance out while it still
 * serves every other route.
 *
 * /defer?ms=N answers after N ms without holding the event loop: the handler defers the
 * response and a timer thread completes it, so many of them wait together. /upgrade switches
 * the connection to an echo protocol (101 Switching Protocols, then every byte sent comes
 * back until the client closes), served by a thread per connection. /stats answers
 * prefork_stats_json: the master's figures (every child's pid, slot, generation, requests,
 * connections...), which the child reads from the memory the master shares with it, so any
 * child gives the same answer. /peer answers the client's address as the handler sees it,
 * "ip:port" ("[ip6]:port" for IPv6): with --proxy-protocol, the one the balancer's PROXY
 * protocol header names; "unix:" over a Unix socket without one. /local answers the address
 * of the listener that took the connection, as the "listeners" line writes it.
 *
 * --proxy-protocol makes every connection (on every --addr) start with a PROXY protocol
 * header, accepted from the --proxy-allow networks (repeatable; default loopback).
 * When the master is ready it prints "ready pid=<master> children=<pid>,<pid>,..." on stdout;
 * after a reload (SIGHUP) "reloaded generation=<n> children=<pid>,..." or, when the new
 * generation failed and the old one serves on, "reload failed generation=<n>: <reason>"; after
 * an upgrade (SIGUSR2) the old master prints "upgraded old=<pid> new=<pid>" and the new one
 * its own "ready pid=" line.
 * SIGTERM or SIGINT stops it gracefully with exit status 0 (the library handles both).
 *
 * The master re-executes this program once per child, with the same arguments: the children
 * parse the same flags and build the same handle, then prefork_listen_and_serve serves.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "prefork.h"

#define MAX_SLEEP_MS 600000
#define MAX_TLS_PAIRS 16
#define MAX_ADDRS 16

static const char USAGE[] =
    "usage: demo_server [--addr ADDR]... [--unix-mode OCTAL] [--children N] [--reuseport]\n"
    "                   [--network tcp4|tcp6|tcp] [--grace-ms N] [--shutdown-delay-ms N]\n"
    "                   [--recover-threshold N]\n"
    "                   [--recover-interval-ms N] [--max-body BYTES] [--header-timeout-ms N]\n"
    "                   [--idle-timeout-ms N] [--handler-threads N] [--allow-crash]\n"
    "                   [--user NAME] [--group NAME] [--cpu-affinity] [--batch]\n"
    "                   [--proxy-protocol] [--proxy-allow CIDR]... (repeatable)\n"
    "                   [--child-timeout-ms N] [--max-requests N] [--max-requests-jitter N]\n"
    "                   [--max-child-age-ms N]\n"
    "                   [--tls-cert FILE --tls-key FILE]... [--tls-embed]\n"
    "  --addr (repeatable) is HOST:PORT, unix:/path, unix:@name or systemd;\n"
    "  it defaults to 127.0.0.1:8080\n"
    "  --tls-cert/--tls-key serve HTTPS (repeat the pair for SNI; the first is the default);\n"
    "  --tls-embed passes the files' text instead of their names\n"
    "  --batch takes the event loop's requests in batches (handle_batch), as bindings do\n"
    "routes, any method: / /echo /headers /pid /sleep?ms=N /defer?ms=N /status?code=N\n"
    "                    /stats /upgrade (Upgrade: echo) /crash (only with --allow-crash);\n"
    "                    and OPTIONS *\n"
    "                    /peer (the client's address, ip:port)\n"
    "                    /local (the address of the listener that took the connection)\n"
    "                    /health (200, or 503 once stopping: for a balancer's checks)\n";

/* The --proxy-allow networks so far, comma-separated, as prefork_set_proxy_allow takes them. */
static char proxy_allow[4096];

/* A deferred response and when the timer thread completes it. */
struct timer {
    struct timespec due;
    long ms;
    prefork_deferred *deferred;
};

/* The timer thread of /defer: pending responses in a binary heap, soonest first. It starts
 * with the first /defer: a child with a second thread pays for it on every system call
 * (glibc's cancellation points), which a child that never defers should not. */
struct timers {
    pthread_mutex_t lock;
    pthread_cond_t wake; /* on CLOCK_MONOTONIC, like the due times */
    pthread_t thread;
    bool ready, running, stop;
    struct timer *heap;
    size_t len, cap;
};

struct app;

/* A connection switched to the echo protocol, served by a detached thread. */
struct echo {
    prefork_conn *conn;
    struct app *app;
    struct echo *next;
};

/* Every echo connection still open, so that exit_child can end them before the child exits. */
struct echoes {
    pthread_mutex_t lock;
    pthread_cond_t gone;
    struct echo *open;
};

struct app {
    bool allow_crash;
    struct timers timers;
    struct echoes echoes;
};

static bool str_is(prefork_str s, const char *lit) {
    size_t n = strlen(lit);
    return s.len == n && memcmp(s.ptr, lit, n) == 0;
}

static void reply(prefork_response *resp, int status, const char *body, size_t len) {
    /* The same Content-Type as every other bench subject, so they all send the same bytes. */
    static const char type[] = "text/plain";
    prefork_response_reply(resp, status, type, sizeof type - 1, body, len);
}

static void reply_text(prefork_response *resp, int status, const char *text) {
    reply(resp, status, text, strlen(text));
}

/* Parses the decimal value of `key` ("ms") in a query such as "a=1&ms=250", at most `max`;
 * false if absent or bad. */
static bool query_number(prefork_str query, const char *key, long max, long *out) {
    size_t key_len = strlen(key), i = 0;
    while (i < query.len) {
        size_t end = i;
        while (end < query.len && query.ptr[end] != '&') end++;
        if (end - i > key_len + 1 && memcmp(query.ptr + i, key, key_len) == 0 &&
            query.ptr[i + key_len] == '=') {
            long value = 0;
            for (size_t j = i + key_len + 1; j < end; j++) {
                char c = query.ptr[j];
                if (c < '0' || c > '9' || value > max) return false;
                value = value * 10 + (c - '0');
            }
            if (value > max) return false;
            *out = value;
            return true;
        }
        i = end + 1;
    }
    return false;
}

static void sleep_ms(long ms) {
    struct timespec left = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
}

/* ---- /defer: a timer thread completes deferred responses ---------------------------------- */

static bool earlier(struct timespec a, struct timespec b) {
    return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec < b.tv_nsec);
}

static void heap_swap(struct timer *heap, size_t i, size_t j) {
    struct timer t = heap[i];
    heap[i] = heap[j];
    heap[j] = t;
}

static bool heap_push(struct timers *t, struct timer item) {
    if (t->len == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        struct timer *grown = realloc(t->heap, cap * sizeof *grown);
        if (!grown) return false;
        t->heap = grown;
        t->cap = cap;
    }
    size_t i = t->len++;
    t->heap[i] = item;
    while (i > 0 && earlier(t->heap[i].due, t->heap[(i - 1) / 2].due)) {
        heap_swap(t->heap, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
    return true;
}

static struct timer heap_pop(struct timers *t) {
    struct timer top = t->heap[0];
    t->heap[0] = t->heap[--t->len];
    for (size_t i = 0;;) {
        size_t child = 2 * i + 1, soonest = i;
        if (child < t->len && earlier(t->heap[child].due, t->heap[soonest].due)) soonest = child;
        if (child + 1 < t->len && earlier(t->heap[child + 1].due, t->heap[soonest].due))
            soonest = child + 1;
        if (soonest == i) break;
        heap_swap(t->heap, i, soonest);
        i = soonest;
    }
    return top;
}

/* Fills, sends and releases a deferred response: any thread may, the timer's does. */
static void complete_timer(struct timer item) {
    char text[48];
    int n = snprintf(text, sizeof text, "deferred %ld ms", item.ms);
    reply(prefork_deferred_response(item.deferred), 200, text, (size_t)n);
    prefork_deferred_complete(item.deferred);
    prefork_deferred_free(item.deferred);
}

static void *timer_main(void *arg) {
    struct timers *t = arg;
    pthread_mutex_lock(&t->lock);
    while (!t->stop) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (t->len == 0) {
            pthread_cond_wait(&t->wake, &t->lock);
        } else if (earlier(now, t->heap[0].due)) {
            pthread_cond_timedwait(&t->wake, &t->lock, &t->heap[0].due);
        } else {
            struct timer due = heap_pop(t);
            pthread_mutex_unlock(&t->lock);
            complete_timer(due);
            pthread_mutex_lock(&t->lock);
        }
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

static bool timers_init(struct timers *t) {
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0) return false;
    bool ok = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0 &&
              pthread_cond_init(&t->wake, &attr) == 0;
    pthread_condattr_destroy(&attr);
    if (!ok) return false;
    if (pthread_mutex_init(&t->lock, NULL) != 0) {
        pthread_cond_destroy(&t->wake);
        return false;
    }
    t->ready = true;
    return true;
}

/* After the child drained: the responses still pending go nowhere, but their handles are ours
 * to free. */
static void timers_stop(struct timers *t) {
    if (!t->ready) return;
    pthread_mutex_lock(&t->lock);
    t->stop = true;
    pthread_cond_signal(&t->wake);
    pthread_mutex_unlock(&t->lock);
    if (t->running) pthread_join(t->thread, NULL);
    while (t->len > 0) prefork_deferred_free(heap_pop(t).deferred);
    free(t->heap);
    pthread_cond_destroy(&t->wake);
    pthread_mutex_destroy(&t->lock);
    t->ready = t->running = false;
}

/* Takes `resp` over and has the timer thread answer it in `ms` ms. */
static void defer_reply(struct app *app, prefork_response *resp, long ms) {
    prefork_deferred *d;
    pthread_mutex_lock(&app->timers.lock);
    if (!app->timers.running)
        app->timers.running = pthread_create(&app->timers.thread, NULL, timer_main,
                                             &app->timers) == 0;
    bool running = app->timers.running;
    pthread_mutex_unlock(&app->timers.lock);
    if (!running) {
        reply_text(resp, 503, "cannot start the timer thread\n");
        return;
    }
    if (prefork_response_defer(resp, &d) != PREFORK_OK) {
        reply_text(resp, 500, "cannot defer the response\n");
        return;
    }
    struct timer item = {.ms = ms, .deferred = d};
    clock_gettime(CLOCK_MONOTONIC, &item.due);
    item.due.tv_sec += ms / 1000;
    item.due.tv_nsec += (ms % 1000) * 1000000L;
    if (item.due.tv_nsec >= 1000000000L) {
        item.due.tv_sec++;
        item.due.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&app->timers.lock);
    bool queued = heap_push(&app->timers, item);
    if (queued && app->timers.heap[0].deferred == d) pthread_cond_signal(&app->timers.wake);
    pthread_mutex_unlock(&app->timers.lock);
    /* Freed uncompleted, a deferred response is a 500: the client is not left waiting. */
    if (!queued) prefork_deferred_free(d);
}

/* ---- /upgrade: the echo protocol, a thread per connection ---------------------------------- */

static bool send_all(int fd, const char *data, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        data += n;
        len -= (size_t)n;
    }
    return true;
}

static void *echo_main(void *arg) {
    struct echo *e = arg;
    struct app *app = e->app;
    int fd = prefork_conn_fd(e->conn);
    /* What the library read past the request is the protocol's first bytes. */
    prefork_str first = prefork_conn_leftover(e->conn);
    bool open = send_all(fd, first.ptr, first.len);
    char buf[4096];
    while (open) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR) continue;
        open = n > 0 && send_all(fd, buf, (size_t)n);
    }
    /* Unlisted and closed under the lock: exit_child never shuts down a descriptor that
     * closed meanwhile (and may already belong to something else). */
    pthread_mutex_lock(&app->echoes.lock);
    for (struct echo **p = &app->echoes.open; *p; p = &(*p)->next) {
        if (*p == e) {
            *p = e->next;
            break;
        }
    }
    prefork_conn_close(e->conn);
    pthread_cond_broadcast(&app->echoes.gone);
    pthread_mutex_unlock(&app->echoes.lock);
    free(e);
    return NULL;
}

/* The library hands the connection over once the 101 is written: on its event-loop thread,
 * so the protocol goes to a thread of its own at once. */
static void start_echo(void *user_data, prefork_conn *conn) {
    struct app *app = user_data;
    struct echo *e = malloc(sizeof *e);
    pthread_t thread;
    if (!e) {
        prefork_conn_close(conn);
        return;
    }
    e->conn = conn;
    e->app = app;
    pthread_mutex_lock(&app->echoes.lock);
    e->next = app->echoes.open;
    app->echoes.open = e;
    bool started = pthread_create(&thread, NULL, echo_main, e) == 0;
    if (started) {
        pthread_detach(thread);
    } else {
        app->echoes.open = e->next;
    }
    pthread_mutex_unlock(&app->echoes.lock);
    if (!started) {
        prefork_conn_close(conn);
        free(e);
    }
}

/* After the child drained: the echo connections are not the library's to end, so they are
 * ended here, and the child exits only when their threads have. */
static void echoes_stop(struct echoes *echoes) {
    pthread_mutex_lock(&echoes->lock);
    for (struct echo *e = echoes->open; e; e = e->next) shutdown(prefork_conn_fd(e->conn), SHUT_RDWR);
    while (echoes->open) pthread_cond_wait(&echoes->gone, &echoes->lock);
    pthread_mutex_unlock(&echoes->lock);
}

static bool ascii_ieq(prefork_str s, const char *lit) {
    size_t n = strlen(lit);
    if (s.len != n) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s.ptr[i];
        if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
        if (c != lit[i]) return false;
    }
    return true;
}

static void upgrade_reply(struct app *app, const prefork_request *req, prefork_response *resp) {
    prefork_str upgrade;
    if (prefork_request_minor_version(req) != 1 ||
        !prefork_request_header(req, "Upgrade", 7, &upgrade) || !ascii_ieq(upgrade, "echo")) {
        /* RFC 9110 §15.5.22: a 426 names the protocol to upgrade to. */
        prefork_response_add_header(resp, "Upgrade", 7, "echo", 4);
        reply_text(resp, 426, "/upgrade speaks the echo protocol: send Upgrade: echo\n");
        return;
    }
    prefork_result r = prefork_response_hijack(resp, start_echo, app, NULL);
    if (r != PREFORK_OK) {
        reply_text(resp, r == PREFORK_ERR_UNSUPPORTED ? 501 : 500, prefork_last_error());
        return;
    }
    prefork_response_set_status(resp, 101);
    prefork_response_add_header(resp, "Upgrade", 7, "echo", 4);
}

/* ---- the handler --------------------------------------------------------------------------- */

/* Children only, before they report ready: the threads are per process. */
static int init_child(void *user_data) {
    struct app *app = user_data;
    if (pthread_mutex_init(&app->echoes.lock, NULL) != 0) return 1;
    if (pthread_cond_init(&app->echoes.gone, NULL) != 0) return 1;
    return timers_init(&app->timers) ? 0 : 1;
}

static void exit_child(void *user_data) {
    struct app *app = user_data;
    timers_stop(&app->timers);
    echoes_stop(&app->echoes);
    pthread_cond_destroy(&app->echoes.gone);
    pthread_mutex_destroy(&app->echoes.lock);
}

static void handle(void *user_data, const prefork_request *req, prefork_response *resp) {
    struct app *app = user_data;
    prefork_str path = prefork_request_path(req);

    if (str_is(path, "/")) {
        reply_text(resp, 200, "Hello, World!");
    } else if (str_is(path, "*")) {
        /* OPTIONS * (the library lets "*" through with OPTIONS only) asks about the server as
         * a whole (RFC 9110 §9.3.7): every route takes any of these methods. No body, so the
         * library sends the Content-Length: 0 that §9.3.7 asks for. */
        static const char allow[] = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
        prefork_response_add_header(resp, "Allow", 5, allow, sizeof allow - 1);
    } else if (str_is(path, "/status")) {
        /* An empty response with the status asked for, to probe how the library frames each
         * one (a 204 or 304 gets neither Content-Length nor a body). The library refuses the
         * 1xx statuses, which are its own: those are a 400 too. */
        long code;
        if (!query_number(prefork_request_query(req), "code", 599, &code) || code < 100) {
            reply_text(resp, 400, "expected /status?code=N with N from 100 to 599\n");
            return;
        }
        if (prefork_response_set_status(resp, (int)code) != PREFORK_OK) {
            char text[256];
            int n = snprintf(text, sizeof text, "status %ld refused: %s\n", code,
                             prefork_last_error());
            size_t len = n < 0 ? 0 : (size_t)n < sizeof text ? (size_t)n : sizeof text - 1;
            reply(resp, 400, text, len);
        }
    } else if (str_is(path, "/echo")) {
        prefork_str body = prefork_request_body(req);
        reply(resp, 200, body.ptr, body.len);
    } else if (str_is(path, "/headers")) {
        size_t count = prefork_request_header_count(req);
        reply(resp, 200, "", 0);
        for (size_t i = 0; i < count; i++) {
            prefork_str name, value;
            if (!prefork_request_header_at(req, i, &name, &value)) break;
            prefork_response_write(resp, name.ptr, name.len);
            prefork_response_write(resp, ": ", 2);
            prefork_response_write(resp, value.ptr, value.len);
            prefork_response_write(resp, "\n", 1);
        }
    } else if (str_is(path, "/pid")) {
        char text[32];
        int n = snprintf(text, sizeof text, "%ld", (long)getpid());
        reply(resp, 200, text, (size_t)n);
    } else if (str_is(path, "/sleep")) {
        long ms;
        if (!query_number(prefork_request_query(req), "ms", MAX_SLEEP_MS, &ms)) {
            reply_text(resp, 400, "expected /sleep?ms=N with N at most 600000\n");
            return;
        }
        sleep_ms(ms);
        reply_text(resp, 200, "slept");
    } else if (str_is(path, "/defer")) {
        long ms;
        if (!query_number(prefork_request_query(req), "ms", MAX_SLEEP_MS, &ms)) {
            reply_text(resp, 400, "expected /defer?ms=N with N at most 600000\n");
            return;
        }
        defer_reply(app, resp, ms);
    } else if (str_is(path, "/upgrade")) {
        upgrade_reply(app, req, resp);
    } else if (str_is(path, "/peer")) {
        /* With --proxy-protocol, the client the balancer's header names, not the balancer. */
        char addr[PREFORK_ADDR_STRLEN];
        if (prefork_request_peer_addr(req, addr, sizeof addr) != PREFORK_OK) {
            reply_text(resp, 500, "the peer address is unknown\n");
            return;
        }
        reply_text(resp, 200, addr);
    } else if (str_is(path, "/local")) {
        char addr[PREFORK_ADDR_STRLEN];
        if (prefork_request_local_addr(req, addr, sizeof addr) != PREFORK_OK) {
            reply_text(resp, 500, "the listener is unknown\n");
            return;
        }
        reply_text(resp, 200, addr);
    } else if (str_is(path, "/health")) {
        /* 503 from the stop request on, the shutdown delay included: the balancer's checks
         * fail while this child still answers the requests already routed to it. */
        if (prefork_stopping()) reply_text(resp, 503, "stopping\n");
        else reply_text(resp, 200, "ok\n");
    } else if (str_is(path, "/stats")) {
        size_t cap = 1 << 16;
        char *json = malloc(cap);
        if (json == NULL || prefork_stats_json(json, cap) != PREFORK_OK) {
            reply_text(resp, 503, "no stats\n");
        } else {
            static const char type[] = "application/json";
            prefork_response_reply(resp, 200, type, sizeof type - 1, json, strlen(json));
        }
        free(json);
    } else if (str_is(path, "/crash") && app->allow_crash) {
        abort();
    } else {
        reply_text(resp, 404, "Not Found\n");
    }
}

/* --batch: the event loop's requests in batches (prefork_handler.handle_batch), as a binding
 * takes them to pay one call into its language for several. Each goes to handle; a route
 * other than / may defer, stream or close, which must end its connection's run of answers,
 * so the batch stops after it (always right) and the library offers the rest again. */
static size_t handle_batch(void *user_data, const prefork_request *const *reqs,
                           prefork_response *const *resps, size_t count) {
    for (size_t i = 0; i < count; i++) {
        handle(user_data, reqs[i], resps[i]);
        if (!str_is(prefork_request_path(reqs[i]), "/")) {
            return i + 1;
        }
    }
    return count;
}

/* Master only: every initial child is listening. The tests wait for this exact line. */
static int on_master_ready(void *user_data, const int32_t *pids, size_t count) {
    (void)user_data;
    printf("listeners");
    char addr[PREFORK_ADDR_STRLEN];
    for (size_t i = 0; prefork_listener_addr(i, addr, sizeof addr) == PREFORK_OK; i++) {
        printf(" %s", addr);
    }
    printf("\nready pid=%ld children=", (long)getpid());
    for (size_t i = 0; i < count; i++) printf(i ? ",%" PRId32 : "%" PRId32, pids[i]);
    printf("\n");
    return fflush(stdout) == 0 ? 0 : 1;
}

static void print_pids(const int32_t *pids, size_t count) {
    for (size_t i = 0; i < count; i++) printf(i ? ",%" PRId32 : "%" PRId32, pids[i]);
    printf("\n");
}

/* Master only: a reload's new generation serves; the old one drains. */
static int on_reload(void *user_data, uint64_t generation, const int32_t *pids, size_t count) {
    (void)user_data;
    printf("reloaded generation=%" PRIu64 " children=", generation);
    print_pids(pids, count);
    return fflush(stdout) == 0 ? 0 : 1;
}

static void on_reload_failed(void *user_data, uint64_t generation, const char *reason) {
    (void)user_data;
    printf("reload failed generation=%" PRIu64 ": %s\n", generation, reason);
    fflush(stdout);
}

/* Master only, in the old master: the new master started by an upgrade serves; this one
 * stops its children and exits. The new master prints its own "ready pid=" line. */
static void on_upgrade(void *user_data, int32_t old_pid, int32_t new_pid) {
    (void)user_data;
    printf("upgraded old=%" PRId32 " new=%" PRId32 "\n", old_pid, new_pid);
    fflush(stdout);
}

static bool parse_u64(const char *text, uint64_t *out) {
    char *end;
    if (text[0] < '0' || text[0] > '9') return false; /* no sign, no space */
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0 || *end != '\0') return false;
    *out = (uint64_t)v;
    return true;
}

static bool parse_i32(const char *text, int32_t *out) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno != 0 || *end != '\0' || end == text || v < INT32_MIN || v > INT32_MAX) return false;
    *out = (int32_t)v;
    return true;
}

static int usage(const char *problem, const char *arg) {
    fprintf(stderr, "demo_server: %s%s\n%s", problem, arg, USAGE);
    return 2;
}

/* The TLS certificate chains and keys named on the command line, in order. */
struct tls_files {
    const char *cert[MAX_TLS_PAIRS], *key[MAX_TLS_PAIRS];
    size_t certs, keys;
    bool embed;
};

/* A file's text, malloc'd; NULL with *len 0 when it cannot be read (the library then
 * reports that in-memory argument as holding no certificate or no key). */
static char *read_file(const char *path, size_t *len) {
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t cap = 0;
    for (;;) {
        if (*len == cap) {
            size_t grown = cap ? cap * 2 : 4096;
            char *b = realloc(buf, grown);
            if (!b) break;
            buf = b;
            cap = grown;
        }
        size_t n = fread(buf + *len, 1, cap - *len, f);
        if (n == 0) break;
        *len += n;
    }
    fclose(f);
    return buf;
}

/* Hands pair i to the library: `first` through the entry point (the default certificate),
 * the others through prefork_add_tls_cert. Children get every key from the master over
 * their lifeline, so with --tls-embed only the master reads the files (the children's user
 * need not be able to): a child passes empty text, which it does not use. */
static prefork_result tls_pair(prefork *server, const struct tls_files *tls, size_t i,
                               const char *addr, bool first) {
    if (!tls->embed) {
        return first ? prefork_listen_and_serve_tls(server, addr, tls->cert[i], tls->key[i])
                     : prefork_add_tls_cert(server, tls->cert[i], tls->key[i]);
    }
    size_t cert_len = 0, key_len = 0;
    char *cert = NULL, *key = NULL;
    if (!prefork_is_child()) {
        cert = read_file(tls->cert[i], &cert_len);
        key = read_file(tls->key[i], &key_len);
    }
    /* The library copies the text and refuses NULL: an unreadable file is an empty one. */
    const char *c = cert ? cert : "", *k = key ? key : "";
    prefork_result r =
        first ? prefork_listen_and_serve_tls_embed(server, addr, c, cert_len, k, key_len)
              : prefork_add_tls_cert_embed(server, c, cert_len, k, key_len);
    free(cert);
    free(key);
    return r;
}

/* The default certificate goes to the entry point, after the others were added. */
static prefork_result serve(prefork *server, const struct tls_files *tls, const char *addr) {
    if (tls->certs == 0) return prefork_listen_and_serve(server, addr);
    for (size_t i = 1; i < tls->certs; i++) {
        prefork_result r = tls_pair(server, tls, i, addr, false);
        if (r != PREFORK_OK) return r;
    }
    return tls_pair(server, tls, 0, addr, true);
}

/* Every --addr is a listener of its own (the entry point then gets ""), so that each takes
 * the --unix-mode; none means the default address. */
static bool add_listeners(prefork *server, const char *const *addrs, size_t count,
                          uint32_t unix_mode) {
    static const char *const fallback[] = {"127.0.0.1:8080"};
    if (count == 0) {
        addrs = fallback;
        count = 1;
    }
    for (size_t i = 0; i < count; i++) {
        prefork_listener_options opts = {
            .unix_mode = strncmp(addrs[i], "unix:/", 6) == 0 ? unix_mode : 0,
        };
        if (prefork_add_listener(server, addrs[i], &opts) != PREFORK_OK) {
            fprintf(stderr, "demo_server: %s\n", prefork_last_error());
            return false;
        }
    }
    return true;
}

/* A setter's refusal of a flag's value is a bad flag too: say the library's reason. */
static bool set(prefork_result r) {
    if (r != PREFORK_OK) fprintf(stderr, "demo_server: %s\n", prefork_last_error());
    return r == PREFORK_OK;
}

/* Whether argv holds `flag` (one that takes no value). */
static bool has_flag(int argc, char **argv, const char *flag) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], flag) == 0) {
            return true;
        }
    }
    return false;
}

int main(int argc, char **argv) {
    static struct app app;
    static struct tls_files tls;
    const char *addrs[MAX_ADDRS];
    size_t naddrs = 0;
    uint32_t unix_mode = 0;
    prefork_handler handler = {
        .user_data = &app,
        .init_child = init_child,
        .handle = handle,
        .exit_child = exit_child,
        /* Before the flags are parsed: the handler is the handle's from prefork_new on. */
        .handle_batch = has_flag(argc, argv, "--batch") ? handle_batch : NULL,
    };
    prefork_hooks hooks = {
        .on_master_ready = on_master_ready,
        .on_reload = on_reload,
        .on_reload_failed = on_reload_failed,
        .on_upgrade = on_upgrade,
    };
    prefork *server = NULL;

    if (prefork_new(&handler, &server) != PREFORK_OK) {
        fprintf(stderr, "demo_server: %s\n", prefork_last_error());
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t n = 0;
        int32_t s = 0;
        bool ok = true;
        if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0) {
            fputs(USAGE, stdout);
            prefork_free(server);
            return 0;
        } else if (strcmp(flag, "--reuseport") == 0) {
            ok = set(prefork_set_reuseport(server, true));
        } else if (strcmp(flag, "--allow-crash") == 0) {
            app.allow_crash = true;
        } else if (strcmp(flag, "--tls-embed") == 0) {
            tls.embed = true;
        } else if (strcmp(flag, "--batch") == 0) {
            /* Read before prefork_new (has_flag). */
        } else if (strcmp(flag, "--cpu-affinity") == 0) {
            ok = set(prefork_set_cpu_affinity(server, true));
        } else if (strcmp(flag, "--proxy-protocol") == 0) {
            ok = set(prefork_set_proxy_protocol(server, true));
        } else if (val == NULL) {
            prefork_free(server);
            return usage("unknown flag or missing value: ", flag);
        } else {
            i++;
            bool is_count = strcmp(flag, "--children") == 0 || strcmp(flag, "--handler-threads") == 0;
            if (strcmp(flag, "--addr") == 0) {
                if (naddrs == MAX_ADDRS) {
                    prefork_free(server);
                    return usage("too many addresses (at most 16): ", val);
                }
                addrs[naddrs++] = val;
            } else if (strcmp(flag, "--unix-mode") == 0) {
                char *end;
                errno = 0;
                unsigned long mode = strtoul(val, &end, 8);
                if (errno != 0 || *end != '\0' || end == val || mode == 0 || mode > 0777) {
                    prefork_free(server);
                    return usage("--unix-mode must be octal permission bits, not ", val);
                }
                unix_mode = (uint32_t)mode;
            } else if (strcmp(flag, "--tls-cert") == 0 || strcmp(flag, "--tls-key") == 0) {
                bool cert = strcmp(flag, "--tls-cert") == 0;
                size_t *count = cert ? &tls.certs : &tls.keys;
                if (*count == MAX_TLS_PAIRS) {
                    prefork_free(server);
                    return usage("too many certificates (at most 16): ", val);
                }
                (cert ? tls.cert : tls.key)[(*count)++] = val;
            } else if (strcmp(flag, "--proxy-allow") == 0) {
                /* Each one adds to the list; setting the list so far makes the library name a
                 * bad network at once. */
                size_t used = strlen(proxy_allow), len = strlen(val);
                if (used + len + 2 > sizeof proxy_allow) {
                    prefork_free(server);
                    return usage("too many --proxy-allow networks at ", val);
                }
                if (used > 0) proxy_allow[used++] = ',';
                memcpy(proxy_allow + used, val, len + 1);
                ok = set(prefork_set_proxy_allow(server, proxy_allow));
            } else if (strcmp(flag, "--network") == 0) {
                if (strcmp(val, "tcp4") && strcmp(val, "tcp6") && strcmp(val, "tcp")) {
                    prefork_free(server);
                    return usage("--network must be tcp4, tcp6 or tcp, not ", val);
                }
                ok = set(prefork_set_network(server, val));
            } else if (strcmp(flag, "--user") == 0) {
                ok = set(prefork_set_user(server, val));
            } else if (strcmp(flag, "--group") == 0) {
                ok = set(prefork_set_group(server, val));
            } else if (strcmp(flag, "--recover-threshold") == 0) {
                if (!parse_i32(val, &s)) ok = false;
                else ok = set(prefork_set_recover_threshold(server, s));
            } else if (!parse_u64(val, &n) || (is_count && n > UINT32_MAX)) {
                prefork_free(server);
                return usage("not a valid number: ", val);
            } else if (strcmp(flag, "--children") == 0) {
                ok = set(prefork_set_children(server, (uint32_t)n));
            } else if (strcmp(flag, "--handler-threads") == 0) {
                ok = set(prefork_set_handler_threads(server, (uint32_t)n));
            } else if (strcmp(flag, "--grace-ms") == 0) {
                ok = set(prefork_set_grace_period_ms(server, n));
            } else if (strcmp(flag, "--shutdown-delay-ms") == 0) {
                ok = set(prefork_set_shutdown_delay_ms(server, n));
            } else if (strcmp(flag, "--recover-interval-ms") == 0) {
                ok = set(prefork_set_recover_interval_ms(server, n));
            } else if (strcmp(flag, "--max-body") == 0) {
                ok = n <= SIZE_MAX && set(prefork_set_max_body_size(server, (size_t)n));
            } else if (strcmp(flag, "--header-timeout-ms") == 0) {
                ok = set(prefork_set_header_timeout_ms(server, n));
            } else if (strcmp(flag, "--idle-timeout-ms") == 0) {
                ok = set(prefork_set_idle_timeout_ms(server, n));
            } else if (strcmp(flag, "--child-timeout-ms") == 0) {
                ok = set(prefork_set_child_timeout_ms(server, n));
            } else if (strcmp(flag, "--max-requests") == 0) {
                ok = set(prefork_set_max_requests(server, n));
            } else if (strcmp(flag, "--max-requests-jitter") == 0) {
                ok = set(prefork_set_max_requests_jitter(server, n));
            } else if (strcmp(flag, "--max-child-age-ms") == 0) {
                ok = set(prefork_set_max_child_age_ms(server, n));
            } else {
                prefork_free(server);
                return usage("unknown flag: ", flag);
            }
        }
        if (!ok) {
            prefork_free(server);
            return usage("bad value for ", flag);
        }
    }
    if (tls.certs != tls.keys || (tls.embed && tls.certs == 0)) {
        prefork_free(server);
        return usage("--tls-cert and --tls-key come in pairs, and --tls-embed needs one", "");
    }
    if (!set(prefork_set_hooks(server, &hooks))) {
        prefork_free(server);
        return 1;
    }
    if (!add_listeners(server, addrs, naddrs, unix_mode)) {
        prefork_free(server);
        return 2;
    }

    prefork_result r = serve(server, &tls, "");
    if (r != PREFORK_OK) {
        fprintf(stderr, "demo_server%s: %s (%s)\n", prefork_is_child() ? " child" : "",
                prefork_last_error(), prefork_result_str(r));
    }
    prefork_free(server);
    return r == PREFORK_OK ? 0 : 1;
}
