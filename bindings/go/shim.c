// Adapters between libprefork's callback signatures and the Go exports: they turn user_data
// back into the cgo.Handle integer and drop the const the Go side cannot spell.
#include "shim.h"
#include "_cgo_export.h"

#define HANDLE(user_data) ((uintptr_t)(user_data))

static int init_child(void *user_data) {
	return goPreforkInitChild(HANDLE(user_data));
}

static void handle(void *user_data, const prefork_request *req, prefork_response *resp) {
	char stage[GOPREFORK_STAGE_SIZE];
	goprefork_exchange x = {
		.method = prefork_request_method(req),
		.target = prefork_request_target(req),
		.path = prefork_request_path(req),
		.query = prefork_request_query(req),
		.stage = stage,
		.stage_cap = sizeof stage,
	};
	goPreforkHandle(HANDLE(user_data), (prefork_request *)req, resp, &x);
	if (x.stage_len > 0) {
		// Cannot fail: resp is live and the handler's writes were valid when staged.
		prefork_response_write(resp, stage, x.stage_len);
	}
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
