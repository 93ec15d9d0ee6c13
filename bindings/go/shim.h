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
	// The request handler takes the event loop's batches (prefork_handler.handle_batch).
	GOPREFORK_HANDLE_BATCH = 1 << 10,
	GOPREFORK_ON_UPGRADE = 1 << 11,
};

// The most requests one call into Go answers: a batch the library offers beyond it is
// answered in several calls.
#define GOPREFORK_BATCH PREFORK_MAX_BATCH

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
// line's parts, read in C so that the accessors handlers call most cost Go no cgo call, and
// buffers on the callback's C stack where Go stages the response: the status, header fields
// and body that the callback hands to the library after Go returns (goprefork_apply). A
// handler whose response fits crosses from Go to C not once.
typedef struct {
	prefork_str method, target, path, query;
	// The body, while it fits; once it does not (or after a body stream), direct is set and
	// every body call goes to the library, after what was staged.
	char *stage;
	size_t stage_len, stage_cap;
	// Header fields, in order: each is a 4-byte head (the name's and the value's length, as
	// little-endian 16-bit numbers), the name, the value. Go stages only fields the library
	// accepts (an HTTP token for a name, no control character but tab in the value, none of
	// the names it owns), so adding them cannot fail.
	char *fields;
	size_t fields_len, fields_cap;
	// The status, 200..599, or 0 when the handler set none.
	int status;
	int direct;
	// What goprefork_details fills, on demand (the net/http adapter reads it all): the first
	// headers_cap header fields as name and value views (headers[2i], headers[2i+1]), the
	// number of fields, the body and the minor version. Like the address below, they hold
	// whatever an earlier request left until the call that fills them: read them only after.
	prefork_str *headers;
	size_t headers_cap, header_count;
	prefork_str body;
	int minor_version;
	// The client's address, as prefork_request_peer_ip gives it (peer_ok 0: unknown), filled
	// by goprefork_details and goprefork_peer; peer_text is room for the library's text.
	uint8_t peer_ip[PREFORK_IP_BYTES];
	size_t peer_ip_len;
	uint16_t peer_port;
	int peer_ok;
	char peer_text[PREFORK_ADDR_STRLEN];
} goprefork_exchange;

// How many header fields goprefork_details hands over at once (more are read one by one).
#define GOPREFORK_HEADERS 64

// Fills the exchange's header views, header count, body, minor version and client address:
// one cgo call for all of them.
void goprefork_details(const prefork_request *req, goprefork_exchange *x);

// Fills the exchange's client address; returns peer_ok.
static inline int goprefork_peer(const prefork_request *req, goprefork_exchange *x) {
	x->peer_ok = prefork_request_peer_ip(req, x->peer_ip, &x->peer_ip_len, &x->peer_port) == PREFORK_OK;
	return x->peer_ok;
}

// The client's address as the library writes it, into peer_text; returns whether it did.
static inline int goprefork_peer_text(const prefork_request *req, goprefork_exchange *x) {
	return prefork_request_peer_addr(req, x->peer_text, sizeof x->peer_text) == PREFORK_OK;
}

// The staging buffers' sizes: a body and fields that fit cross no extra cgo call.
#define GOPREFORK_STAGE_SIZE 4096
#define GOPREFORK_FIELDS_SIZE 1024

// Adds the staged header fields to the response, in order, and empties the buffer: what Go
// calls before it adds a field directly, so that fields keep their order.
void goprefork_flush_fields(prefork_response *resp, goprefork_exchange *x);

// Hands everything staged to the library at once, in the order the callback would: the
// status, the fields, then the body; from then on x stages no body (direct is set) and holds
// nothing to apply. What Defer calls before the response leaves the callback. Returns the
// body write's result (the status and the fields cannot fail).
enum prefork_result goprefork_flush(prefork_response *resp, goprefork_exchange *x);

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
