package prefork

// #include "shim.h"
import "C"

import (
	"io"
	"net"
	"runtime"
	"runtime/cgo"
	"unsafe"
)

// Response is the response to the request being handled, valid only while the
// RequestHandler runs, unless the handler defers it (Defer): then a goroutine keeps it and
// completes it later. It starts as status 200 with no headers and an empty body; the library
// adds Content-Length, Date and Connection. Every method copies its arguments. After the
// handler returns (for a deferred Response, after Complete or Hijack), the methods fail with
// ErrState.
type Response struct {
	c *C.prefork_response
	// The C callback's staging buffer: the body goes there while it fits, and the callback
	// hands it to the library after the handler. Once it does not fit (or after
	// SetBodyStream, or Defer), direct is set and every body call goes to the library, in
	// order.
	x      *C.goprefork_exchange
	direct bool
	srv    *server // for the log lines of a body stream
	// Set by Defer: the response is the deferred handle's, and outlives the handler.
	d *deferred
}

// deferred is a deferred Response's C handle. It is set once by Defer, in the handler, and
// never replaced, so that the handler's return path may read it while the goroutine that
// keeps the Response uses it.
type deferred struct {
	c *C.prefork_deferred // nil once completed
	// SetStatus(101) waits for Hijack, which the library requires first.
	switching bool
}

// bodyStream is what a body stream's cgo.Handle holds.
type bodyStream struct {
	r   io.Reader
	srv *server
}

var _ interface {
	Write([]byte) (int, error)
	WriteString(string) (int, error)
} = (*Response)(nil)

// bytesPtr is the address of b's first byte, or nil for an empty b (the library accepts NULL
// with length 0). Go memory passed to C is only read during the call.
func bytesPtr(b []byte) *C.char {
	if len(b) == 0 {
		return nil
	}
	return (*C.char)(unsafe.Pointer(unsafe.SliceData(b)))
}

func stringPtr(s string) *C.char {
	return bytesPtr(stringBytes(s))
}

func (r *Response) ended(op string) error {
	if r.c != nil {
		return nil
	}
	return &Error{Op: op, Code: CodeState, Message: "the response was used after it was sent (its handler returned, or Complete or Hijack ran)"}
}

// A call on a deferred Response locks its goroutine to its OS thread (runtime.LockOSThread)
// for the call and the prefork_last_error that may follow it, which is per thread; a
// handler's goroutine is there already (cgo keeps a callback on its C thread), so the lock is
// taken only for a deferred Response: `if r.d != nil { runtime.LockOSThread(); defer ... }`.

// SetStatus sets the status code, 200 until set. It fails with ErrInvalidArgument, leaving
// the status unchanged, outside 200..599 (interim 1xx responses are the library's), except
// for 101 (Switching Protocols) on a deferred Response, which Hijack then sends.
func (r *Response) SetStatus(code int) error {
	if err := r.ended("SetStatus"); err != nil {
		return err
	}
	if code == 101 && r.d != nil {
		r.d.switching = true
		return nil
	}
	if code < 200 || code > 599 {
		return invalid("SetStatus", "status %d is outside 200..599 (101 is for a deferred Response that Hijack sends)", code)
	}
	if r.d != nil {
		r.d.switching = false
	}
	if r.d != nil {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	return lastError("SetStatus", C.prefork_response_set_status(r.c, C.int(code)))
}

// AddHeader adds a header field. The name must be an HTTP token and the value hold no control
// character but tab. Content-Length, Transfer-Encoding and Date belong to the library and are
// refused; "Connection: close" closes the connection after this response.
func (r *Response) AddHeader(name, value string) error {
	if err := r.ended("AddHeader"); err != nil {
		return err
	}
	if r.d != nil {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	return lastError("AddHeader", C.prefork_response_add_header(r.c,
		stringPtr(name), C.size_t(len(name)), stringPtr(value), C.size_t(len(value))))
}

// Write appends p to the body (io.Writer).
func (r *Response) Write(p []byte) (int, error) {
	if err := r.ended("Write"); err != nil {
		return 0, err
	}
	if err := r.write("Write", p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// write appends b to the body: into the staging buffer while it fits, else (and from then
// on) to the library, after what was staged.
func (r *Response) write(op string, b []byte) error {
	x := r.x
	if !r.direct && len(b) <= int(x.stage_cap-x.stage_len) {
		stage := unsafe.Slice((*byte)(unsafe.Pointer(x.stage)), int(x.stage_cap))
		x.stage_len += C.size_t(copy(stage[x.stage_len:], b))
		return nil
	}
	if err := r.unstage(op); err != nil {
		return err
	}
	if r.d != nil {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	return lastError(op, C.goprefork_write(r.c, bytesPtr(b), C.size_t(len(b))))
}

// unstage hands the staged body to the library, after which every body call goes there.
func (r *Response) unstage(op string) error {
	r.direct = true
	if x := r.x; x != nil && x.stage_len > 0 {
		n := x.stage_len
		x.stage_len = 0
		return lastError(op, C.goprefork_write(r.c, x.stage, n))
	}
	return nil
}

// setBody replaces the body with b.
func (r *Response) setBody(op string, b []byte) error {
	if !r.direct {
		// Nothing reached the library yet: the staged bytes were the whole body.
		r.x.stage_len = 0
		return r.write(op, b)
	}
	if r.d != nil {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	return lastError(op, C.goprefork_set_body(r.c, bytesPtr(b), C.size_t(len(b))))
}

// stringBytes is a read-only view of s, for the calls above, which only read it.
func stringBytes(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// WriteString appends s to the body (io.StringWriter).
func (r *Response) WriteString(s string) (int, error) {
	if err := r.ended("WriteString"); err != nil {
		return 0, err
	}
	if err := r.write("WriteString", stringBytes(s)); err != nil {
		return 0, err
	}
	return len(s), nil
}

// SetBody replaces the body with b.
func (r *Response) SetBody(b []byte) error {
	if err := r.ended("SetBody"); err != nil {
		return err
	}
	return r.setBody("SetBody", b)
}

// SetBodyString replaces the body with s.
func (r *Response) SetBodyString(s string) error {
	if err := r.ended("SetBodyString"); err != nil {
		return err
	}
	return r.setBody("SetBodyString", stringBytes(s))
}

// SetBodyStream sends the body from r instead of a buffer, for a body whose length is not
// known in advance: HTTP/1.1 clients get it chunked, HTTP/1.0 clients get the bytes as they
// come and then the connection closes. It replaces any buffered body; later Write and SetBody
// calls are ignored.
//
// r is read after the handler returns, on the child's event-loop thread, whenever the
// connection can take more output: each Read must return promptly (a blocking Read stalls
// every connection of the child) and must not keep the slice it is given. io.EOF ends the
// body; another error (or a panic) ends the response early and closes the connection, so the
// client sees a truncated body. If r is also an io.Closer, it is closed once the body is done
// with (sent, abandoned, or not sent at all, as for HEAD).
func (r *Response) SetBodyStream(body io.Reader) error {
	if err := r.ended("SetBodyStream"); err != nil {
		return err
	}
	liveHandles.Add(1)
	h := cgo.NewHandle(&bodyStream{body, r.srv})
	if r.d != nil {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	if err := lastError("SetBodyStream", C.goprefork_set_body_stream(r.c, C.uintptr_t(h))); err != nil {
		deleteHandle(h)
		return err
	}
	// The stream replaced the buffered body; later body calls are the library's to ignore.
	if r.x != nil {
		r.x.stage_len = 0
	}
	r.direct = true
	return nil
}

// Defer keeps the Response past the handler's return: the handler may return at once, and a
// goroutine that keeps resp fills it in and sends it with Complete (or Hijack) whenever it is
// ready, as a handler waiting on a database or another service would. The Request is not
// kept: copy what the answer needs (the *String and *Copy methods) before the handler
// returns. Use a deferred Response from one goroutine at a time.
//
// The connection waits meanwhile: its later (pipelined) requests are answered after this
// response. A Response still deferred when the child drains is answered 503 as the grace
// period ends (at most 250 ms before); one completed after the client left is dropped. A client that closes its side
// of the connection meanwhile counts as gone: the connection is closed at once. A deferred
// Response the program lets go of without completing it holds its connection until then.
//
// Call it in the handler, once: otherwise it fails with ErrState.
func (r *Response) Defer() error {
	if err := r.ended("Defer"); err != nil {
		return err
	}
	if r.d != nil {
		return &Error{Op: "Defer", Code: CodeState, Message: "the response is deferred already"}
	}
	// What the handler staged moves into the deferred response with the rest.
	if err := r.unstage("Defer"); err != nil {
		return err
	}
	var d *C.prefork_deferred
	if rc := C.prefork_response_defer(r.c, &d); rc != C.PREFORK_OK {
		return lastError("Defer", rc)
	}
	r.c = C.prefork_deferred_response(d)
	r.x = nil
	r.d = &deferred{c: d}
	return nil
}

// Complete sends a deferred Response: the child's event loop writes it in its turn (or drops
// it, if the client left or the child stopped serving). Afterwards the Response's methods
// fail with ErrState, and so does a second Complete. It fails with ErrState on a Response
// that was not deferred, and with ErrInvalidArgument after SetStatus(101) (use Hijack).
func (r *Response) Complete() error {
	const op = "Complete"
	d := r.d
	switch {
	case d == nil:
		return &Error{Op: op, Code: CodeState, Message: "Complete is for a deferred Response: call Defer in the handler first"}
	case d.c == nil:
		return &Error{Op: op, Code: CodeState, Message: "the deferred response was completed already"}
	case d.switching:
		return invalid(op, "status 101 switches protocols: send it with Hijack")
	}
	return r.complete(op)
}

func (r *Response) complete(op string) error {
	d := r.d
	runtime.LockOSThread()
	err := lastError(op, C.prefork_deferred_complete(d.c))
	runtime.UnlockOSThread()
	C.prefork_deferred_free(d.c)
	d.c, r.c = nil, nil
	return err
}

// Hijack sends a deferred Response and takes its connection over: it waits until the response
// (and every response before it on the connection) is written, then returns the connection,
// which the library no longer serves. For a protocol upgrade, SetStatus(101) and add an
// Upgrade field naming the protocol first; the library sends Connection: Upgrade with it.
//
// Reads from the returned net.Conn give first the bytes the client sent after the request
// that the library had already read (pipelined requests, or the new protocol's first bytes),
// then what the socket brings. The connection counts toward MaxConnections until it is
// closed: close it when done.
//
// Hijack waits for the handler to have returned, so call it from the goroutine that keeps the
// deferred Response, never from the handler itself. It fails with ErrState on a Response that
// was not deferred or was completed, and with ErrUnsupported when the connection's transport
// is not a plain socket, leaving the Response deferred, to answer otherwise; with ErrIO when
// the connection closed before the response was written.
func (r *Response) Hijack() (net.Conn, error) {
	const op = "Hijack"
	d := r.d
	switch {
	case d == nil:
		return nil, &Error{Op: op, Code: CodeState, Message: "Hijack is for a deferred Response: call Defer in the handler, then Hijack from another goroutine"}
	case d.c == nil:
		return nil, &Error{Op: op, Code: CodeState, Message: "the deferred response was completed already"}
	}
	w := &hijackWait{conns: make(chan hijackResult, 1), srv: r.srv}
	liveHandles.Add(1)
	h := cgo.NewHandle(w)
	runtime.LockOSThread()
	err := lastError(op, C.goprefork_hijack(r.c, C.uintptr_t(h)))
	if err == nil && d.switching {
		// Accepted now that the connection is taken over; it cannot fail then.
		C.prefork_response_set_status(r.c, 101)
	}
	runtime.UnlockOSThread()
	if err != nil {
		// The library took nothing over, and the Response is still deferred: the caller may
		// answer it otherwise.
		deleteHandle(h)
		return nil, err
	}
	if err := r.complete(op); err != nil {
		return nil, err
	}
	got, ok := <-w.conns
	if !ok {
		return nil, &Error{Op: op, Code: CodeIO, Message: "the connection closed before the response was written"}
	}
	return got.conn, got.err
}
