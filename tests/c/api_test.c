/*
 * api_test: the C API's contracts as a C caller sees them, run under ASAN/UBSan by ctest:
 * NULL arguments, out-of-range options, result strings, the last-error message, finalizers
 * called exactly once, and the state rules while prefork_listen_and_serve runs on another
 * thread (setters, listen and free refused; prefork_shutdown stops it; a handle serves once).
 *
 * The program is also its own prefork child: the master re-executes it, and in the child
 * main() only serves.
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "prefork.h"

static int failures;

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n  last error: %s\n", __FILE__,   \
                    __LINE__, #cond, prefork_last_error());                             \
            failures++;                                                                 \
        }                                                                               \
    } while (0)

#define CHECK_ERR(call, code, needle)                                                   \
    do {                                                                                \
        prefork_result r_ = (call);                                                     \
        CHECK(r_ == (code));                                                            \
        CHECK(strstr(prefork_last_error(), (needle)) != NULL);                          \
    } while (0)

static void handle(void *ud, const prefork_request *req, prefork_response *resp) {
    (void)ud;
    (void)req;
    prefork_response_write(resp, "ok", 2);
}

static int frees[3]; /* finalizer calls per user_data: handler, hooks, logger */
static void count_free(void *ud) { (*(int *)ud)++; }

static void quiet_log(void *ud, prefork_log_level level, const char *msg, size_t len) {
    (void)ud;
    (void)level;
    CHECK(msg[len] == '\0');
}

static void test_results_and_version(void) {
    CHECK(strcmp(prefork_version(), PREFORK_VERSION) == 0);
    CHECK(strcmp(prefork_result_str(PREFORK_OK), "ok") == 0);
    CHECK(strcmp(prefork_result_str(PREFORK_ERR_STATE), "not allowed in the current state") == 0);
    CHECK(strcmp(prefork_result_str(PREFORK_ERR_TLS + 1), "unknown") == 0);
    CHECK(strcmp(prefork_result_str(13), "unknown") == 0);
    CHECK(strcmp(prefork_result_str(-1), "unknown") == 0);
    for (int r = PREFORK_OK; r <= PREFORK_ERR_TLS; r++) CHECK(strcmp(prefork_result_str(r), "unknown") != 0);
    CHECK(strcmp(prefork_last_error(), "") == 0); /* nothing failed yet on this thread */
}

/* The header's version macros and the loaded library agree, and the library is new enough
 * for this header: the run-time check the README's ABI policy describes. */
static void test_version_macros(void) {
    char header[32];
    int major = -1, minor = -1, patch = -1;
    snprintf(header, sizeof header, "%d.%d.%d", PREFORK_VERSION_MAJOR, PREFORK_VERSION_MINOR,
             PREFORK_VERSION_PATCH);
    CHECK(strcmp(header, PREFORK_VERSION) == 0);
    CHECK(sscanf(prefork_version(), "%d.%d.%d", &major, &minor, &patch) == 3);
    CHECK(major == PREFORK_VERSION_MAJOR);
    CHECK(minor >= PREFORK_VERSION_MINOR);
}

/* A bind failure says why, as a number: the address is in use, or it is no local address. */
static void test_os_error(void) {
    prefork_handler h = {.handle = handle};
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    char taken[PREFORK_ADDR_STRLEN];
    int holder = socket(AF_INET, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(holder >= 0 && bind(holder, (struct sockaddr *)&sa, sizeof sa) == 0 &&
          listen(holder, 1) == 0 && getsockname(holder, (struct sockaddr *)&sa, &len) == 0);
    snprintf(taken, sizeof taken, "127.0.0.1:%d", ntohs(sa.sin_port));

    /* TEST-NET-1 (RFC 5737) is no local address: bind(2) refuses it, sending nothing. */
    const char *addrs[] = {taken, "192.0.2.1:0"};
    const int errnos[] = {EADDRINUSE, EADDRNOTAVAIL};
    for (int i = 0; i < 2; i++) {
        prefork *p = NULL;
        CHECK(prefork_new(&h, &p) == PREFORK_OK);
        CHECK(prefork_listen_and_serve(p, addrs[i]) == PREFORK_ERR_BIND);
        CHECK(prefork_last_os_error() == errnos[i]);
        prefork_free(p);
    }
    CHECK(prefork_set_children(NULL, 1) == PREFORK_ERR_NULL);
    CHECK(prefork_last_os_error() == 0); /* no OS cause: replaced with the message */
    close(holder);
}

static void test_null_and_ranges(void) {
    prefork_handler h = {
        .user_data = &frees[0], .handle = handle, .user_data_free = count_free};
    prefork_handler no_handle = {.user_data = &frees[0], .user_data_free = count_free};
    prefork *p = (prefork *)&h; /* must stay untouched by failing calls */

    CHECK_ERR(prefork_new(NULL, &p), PREFORK_ERR_NULL, "prefork_new: handler is NULL");
    CHECK_ERR(prefork_new(&no_handle, &p), PREFORK_ERR_NULL, "handler->handle is NULL");
    CHECK_ERR(prefork_new(&h, NULL), PREFORK_ERR_NULL, "out is NULL");
    CHECK(p == (prefork *)&h);
    CHECK(frees[0] == 0); /* a failed prefork_new does not take user_data */

    CHECK_ERR(prefork_set_children(NULL, 1), PREFORK_ERR_NULL, "prefork_set_children: p is NULL");
    {
        char addr[PREFORK_ADDR_STRLEN];
        CHECK_ERR(prefork_local_addr(addr, sizeof addr), PREFORK_ERR_STATE,
                  "no server is running in this process");
        CHECK_ERR(prefork_local_addr(NULL, 0), PREFORK_ERR_NULL, "buf is NULL");
    }
    CHECK_ERR(prefork_listen_and_serve(NULL, "127.0.0.1:0"), PREFORK_ERR_NULL, "p is NULL");
    prefork_free(NULL);

    CHECK(prefork_new(&h, &p) == PREFORK_OK);
    CHECK_ERR(prefork_set_children(p, 5000), PREFORK_ERR_INVALID_ARGUMENT, "children = 5000");
    CHECK_ERR(prefork_set_network(p, "udp"), PREFORK_ERR_INVALID_ARGUMENT, "unknown network");
    CHECK_ERR(prefork_set_network(p, NULL), PREFORK_ERR_NULL, "network is NULL");
    CHECK_ERR(prefork_set_backlog(p, 0), PREFORK_ERR_INVALID_ARGUMENT, "backlog");
    CHECK_ERR(prefork_set_header_timeout_ms(p, 0), PREFORK_ERR_INVALID_ARGUMENT, "above zero");
    CHECK_ERR(prefork_set_idle_timeout_ms(p, UINT64_MAX), PREFORK_ERR_INVALID_ARGUMENT, "one year");
    CHECK_ERR(prefork_set_handler_threads(p, 100000), PREFORK_ERR_INVALID_ARGUMENT, "limit");
    CHECK_ERR(prefork_set_max_headers(p, 0), PREFORK_ERR_INVALID_ARGUMENT, "max_headers");
    CHECK_ERR(prefork_set_logger(p, NULL, NULL, NULL), PREFORK_ERR_NULL, "log is NULL");
    CHECK_ERR(prefork_set_hooks(p, NULL), PREFORK_ERR_NULL, "hooks is NULL");
    CHECK_ERR(prefork_listen_and_serve(p, NULL), PREFORK_ERR_NULL, "addr is NULL");
    CHECK(prefork_set_network(p, "tcp") == PREFORK_OK);
    CHECK(prefork_set_recover_threshold(p, -1) == PREFORK_OK);
    CHECK(prefork_set_max_body_size(p, 0) == PREFORK_OK);
    CHECK_ERR(prefork_set_proxy_allow(p, "10.0.0.0/8,10.0.0.1/8"), PREFORK_ERR_INVALID_ARGUMENT,
              "\"10.0.0.1/8\"");
    CHECK_ERR(prefork_set_proxy_allow(p, NULL), PREFORK_ERR_NULL, "cidrs is NULL");
    CHECK_ERR(prefork_set_proxy_timeout_ms(p, 0), PREFORK_ERR_INVALID_ARGUMENT, "above zero");
    CHECK(prefork_set_proxy_allow(p, "10.0.0.0/8, ::1") == PREFORK_OK);

    /* Rules tying options together wait for listen, so options may be set in any order. */
    CHECK(prefork_set_max_request_line(p, 65536) == PREFORK_OK);
    CHECK_ERR(prefork_listen_and_serve(p, "127.0.0.1:0"), PREFORK_ERR_INVALID_ARGUMENT,
              "max_request_line");

    /* Borrowed views of a NULL request are empty with a valid pointer; builders refuse NULL. */
    prefork_str s = prefork_request_path(NULL);
    CHECK(s.ptr != NULL && s.len == 0);
    CHECK(prefork_request_minor_version(NULL) == -1);
    CHECK(prefork_request_header_count(NULL) == 0);
    CHECK(!prefork_request_header_at(NULL, 0, &s, &s));
    CHECK(!prefork_request_header(NULL, "Host", 4, &s));
    uint8_t type = 0;
    CHECK(!prefork_request_proxy_tlv(NULL, PREFORK_PP2_TYPE_AUTHORITY, &s));
    CHECK(!prefork_request_proxy_tlv_at(NULL, 0, &type, &s) && type == 0);
    char buf[PREFORK_ADDR_STRLEN];
    CHECK(prefork_request_peer_addr(NULL, buf, sizeof buf) == PREFORK_ERR_NULL);
    uint8_t ip[PREFORK_IP_BYTES];
    size_t ip_len = 99;
    uint16_t port = 7;
    CHECK(prefork_request_peer_ip(NULL, ip, &ip_len, &port) == PREFORK_ERR_NULL);
    CHECK(ip_len == 99 && port == 7);
    CHECK(prefork_response_set_status(NULL, 200) == PREFORK_ERR_NULL);
    CHECK(prefork_response_write(NULL, "x", 1) == PREFORK_ERR_NULL);
    CHECK(prefork_response_set_body(NULL, NULL, 0) == PREFORK_ERR_NULL);
    CHECK_ERR(prefork_response_reply(NULL, 200, "", 0, "x", 1), PREFORK_ERR_NULL, "resp is NULL");
    CHECK_ERR(prefork_response_add_header(NULL, "A", 1, "b", 1), PREFORK_ERR_NULL, "resp is NULL");

    prefork_free(p);
    CHECK(frees[0] == 1);
}

static void test_finalizers(void) {
    int handler_frees = 0, hook_frees[2] = {0, 0}, log_frees[2] = {0, 0};
    prefork_handler h = {
        .user_data = &handler_frees, .handle = handle, .user_data_free = count_free};
    prefork_hooks first = {.user_data = &hook_frees[0], .user_data_free = count_free};
    prefork_hooks second = {.user_data = &hook_frees[1], .user_data_free = count_free};
    prefork *p = NULL;

    CHECK(prefork_new(&h, &p) == PREFORK_OK);
    CHECK(prefork_set_hooks(p, &first) == PREFORK_OK);
    CHECK(prefork_set_hooks(p, &second) == PREFORK_OK);
    CHECK(hook_frees[0] == 1 && hook_frees[1] == 0); /* replaced hooks are let go at once */
    CHECK(prefork_set_logger(p, quiet_log, &log_frees[0], count_free) == PREFORK_OK);
    CHECK(prefork_set_logger(p, quiet_log, &log_frees[1], count_free) == PREFORK_OK);
    CHECK(log_frees[0] == 1 && log_frees[1] == 0);
    CHECK(handler_frees == 0);
    prefork_free(p);
    CHECK(handler_frees == 1 && hook_frees[0] == 1 && hook_frees[1] == 1);
    CHECK(log_frees[0] == 1 && log_frees[1] == 1);
}

/* ---- serving on another thread ---------------------------------------------------------- */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static int ready_children = -1;
static int served = -1; /* the prefork_result of the serving thread */

static int on_ready(void *ud, const int32_t *pids, size_t count) {
    (void)ud;
    pthread_mutex_lock(&lock);
    ready_children = (int)count;
    CHECK(count == 1 && pids[0] > 0);
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
    return 0;
}

static void *serve(void *p) {
    prefork_result r = prefork_listen_and_serve(p, "127.0.0.1:0");
    if (r != PREFORK_OK) fprintf(stderr, "serve: %s\n", prefork_last_error());
    pthread_mutex_lock(&lock);
    served = (int)r;
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
    return NULL;
}

/* Waits (at most 20 s) until *flag differs from `unset`. */
static int wait_for(const int *flag, int unset) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 20;
    pthread_mutex_lock(&lock);
    while (*flag == unset && pthread_cond_timedwait(&changed, &lock, &deadline) == 0) {
    }
    int value = *flag;
    pthread_mutex_unlock(&lock);
    return value;
}

static void test_state_while_serving(void) {
    int handler_frees = 0, log_frees = 0;
    prefork_handler h = {
        .user_data = &handler_frees, .handle = handle, .user_data_free = count_free};
    prefork_hooks hooks = {.on_master_ready = on_ready};
    prefork *p = NULL;
    pthread_t thread;

    CHECK(prefork_new(&h, &p) == PREFORK_OK);
    CHECK(prefork_set_children(p, 1) == PREFORK_OK);
    CHECK(prefork_set_handle_signals(p, false) == PREFORK_OK);
    CHECK(prefork_set_grace_period_ms(p, 3000) == PREFORK_OK);
    CHECK(prefork_set_hooks(p, &hooks) == PREFORK_OK);
    CHECK(pthread_create(&thread, NULL, serve, p) == 0);
    if (wait_for(&ready_children, -1) != 1) {
        fprintf(stderr, "the server did not become ready\n");
        exit(1);
    }

    CHECK_ERR(prefork_set_children(p, 2), PREFORK_ERR_STATE, "prefork_listen_and_serve is running");
    CHECK_ERR(prefork_set_hooks(p, &hooks), PREFORK_ERR_STATE, "prefork_set_hooks");
    CHECK_ERR(prefork_set_logger(p, quiet_log, &log_frees, count_free), PREFORK_ERR_STATE, "running");
    CHECK(log_frees == 0); /* refused: user_data stays the caller's */
    CHECK_ERR(prefork_listen_and_serve(p, "127.0.0.1:0"), PREFORK_ERR_STATE, "running");
    prefork_free(p); /* refused, logged: the handle stays valid */
    CHECK(strstr(prefork_last_error(), "prefork_free: the handle is in use") != NULL);
    CHECK(handler_frees == 0);
    CHECK_ERR(prefork_set_backlog(p, 10), PREFORK_ERR_STATE, "running");

    CHECK(prefork_shutdown());
    CHECK(wait_for(&served, -1) == PREFORK_OK);
    CHECK(pthread_join(thread, NULL) == 0);

    CHECK_ERR(prefork_listen_and_serve(p, "127.0.0.1:0"), PREFORK_ERR_STATE, "already");
    CHECK(prefork_set_backlog(p, 10) == PREFORK_OK); /* idle again */
    prefork_free(p);
    CHECK(handler_frees == 1);
}

int main(void) {
    if (prefork_is_child()) {
        /* Re-executed by the master of test_state_while_serving: just serve. */
        prefork_handler h = {.handle = handle};
        prefork *p;
        if (prefork_new(&h, &p) != PREFORK_OK) return 1;
        prefork_result r = prefork_listen_and_serve(p, "127.0.0.1:0");
        prefork_free(p);
        return r == PREFORK_OK ? 0 : 1;
    }
    test_results_and_version();
    test_version_macros();
    test_os_error();
    test_null_and_ranges();
    test_finalizers();
    test_state_while_serving();
    if (failures) {
        fprintf(stderr, "api_test: %d checks failed\n", failures);
        return 1;
    }
    printf("api_test: all checks passed\n");
    return 0;
}
