package prefork

// #include "shim.h"
import "C"

import (
	"encoding/binary"
	"io"
	"net"
	"runtime"
	"runtime/cgo"
	"strings"
	"unsafe"
)

// Response is the response to the request being handled, valid only while the
// RequestHandler runs, unless the handler defers it (Defer): then a goroutine keeps it and
// completes it later. It starts as status 200 with no headers and an empty body; the library
// adds Content-Length, Date and Connection. Every method copies its arguments. After the
// handler returns (for a deferred Response, after Complete or Hijack), the methods fail with
// ErrState.
type Response struct {
	k *call // the response's call, while it names this Response
}

// How a Response reaches the library: its call's exchange holds the C callback's staging
// buffers. The status, the header fields and the body go there while they fit, and the
// callback hands them to the library after the handler (shim.c's apply), so that a handler
// crosses into C not once. A field that does not fit, or that the library might refuse, goes
// to the library at once, after the staged ones; a body that does not fit (or a body stream)
// sets x.direct, and from then on every body call goes to the library, after what was staged.
// Defer hands all that was staged to the library first (goprefork_flush) and moves the
// Response to a call of its own without an exchange: every call on the deferred Response goes
// to the library at once.

// deferred is a deferred Response's C handle, set by Defer on the Response's own call.
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

// live is the response's call while it may be used: while its handler runs, or once deferred
// until Complete or Hijack; else an ErrState for op.
func (r *Response) live(op string) (*call, error) {
	if k := r.k; k != nil && k.resp == r {
		return k, nil
	}
	return nil, &Error{Op: op, Code: CodeState, Message: "the response was used after it was sent (its handler returned, or Complete or Hijack ran)"}
}

// A call on a deferred Response locks its goroutine to its OS thread (runtime.LockOSThread)
// for the call and the prefork_last_error that may follow it, which is per thread; a
// handler's goroutine is there already (cgo keeps a callback on its C thread), so the lock is
// taken only for a deferred Response: `if k.d != nil { runtime.LockOSThread(); defer ... }`.

// SetStatus sets the status code, 200 until set. It fails with ErrInvalidArgument, leaving
// the status unchanged, outside 200..599 (interim 1xx responses are the library's), except
// for 101 (Switching Protocols) on a deferred Response, which Hijack then sends.
func (r *Response) SetStatus(code int) error {
	k, err := r.live("SetStatus")
	if err != nil {
		return err
	}
	if code == 101 && k.d != nil {
		k.d.switching = true
		return nil
	}
	if code < 200 || code > 599 {
		return invalid("SetStatus", "status %d is outside 200..599 (101 is for a deferred Response that Hijack sends)", code)
	}
	if k.d == nil {
		k.x.status = C.int(code) // the library's range too: applying it cannot fail
		return nil
	}
	k.d.switching = false
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return lastError("SetStatus", C.prefork_response_set_status(k.rc, C.int(code)))
}

// AddHeader adds a header field. The name must be an HTTP token and the value hold no control
// character but tab. Content-Length, Transfer-Encoding and Date belong to the library and are
// refused; "Connection: close" closes the connection after this response.
func (r *Response) AddHeader(name, value string) error {
	k := r.k
	if k == nil || k.resp != r || k.x == nil {
		// Ended, or deferred: a deferred Response stages nothing.
		k, err := r.live("AddHeader")
		if err != nil {
			return err
		}
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		return lastError("AddHeader", C.prefork_response_add_header(k.rc,
			stringPtr(name), C.size_t(len(name)), stringPtr(value), C.size_t(len(value))))
	}
	x, rp := k.x, k.rp
	if k.n >= 0 && k.n < len(rp.fields) {
		if f := &rp.fields[k.n]; sameString(f.name, name) && sameString(f.value, value) {
			x.fields_len = C.size_t(f.end) // staged already, by the request before
			k.n++
			return nil
		}
	}
	at, need := int(x.fields_len), 4+len(name)+len(value)
	if need <= int(x.fields_cap)-at && stageable(name, value) {
		f := unsafe.Slice((*byte)(unsafe.Pointer(x.fields)), int(x.fields_cap))[at : at+need]
		binary.LittleEndian.PutUint32(f, uint32(len(name))|uint32(len(value))<<16)
		copy(f[4+copy(f[4:], name):], value)
		x.fields_len = C.size_t(at + need)
		if k.n >= 0 {
			// What follows in the buffer is overwritten from here on.
			rp.fields = append(rp.fields[:k.n], replayField{name, value, at + need})
			k.n++
		}
		return nil
	}
	return k.addHeaderDirect(name, value)
}

// addHeaderDirect adds the field to the library's response (not deferred) at once, after the
// staged ones, with the library's verdict on it.
func (k *call) addHeaderDirect(name, value string) error {
	if strings.EqualFold(name, "Connection") {
		k.ends = true // "close" ends the connection
	}
	if k.x.fields_len > 0 {
		C.goprefork_flush_fields(k.rc, k.x) // the fields keep their order
	}
	k.forgetReplay()
	return lastError("AddHeader", C.prefork_response_add_header(k.rc,
		stringPtr(name), C.size_t(len(name)), stringPtr(value), C.size_t(len(value))))
}

// forgetReplay stops this response's use of replay once the staged fields went to the
// library: the fields it stages from then on overwrite the buffer from its start, which
// replay no longer describes, so the next request stages its fields afresh.
func (k *call) forgetReplay() {
	if k.n >= 0 {
		k.rp.fields = k.rp.fields[:0]
		k.n = -1
	}
}

// replay describes the fields staged in buf, a buffer of C memory that a server whose handler
// runs on the event loop (one request at a time) keeps from request to request, instead of
// the callback's own: fields[i] is the i-th field staged there, which ends at fields[i].end,
// known by the identity of its strings (the address and length of their bytes). A handler
// that adds the fields the request before added, in the same order (the constant
// "Content-Type: text/plain" of most handlers), finds each staged already: two comparisons
// instead of a check and a copy. A string's bytes never change, and replay keeps the strings
// it holds alive, so the same address and length mean the same bytes. (A string made with
// unsafe.String over bytes that change breaks that promise; the library checks the field
// again when it is added, and drops it.)
type replay struct {
	buf    *C.char
	fields []replayField
}

type replayField struct {
	name, value string
	end         int
}

func sameString(a, b string) bool {
	return len(a) == len(b) && unsafe.StringData(a) == unsafe.StringData(b)
}

// tchar is RFC 9110's token characters, as the library's header name check has them.
var tchar = func() (t [256]bool) {
	for _, b := range []byte("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") {
		t[b] = true
	}
	return t
}()

// stageable reports whether the library accepts the field as an ordinary one: its name is a
// token and not one of the names the library owns (Date, Connection, Content-Length,
// Transfer-Encoding: those go to the library, which refuses them or acts on them), and its
// value has no control character but tab. Such a field may be staged, because adding it
// later cannot fail; any other goes to the library at once, which explains its refusal.
// TestStagedFieldsAreWhatTheLibraryAccepts holds this to the library's own rules.
func stageable(name, value string) bool {
	if len(name) == 0 {
		return false
	}
	for i := 0; i < len(name); i++ {
		if !tchar[name[i]] {
			return false
		}
	}
	switch len(name) {
	case 4, 10, 14, 17:
		if strings.EqualFold(name, "Date") || strings.EqualFold(name, "Connection") ||
			strings.EqualFold(name, "Content-Length") || strings.EqualFold(name, "Transfer-Encoding") {
			return false
		}
	}
	return !hasControl(value)
}

// hasControl reports whether v holds a control character other than tab (0x00-0x1f, 0x7f),
// eight bytes at a time where it can.
func hasControl(v string) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	i := 0
	for ; i+8 <= len(v); i += 8 {
		w := binary.LittleEndian.Uint64(stringBytes(v[i : i+8]))
		// A byte below 0x20, or equal to 0x7f (a zero byte in w ^ 0x7f...): a tab is below
		// 0x20 and allowed, so a suspect word is checked byte by byte.
		below := (w - 0x20*ones) &^ w & highs
		del := (w ^ 0x7f*ones - ones) &^ (w ^ 0x7f*ones) & highs
		if below|del != 0 && hasControlBytes(v[i:i+8]) {
			return true
		}
	}
	return hasControlBytes(v[i:])
}

func hasControlBytes(v string) bool {
	for i := 0; i < len(v); i++ {
		if b := v[i]; (b < ' ' && b != '\t') || b == 0x7f {
			return true
		}
	}
	return false
}

// Write appends p to the body (io.Writer).
func (r *Response) Write(p []byte) (int, error) {
	if k := r.k; k != nil && k.resp == r {
		if stage(k.x, p) {
			return len(p), nil
		}
	}
	k, err := r.live("Write")
	if err != nil {
		return 0, err
	}
	if err := k.send("Write", p); err != nil { // staging failed already
		return 0, err
	}
	return len(p), nil
}

// write appends b to the body: into the staging buffer while it fits, else (and from then
// on) to the library, after what was staged.
func (k *call) write(op string, b []byte) error {
	if stage(k.x, b) {
		return nil
	}
	return k.send(op, b)
}

// send appends b to the body in the library, after what was staged (which goes first).
func (k *call) send(op string, b []byte) error {
	if err := k.unstage(op); err != nil {
		return err
	}
	if k.d != nil {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	return lastError(op, C.goprefork_write(k.rc, bytesPtr(b), C.size_t(len(b))))
}

// stage appends b to the body staged in x, and reports whether it did: not when x is nil
// (deferred), the body goes to the library already, or b does not fit.
func stage(x *C.goprefork_exchange, b []byte) bool {
	if x == nil || x.direct != 0 || len(b) > int(x.stage_cap-x.stage_len) {
		return false
	}
	copy(unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(x.stage), x.stage_len)), len(b)), b)
	x.stage_len += C.size_t(len(b))
	return true
}

// unstage hands the staged body to the library, after which every body call goes there. The
// staged status and fields stay staged: the library puts the head before any body byte.
func (k *call) unstage(op string) error {
	x := k.x
	if x == nil {
		return nil // deferred: nothing is staged
	}
	x.direct = 1
	if n := x.stage_len; n > 0 {
		x.stage_len = 0
		return lastError(op, C.goprefork_write(k.rc, x.stage, n))
	}
	return nil
}

// setBody replaces the body with b.
func (k *call) setBody(op string, b []byte) error {
	if x := k.x; x != nil && x.direct == 0 {
		// Nothing reached the library yet: the staged bytes were the whole body.
		x.stage_len = 0
		return k.write(op, b)
	}
	if k.d != nil {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	return lastError(op, C.goprefork_set_body(k.rc, bytesPtr(b), C.size_t(len(b))))
}

// stringBytes is a read-only view of s, for the calls above, which only read it.
func stringBytes(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// WriteString appends s to the body (io.StringWriter).
func (r *Response) WriteString(s string) (int, error) {
	k, err := r.live("WriteString")
	if err != nil {
		return 0, err
	}
	if err := k.write("WriteString", stringBytes(s)); err != nil {
		return 0, err
	}
	return len(s), nil
}

// SetBody replaces the body with b.
func (r *Response) SetBody(b []byte) error {
	k, err := r.live("SetBody")
	if err != nil {
		return err
	}
	return k.setBody("SetBody", b)
}

// SetBodyString replaces the body with s.
func (r *Response) SetBodyString(s string) error {
	k, err := r.live("SetBodyString")
	if err != nil {
		return err
	}
	return k.setBody("SetBodyString", stringBytes(s))
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
	k, err := r.live("SetBodyStream")
	if err != nil {
		return err
	}
	liveHandles.Add(1)
	h := cgo.NewHandle(&bodyStream{body, k.srv})
	if k.d != nil {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	if err := lastError("SetBodyStream", C.goprefork_set_body_stream(k.rc, C.uintptr_t(h))); err != nil {
		deleteHandle(h)
		return err
	}
	// The stream replaced the buffered body; later body calls are the library's to ignore.
	if k.x != nil {
		k.x.stage_len, k.x.direct = 0, 1
	}
	k.ends = true
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
	k, err := r.live("Defer")
	if err != nil {
		return err
	}
	if k.d != nil {
		return &Error{Op: "Defer", Code: CodeState, Message: "the response is deferred already"}
	}
	// What the handler staged (the status, the fields, then the body) reaches the library
	// first, and moves into the deferred response with the rest: later calls go to the
	// library at once, after it, and the callback has nothing left to apply.
	if err := lastError("Defer", C.goprefork_flush(k.rc, k.x)); err != nil {
		return err
	}
	k.forgetReplay()
	var d *C.prefork_deferred
	if rc := C.prefork_response_defer(k.rc, &d); rc != C.PREFORK_OK {
		return lastError("Defer", rc)
	}
	k.ends = true
	// The handler's call is reused once it returns: the Response moves to one of its own.
	r.k = &call{resp: r, rc: C.prefork_deferred_response(d), srv: k.srv, n: -1, ends: true, d: &deferred{c: d}}
	k.resp = nil
	return nil
}

// Complete sends a deferred Response: the child's event loop writes it in its turn (or drops
// it, if the client left or the child stopped serving). Afterwards the Response's methods
// fail with ErrState, and so does a second Complete. It fails with ErrState on a Response
// that was not deferred, and with ErrInvalidArgument after SetStatus(101) (use Hijack).
func (r *Response) Complete() error {
	const op = "Complete"
	d := r.deferred()
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

// deferred is the Response's deferred handle, or nil when Defer did not run. Only Defer's
// own call has one, and such a call is never reused: what it holds is this Response's.
func (r *Response) deferred() *deferred {
	if r.k == nil {
		return nil
	}
	return r.k.d
}

func (r *Response) complete(op string) error {
	k := r.k
	runtime.LockOSThread()
	err := lastError(op, C.prefork_deferred_complete(k.d.c))
	runtime.UnlockOSThread()
	C.prefork_deferred_free(k.d.c)
	k.d.c, k.rc, k.resp = nil, nil, nil
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
	d := r.deferred()
	switch {
	case d == nil:
		return nil, &Error{Op: op, Code: CodeState, Message: "Hijack is for a deferred Response: call Defer in the handler, then Hijack from another goroutine"}
	case d.c == nil:
		return nil, &Error{Op: op, Code: CodeState, Message: "the deferred response was completed already"}
	}
	k := r.k
	w := &hijackWait{conns: make(chan hijackResult, 1), srv: k.srv}
	liveHandles.Add(1)
	h := cgo.NewHandle(w)
	runtime.LockOSThread()
	err := lastError(op, C.goprefork_hijack(k.rc, C.uintptr_t(h)))
	if err == nil && d.switching {
		// Accepted now that the connection is taken over; it cannot fail then.
		C.prefork_response_set_status(k.rc, 101)
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
