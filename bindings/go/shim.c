// Adapters between libprefork's callback signatures and the Go exports: they turn user_data
// back into the cgo.Handle integer and drop the const the Go side cannot spell. The request
// handler also hands Go the request line and stages the response (see goprefork_exchange).
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"
#include "_cgo_export.h"

#define HANDLE(user_data) ((uintptr_t)(user_data))

static int init_child(void *user_data) {
	return goPreforkInitChild(HANDLE(user_data));
}

// The head of a staged field: the name's and the value's length (see goprefork_exchange).
static size_t field_len(const char *head, int which) {
	const unsigned char *h = (const unsigned char *)head + 2 * which;
	return (size_t)h[0] | (size_t)h[1] << 8;
}

// Adds the staged fields from byte `at` on. Cannot fail: Go staged only fields the library
// accepts, on a response that is live.
static void add_fields(prefork_response *resp, goprefork_exchange *x, size_t at) {
	while (at + 4 <= x->fields_len) {
		const char *name = x->fields + at + 4;
		size_t name_len = field_len(x->fields + at, 0), value_len = field_len(x->fields + at, 1);
		prefork_response_add_header(resp, name, name_len, name + name_len, value_len);
		at += 4 + name_len + value_len;
	}
	x->fields_len = 0;
}

void goprefork_flush_fields(prefork_response *resp, goprefork_exchange *x) {
	add_fields(resp, x, 0);
}

enum prefork_result goprefork_flush(prefork_response *resp, goprefork_exchange *x) {
	enum prefork_result rc = PREFORK_OK;
	if (x->status) {
		prefork_response_set_status(resp, x->status);
		x->status = 0;
	}
	add_fields(resp, x, 0);
	x->direct = 1;
	if (x->stage_len > 0) {
		rc = prefork_response_write(resp, x->stage, x->stage_len);
		x->stage_len = 0;
	}
	return rc;
}

// Hands what Go staged to the library once the handler returned: the status, the fields,
// then the body. When the whole body was staged and the first staged field is
// "Content-Type", one prefork_response_reply does what set_status, add_header and set_body
// would: the cheapest answer the ABI has, with the fields in the same order. Cannot fail:
// the status was checked in Go, and so was each field.
static inline __attribute__((always_inline)) void apply(prefork_response *resp, goprefork_exchange *x) {
	static const char content_type[] = "Content-Type";
	const size_t ct_len = sizeof content_type - 1;
	int status = x->status ? x->status : 200;
	if (!x->direct && x->fields_len >= 4 + ct_len && field_len(x->fields, 0) == ct_len &&
	    memcmp(x->fields + 4, content_type, ct_len) == 0) {
		size_t value_len = field_len(x->fields, 1);
		prefork_response_reply(resp, status, x->fields + 4 + ct_len, value_len, x->stage, x->stage_len);
		if (4 + ct_len + value_len < x->fields_len) {
			add_fields(resp, x, 4 + ct_len + value_len);
		}
		return;
	}
	if (x->status) {
		prefork_response_set_status(resp, x->status);
	}
	add_fields(resp, x, 0);
	if (x->stage_len > 0) {
		prefork_response_write(resp, x->stage, x->stage_len);
	}
}

void goprefork_details(const prefork_request *req, goprefork_exchange *x) {
	size_t n = prefork_request_header_count(req);
	for (size_t i = 0; i < n && i < x->headers_cap; i++) {
		prefork_request_header_at(req, i, &x->headers[2 * i], &x->headers[2 * i + 1]);
	}
	x->header_count = n;
	x->body = prefork_request_body(req);
	x->minor_version = prefork_request_minor_version(req);
	goprefork_peer(req, x);
}

// The first "?" of a target, or NULL: for the short targets of most requests, a loop costs
// less than the call to memchr through the PLT.
static inline const char *find_query(const char *target, size_t len) {
	if (len > 32) {
		return memchr(target, '?', len);
	}
	for (size_t i = 0; i < len; i++) {
		if (target[i] == '?') {
			return target + i;
		}
	}
	return NULL;
}

// Gives x its staging buffers (GOPREFORK_STAGE_SIZE and GOPREFORK_FIELDS_SIZE bytes,
// GOPREFORK_HEADERS header views): once for a batch arena's exchanges, which keep them.
static void attach_buffers(goprefork_exchange *x, char *stage, char *fields, prefork_str *headers) {
	x->stage = stage;
	x->stage_cap = GOPREFORK_STAGE_SIZE;
	x->fields = fields;
	x->fields_cap = GOPREFORK_FIELDS_SIZE;
	x->headers = headers;
	x->headers_cap = GOPREFORK_HEADERS;
}

// Fills x, which has its buffers, for req. Only the members read before anything writes them:
// goprefork_details fills the header views, the body, the version and the address before Go
// reads them (goprefork_peer the address alone), and clearing them all was a tenth of the
// callback's own work.
static inline __attribute__((always_inline)) void open_exchange(goprefork_exchange *x, const prefork_request *req) {
	x->method = prefork_request_method(req);
	x->target = prefork_request_target(req);
	x->stage_len = 0;
	x->fields_len = 0;
	x->status = 0;
	x->direct = 0;
	// The origin form ("/path?query", nearly every request) is split here, at its first "?"
	// (RFC 9112 §3.2.1), as the library's accessors split it; the library splits the others.
	if (x->target.len > 0 && x->target.ptr[0] == '/') {
		const char *q = find_query(x->target.ptr, x->target.len);
		x->path = x->target;
		x->query = (prefork_str){.ptr = x->target.ptr + x->target.len, .len = 0};
		if (q != NULL) {
			x->path.len = (size_t)(q - x->target.ptr);
			x->query = (prefork_str){.ptr = q + 1, .len = x->target.len - x->path.len - 1};
		}
	} else {
		x->path = prefork_request_path(req);
		x->query = prefork_request_query(req);
	}
}

static void handle(void *user_data, const prefork_request *req, prefork_response *resp) {
	char stage[GOPREFORK_STAGE_SIZE];
	char fields[GOPREFORK_FIELDS_SIZE];
	prefork_str headers[2 * GOPREFORK_HEADERS];
	goprefork_exchange x;
	attach_buffers(&x, stage, fields, headers);
	open_exchange(&x, req);
	goPreforkHandle(HANDLE(user_data), (prefork_request *)req, resp, &x);
	apply(resp, &x);
}

// A batch's staging buffers: too large for the C stack of a thread (musl's default is 128 KiB),
// so one per event-loop thread, allocated by its first batch and freed when it exits (by the
// key's destructor). The header views are shared: a handler reads them while it runs, and
// they are refilled for the next.
typedef struct {
	char stage[GOPREFORK_BATCH][GOPREFORK_STAGE_SIZE];
	char fields[GOPREFORK_BATCH][GOPREFORK_FIELDS_SIZE];
	prefork_str headers[2 * GOPREFORK_HEADERS];
	goprefork_exchange xs[GOPREFORK_BATCH];
} batch_arena;

static pthread_key_t arena_key;
static pthread_once_t arena_once = PTHREAD_ONCE_INIT;
static int arena_key_ok;

static void make_arena_key(void) {
	arena_key_ok = pthread_key_create(&arena_key, free) == 0;
}

// The thread's arena, once made: a thread-local variable costs a batch one load, where
// pthread_once and pthread_getspecific cost it two calls.
static __thread batch_arena *arena;

static batch_arena *new_arena(void) {
	pthread_once(&arena_once, make_arena_key);
	if (!arena_key_ok) {
		return NULL;
	}
	batch_arena *a = malloc(sizeof *a);
	if (a == NULL || pthread_setspecific(arena_key, a) != 0) {
		free(a);
		return NULL;
	}
	for (size_t i = 0; i < GOPREFORK_BATCH; i++) {
		attach_buffers(&a->xs[i], a->stage[i], a->fields[i], a->headers);
	}
	return a;
}

// Up to GOPREFORK_BATCH requests in one call into Go; the library offers the rest again.
// Without an arena (out of memory), one request the way handle takes it.
static size_t handle_batch(void *user_data, const prefork_request *const *reqs, prefork_response *const *resps,
                           size_t count) {
	batch_arena *a = arena;
	if (a == NULL && (a = arena = new_arena()) == NULL) {
		handle(user_data, reqs[0], resps[0]);
		return 1;
	}
	size_t n = count < GOPREFORK_BATCH ? count : GOPREFORK_BATCH;
	for (size_t i = 0; i < n; i++) {
		open_exchange(&a->xs[i], reqs[i]);
	}
	size_t answered = goPreforkHandleBatch(HANDLE(user_data), (prefork_request **)reqs, (prefork_response **)resps,
	                                       a->xs, n);
	for (size_t i = 0; i < answered; i++) {
		apply(resps[i], &a->xs[i]);
	}
	return answered;
}

static void exit_child(void *user_data) {
	goPreforkExitChild(HANDLE(user_data));
}

static void release(void *user_data) {
	goPreforkRelease(HANDLE(user_data));
}

static int on_child_spawn(void *user_data, int32_t pid) {
	return goPreforkOnChildSpawn(HANDLE(user_data), pid);
}

static int on_master_ready(void *user_data, const int32_t *pids, size_t count) {
	return goPreforkOnMasterReady(HANDLE(user_data), (int32_t *)pids, count);
}

static int on_child_recover(void *user_data, int32_t old_pid, int32_t new_pid) {
	return goPreforkOnChildRecover(HANDLE(user_data), old_pid, new_pid);
}

static void on_child_exit(void *user_data, int32_t pid, int32_t exit_code, int32_t signal) {
	goPreforkOnChildExit(HANDLE(user_data), pid, exit_code, signal);
}

static void on_master_death(void *user_data) {
	goPreforkOnMasterDeath(HANDLE(user_data));
}

static int on_reload(void *user_data, uint64_t generation, const int32_t *pids, size_t count) {
	return goPreforkOnReload(HANDLE(user_data), generation, (int32_t *)pids, count);
}

static void on_reload_failed(void *user_data, uint64_t generation, const char *reason) {
	goPreforkOnReloadFailed(HANDLE(user_data), generation, (char *)reason);
}

static void on_upgrade(void *user_data, int32_t old_pid, int32_t new_pid) {
	goPreforkOnUpgrade(HANDLE(user_data), old_pid, new_pid);
}

static int32_t command_producer(void *user_data, int listener_fd, int lifeline_fd, size_t slot) {
	return goPreforkCommandProducer(HANDLE(user_data), listener_fd, lifeline_fd, slot);
}

static int serve(void *user_data, int listen_fd, int stop_fd) {
	return goPreforkServe(HANDLE(user_data), listen_fd, stop_fd);
}

static void log_line(void *user_data, prefork_log_level level, const char *msg, size_t len) {
	goPreforkLog(HANDLE(user_data), (int)level, (char *)msg, len);
}

static ptrdiff_t stream_read(void *user_data, char *buf, size_t cap) {
	return goPreforkStreamRead(HANDLE(user_data), buf, cap);
}

static void stream_free(void *user_data) {
	goPreforkStreamFree(HANDLE(user_data));
}

static void on_conn(void *user_data, prefork_conn *conn) {
	goPreforkOnConn(HANDLE(user_data), conn);
}

static void hijack_free(void *user_data) {
	goPreforkHijackFree(HANDLE(user_data));
}

enum prefork_result goprefork_hijack(prefork_response *resp, uintptr_t h) {
	return prefork_response_hijack(resp, on_conn, (void *)h, hijack_free);
}

enum prefork_result goprefork_set_body_stream(prefork_response *resp, uintptr_t h) {
	return prefork_response_set_body_stream(resp, stream_read, (void *)h, stream_free);
}

enum prefork_result goprefork_new(uintptr_t h, unsigned members, prefork **out) {
	prefork_handler handler = {
		.user_data = (void *)h,
		.init_child = (members & GOPREFORK_INIT_CHILD) ? init_child : NULL,
		.handle = handle,
		.exit_child = (members & GOPREFORK_EXIT_CHILD) ? exit_child : NULL,
		.user_data_free = release,
		.handle_batch = (members & GOPREFORK_HANDLE_BATCH) ? handle_batch : NULL,
	};
	return prefork_new(&handler, out);
}

enum prefork_result goprefork_set_hooks(prefork *p, uintptr_t h, unsigned members) {
	prefork_hooks hooks = {
		.user_data = (void *)h,
		.on_child_spawn = (members & GOPREFORK_ON_CHILD_SPAWN) ? on_child_spawn : NULL,
		.on_master_ready = (members & GOPREFORK_ON_MASTER_READY) ? on_master_ready : NULL,
		.on_child_recover = (members & GOPREFORK_ON_CHILD_RECOVER) ? on_child_recover : NULL,
		.on_child_exit = (members & GOPREFORK_ON_CHILD_EXIT) ? on_child_exit : NULL,
		.on_master_death = (members & GOPREFORK_ON_MASTER_DEATH) ? on_master_death : NULL,
		.command_producer = (members & GOPREFORK_COMMAND_PRODUCER) ? command_producer : NULL,
		.user_data_free = release,
		.on_reload = (members & GOPREFORK_ON_RELOAD) ? on_reload : NULL,
		.on_reload_failed = (members & GOPREFORK_ON_RELOAD_FAILED) ? on_reload_failed : NULL,
		.on_upgrade = (members & GOPREFORK_ON_UPGRADE) ? on_upgrade : NULL,
	};
	return prefork_set_hooks(p, &hooks);
}

enum prefork_result goprefork_set_serve(prefork *p, uintptr_t h) {
	prefork_serve s = {.user_data = (void *)h, .serve = serve, .user_data_free = release};
	return prefork_set_serve(p, &s);
}

enum prefork_result goprefork_set_logger(prefork *p, uintptr_t h) {
	return prefork_set_logger(p, log_line, (void *)h, release);
}
