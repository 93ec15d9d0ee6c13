// The C half of the binding: it fills libprefork's callback structs with functions that lead
// to the Go trampolines (callbacks.go). user_data is a runtime/cgo.Handle carried as an
// integer, so Go never turns a uintptr into a pointer.
#ifndef GOPREFORK_SHIM_H
#define GOPREFORK_SHIM_H

#include <stdint.h>

#include "prefork.h"

// Which optional callbacks the Go side set: a member left out stays NULL, so the library
// behaves as if the hook did not exist (for the command producer: the default re-exec).
enum {
	GOPREFORK_INIT_CHILD = 1 << 0,
	GOPREFORK_EXIT_CHILD = 1 << 1,
	GOPREFORK_ON_CHILD_SPAWN = 1 << 2,
	GOPREFORK_ON_MASTER_READY = 1 << 3,
	GOPREFORK_ON_CHILD_RECOVER = 1 << 4,
	GOPREFORK_ON_CHILD_EXIT = 1 << 5,
	GOPREFORK_ON_MASTER_DEATH = 1 << 6,
	GOPREFORK_COMMAND_PRODUCER = 1 << 7,
	GOPREFORK_ON_RELOAD = 1 << 8,
	GOPREFORK_ON_RELOAD_FAILED = 1 << 9,
};

// prefork_new with the Go request handler; on success the handle owns `handle` (deleted by the
// user_data_free finalizer in prefork_free).
enum prefork_result goprefork_new(uintptr_t handle, unsigned members, prefork **out);

// prefork_set_hooks with the Go hooks named in `members`; on success the library owns
// `handle`, as above.
enum prefork_result goprefork_set_hooks(prefork *p, uintptr_t handle, unsigned members);

// prefork_set_serve with the Go ServeFunc; on success the library owns `handle`, as above
// (a serve-mode child exits without freeing the handle, and without deleting it).
enum prefork_result goprefork_set_serve(prefork *p, uintptr_t handle);

// prefork_set_logger with the Go logger; on success the library owns `handle`, as above.
enum prefork_result goprefork_set_logger(prefork *p, uintptr_t handle);

// prefork_response_set_body_stream reading from the Go io.Reader behind `handle`; on success
// the library owns `handle` (deleted by the stream's finalizer once the body is done).
enum prefork_result goprefork_set_body_stream(prefork_response *resp, uintptr_t handle);

// prefork_response_hijack handing the connection to the Go side (goPreforkOnConn) once the
// response is written; on success the library owns `handle` (deleted by the hook's finalizer,
// after the hand-over or instead of it).
enum prefork_result goprefork_hijack(prefork_response *resp, uintptr_t handle);

// What the C callback hands the Go handler besides the request and response: the request
// line's parts, read in C so that the accessors handlers call most cost Go no cgo call, and a
// buffer on the callback's C stack where Go stages the body. The callback passes the staged
// bytes to prefork_response_write after Go returns: a small body costs no cgo call either.
typedef struct {
	prefork_str method, target, path, query;
	char *stage;
	size_t stage_len, stage_cap;
} goprefork_exchange;

// The staging buffer's size: bodies up to this many bytes cross no extra cgo call.
#define GOPREFORK_STAGE_SIZE 4096

// prefork_response_write and prefork_response_set_body with a char pointer: cgo checks every
// unsafe.Pointer argument for Go pointers inside the memory it points to (a heap bitmap walk
// per call), while bytes cannot hold pointers and are never checked.
static inline enum prefork_result goprefork_write(prefork_response *resp, const char *data, size_t len) {
	return prefork_response_write(resp, data, len);
}

static inline enum prefork_result goprefork_set_body(prefork_response *resp, const char *data, size_t len) {
	return prefork_response_set_body(resp, data, len);
}

#endif
