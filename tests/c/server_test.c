/*
 * server_test: a server for e2e.py's "server" scenario, covering what demo_server does not:
 * every request accessor, the response builders' refusals, and streamed bodies. Each
 * stream's user_data_free prints "freed <tag>" on stdout, so the driver sees that every stream
 * is let go exactly when the contract says.
 *
 *   ANY /inspect?...   one "name: value" line per request accessor (see inspect())
 *   GET /stream?n=N    N pieces "piece <i>\n", streamed
 *   GET /fail          two pieces, then the read callback fails (-1)
 *   GET /drop?code=N   status N (prefork_response_set_status) and a body written with
 *                      prefork_response_write, which a 204 or 304 must drop
 *   GET /defer-misuse  a deferred response and the misuse rules of its handle: "misuse: ok"
 *                      in the body, and a "completed twice: refused" line on stdout
 *   GET /defer-free    a deferred response freed without being completed (a 500)
 *   GET /defer-late    a deferred response kept until the child stopped serving and freed its
 *                      handle: the drain answers 503, and the late completion prints
 *                      "late completion: ok"
 *
 * The event loop's requests come through handle_batch (prefork_handler.handle_batch), which
 * answers each with handle and prints "batch <n>" on stdout for a batch of more than one.
 *
 *   server_test HOST:PORT      prints "ready" once the master is ready
 *
 * The library's log lines go to stdout too, as "log <level>: <message>" (INFO and above).
 */
#define _POSIX_C_SOURCE 200809L

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prefork.h"

struct stream {
    int next, count, fail_at; /* fail_at < 0: never */
    char tag[24];
};

static ptrdiff_t read_piece(void *user_data, char *buf, size_t cap) {
    struct stream *s = user_data;
    if (s->next == s->fail_at) return -1;
    if (s->next >= s->count) return 0;
    char piece[32];
    int n = snprintf(piece, sizeof piece, "piece %d\n", s->next);
    if ((size_t)n > cap) return -1; /* the engine always offers more than a piece */
    memcpy(buf, piece, (size_t)n);
    s->next++;
    return n;
}

static void free_stream(void *user_data) {
    struct stream *s = user_data;
    printf("freed %s\n", s->tag);
    fflush(stdout);
    free(s);
}

static void line(prefork_response *resp, const char *name, prefork_str value) {
    prefork_response_write(resp, name, strlen(name));
    prefork_response_write(resp, ": ", 2);
    prefork_response_write(resp, value.ptr, value.len);
    prefork_response_write(resp, "\n", 1);
}

static prefork_str cstr(const char *text) {
    prefork_str s = {text, strlen(text)};
    return s;
}

/* Reports each accessor, and checks the builders refuse what they must (a refusal that did
 * not happen shows as "refusals: BROKEN"). */
static void inspect(const prefork_request *req, prefork_response *resp) {
    char buf[PREFORK_ADDR_STRLEN], version[8], tiny[4];
    prefork_str v, name;
    bool refusals = prefork_response_set_status(resp, 99) == PREFORK_ERR_INVALID_ARGUMENT &&
                    prefork_response_set_status(resp, 600) == PREFORK_ERR_INVALID_ARGUMENT &&
                    prefork_response_add_header(resp, "Content-Length", 14, "1", 1) ==
                        PREFORK_ERR_INVALID_ARGUMENT &&
                    prefork_response_add_header(resp, "Bad Name", 8, "x", 1) ==
                        PREFORK_ERR_INVALID_ARGUMENT &&
                    prefork_response_add_header(resp, "X-Ok", 4, "a\r\nb", 4) ==
                        PREFORK_ERR_INVALID_ARGUMENT &&
                    prefork_response_add_header(resp, NULL, 3, "x", 1) == PREFORK_ERR_NULL &&
                    prefork_response_reply(resp, 600, "text/plain", 10, "x", 1) ==
                        PREFORK_ERR_INVALID_ARGUMENT &&
                    prefork_response_reply(resp, 200, "a\nb", 3, "x", 1) ==
                        PREFORK_ERR_INVALID_ARGUMENT &&
                    prefork_response_reply(resp, 200, NULL, 1, "x", 1) == PREFORK_ERR_NULL &&
                    prefork_response_reply(resp, 200, "", 0, NULL, 1) == PREFORK_ERR_NULL &&
                    prefork_request_peer_addr(req, tiny, sizeof tiny) ==
                        PREFORK_ERR_INVALID_ARGUMENT &&
                    !prefork_request_header_at(req, prefork_request_header_count(req), &name, &v) &&
                    /* No PROXY protocol here: no TLVs, and nothing written. */
                    !prefork_request_proxy_tlv(req, PREFORK_PP2_TYPE_AUTHORITY, &v) &&
                    !prefork_request_proxy_tlv_at(req, 0, NULL, &v);
    prefork_response_set_body(resp, "replaced\n", 9); /* set_body replaces what was written */
    prefork_response_add_header(resp, "X-Inspected", 11, "yes", 3);
    /* Replaces the body too; e2e.py checks the status and Content-Type it sets. */
    prefork_response_reply(resp, 203, "text/plain", 10, "", 0);
    line(resp, "method", prefork_request_method(req));
    line(resp, "target", prefork_request_target(req));
    line(resp, "path", prefork_request_path(req));
    line(resp, "query", prefork_request_query(req));
    snprintf(version, sizeof version, "%d", prefork_request_minor_version(req));
    line(resp, "minor_version", cstr(version));
    line(resp, "probe", prefork_request_header(req, "x-PROBE", 7, &v) ? v : cstr("<none>"));
    line(resp, "missing", prefork_request_header(req, "X-Missing", 9, &v) ? v : cstr("<none>"));
    line(resp, "peer", prefork_request_peer_addr(req, buf, sizeof buf) == PREFORK_OK ? cstr(buf)
                                                                                    : cstr("?"));
    line(resp, "body", prefork_request_body(req));
    line(resp, "refusals", cstr(refusals ? "ok" : "BROKEN"));
}

static void never_called(void *user_data, prefork_conn *conn) {
    (void)user_data;
    (void)conn;
    abort();
}

static void count_free(void *user_data) {
    ++*(int *)user_data;
}

/* Every misuse of the deferred and hijack calls is an error code, never a crash. */
static void deferred_misuse(prefork_response *resp) {
    static int frees;
    prefork_deferred *d = NULL, *again = NULL;
    if (prefork_response_defer(resp, &d) != PREFORK_OK) abort();
    bool ok = prefork_response_defer(NULL, &again) == PREFORK_ERR_NULL &&
              prefork_response_defer(resp, NULL) == PREFORK_ERR_NULL &&
              prefork_response_defer(resp, &again) == PREFORK_ERR_STATE && again == NULL &&
              /* A refused hijack leaves user_data to the caller. */
              prefork_response_hijack(resp, never_called, &frees, count_free) ==
                  PREFORK_ERR_STATE &&
              prefork_response_hijack(prefork_deferred_response(d), NULL, &frees, count_free) ==
                  PREFORK_ERR_NULL &&
              frees == 0 && prefork_deferred_response(NULL) == NULL &&
              prefork_deferred_complete(NULL) == PREFORK_ERR_NULL && prefork_conn_fd(NULL) == -1 &&
              prefork_conn_leftover(NULL).len == 0;
    prefork_deferred_free(NULL);
    prefork_conn_close(NULL);
    prefork_response *r = prefork_deferred_response(d);
    const char *body = ok ? "misuse: ok" : "misuse: BROKEN";
    prefork_response_reply(r, 200, "text/plain", 10, body, strlen(body));
    if (prefork_deferred_complete(d) != PREFORK_OK) abort();
    /* Completed: a second completion is refused, and changes go nowhere. */
    bool twice = prefork_deferred_complete(d) == PREFORK_ERR_STATE &&
                 prefork_response_write(r, "IGNORED", 7) == PREFORK_OK;
    prefork_deferred_free(d);
    printf("completed twice: %s\n", twice ? "refused" : "BROKEN");
    fflush(stdout);
}

/* The response of /defer-late, completed only after prefork_free in main. */
static prefork_deferred *late;

static void handle(void *ud, const prefork_request *req, prefork_response *resp) {
    (void)ud;
    prefork_str path = prefork_request_path(req);
    prefork_str query = prefork_request_query(req);
    if (path.len == 8 && memcmp(path.ptr, "/inspect", 8) == 0) {
        inspect(req, resp);
        return;
    }
    if (path.len == 13 && memcmp(path.ptr, "/defer-misuse", 13) == 0) {
        deferred_misuse(resp);
        return;
    }
    if (path.len == 11 && memcmp(path.ptr, "/defer-late", 11) == 0 && !late) {
        if (prefork_response_defer(resp, &late) != PREFORK_OK) abort();
        return;
    }
    if (path.len == 11 && memcmp(path.ptr, "/defer-free", 11) == 0) {
        prefork_deferred *d;
        if (prefork_response_defer(resp, &d) != PREFORK_OK) abort();
        prefork_deferred_free(d);
        return;
    }
    if (path.len == 5 && memcmp(path.ptr, "/drop", 5) == 0 && query.len == 8 &&
        memcmp(query.ptr, "code=", 5) == 0) {
        char digits[4] = {query.ptr[5], query.ptr[6], query.ptr[7], 0};
        if (prefork_response_set_status(resp, atoi(digits)) != PREFORK_OK) abort();
        if (prefork_response_write(resp, "dropped", 7) != PREFORK_OK) abort();
        return;
    }
    struct stream *s = calloc(1, sizeof *s);
    if (!s) abort();
    s->fail_at = -1;
    if (path.len == 7 && memcmp(path.ptr, "/stream", 7) == 0 && query.len > 2 && query.len < 8 &&
        memcmp(query.ptr, "n=", 2) == 0) {
        char digits[8] = {0};
        memcpy(digits, query.ptr + 2, query.len - 2);
        s->count = atoi(digits);
        snprintf(s->tag, sizeof s->tag, "n=%d", s->count);
    } else if (path.len == 5 && memcmp(path.ptr, "/fail", 5) == 0) {
        s->count = 10;
        s->fail_at = 2;
        snprintf(s->tag, sizeof s->tag, "fail");
    } else {
        free(s);
        prefork_response_set_status(resp, 404);
        return;
    }
    if (prefork_response_set_body_stream(resp, read_piece, s, free_stream) != PREFORK_OK) abort();
    /* The stream replaced the buffered body: this must not reach the client. */
    prefork_response_write(resp, "IGNORED", 7);
}

/* Only /inspect and /drop are answered at once: every other route streams or defers, which
 * must end a batch. */
static bool ends_batch(const prefork_request *req) {
    prefork_str path = prefork_request_path(req);
    return !(path.len == 8 && memcmp(path.ptr, "/inspect", 8) == 0) &&
           !(path.len == 5 && memcmp(path.ptr, "/drop", 5) == 0);
}

static size_t handle_batch(void *ud, const prefork_request *const *reqs, prefork_response *const *resps,
                           size_t count) {
    if (count > 1) {
        printf("batch %zu\n", count);
        fflush(stdout);
    }
    for (size_t i = 0; i < count; i++) {
        handle(ud, reqs[i], resps[i]);
        if (ends_batch(reqs[i])) return i + 1;
    }
    return count;
}

static void log_line(void *ud, prefork_log_level level, const char *msg, size_t len) {
    static const char *const names[] = {"debug", "info", "warn", "error"};
    (void)ud;
    if (level < PREFORK_LOG_INFO || level > PREFORK_LOG_ERROR) return;
    printf("log %s: %.*s\n", names[level], (int)len, msg);
    fflush(stdout);
}

static int on_ready(void *ud, const int32_t *pids, size_t count) {
    (void)ud;
    (void)pids;
    (void)count;
    printf("ready\n");
    return fflush(stdout);
}

int main(int argc, char **argv) {
    prefork_handler handler = {.handle = handle, .handle_batch = handle_batch};
    prefork_hooks hooks = {.on_master_ready = on_ready};
    prefork *p;
    if (argc != 2) {
        fprintf(stderr, "usage: server_test HOST:PORT\n");
        return 2;
    }
    if (prefork_new(&handler, &p) != PREFORK_OK || prefork_set_children(p, 1) != PREFORK_OK ||
        prefork_set_grace_period_ms(p, 1000) != PREFORK_OK ||
        prefork_set_hooks(p, &hooks) != PREFORK_OK ||
        prefork_set_logger(p, log_line, NULL, NULL) != PREFORK_OK) {
        fprintf(stderr, "server_test: %s\n", prefork_last_error());
        return 1;
    }
    /* Misuse is refused without taking user_data over. */
    if (prefork_response_set_body_stream(NULL, read_piece, NULL, free_stream) != PREFORK_ERR_NULL)
        return 1;
    prefork_result r = prefork_listen_and_serve(p, argv[1]);
    if (r != PREFORK_OK) fprintf(stderr, "server_test: %s\n", prefork_last_error());
    prefork_free(p);
    if (late) {
        /* The child stopped serving and its server is freed: completing is accepted and goes
         * nowhere. */
        prefork_result done = prefork_deferred_complete(late);
        prefork_deferred_free(late);
        printf("late completion: %s\n", done == PREFORK_OK ? "ok" : "BROKEN");
        fflush(stdout);
    }
    return r == PREFORK_OK ? 0 : 1;
}
