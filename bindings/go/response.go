package prefork

// #include "shim.h"
import "C"

import (
	"encoding/binary"
	"io"
	"runtime/cgo"
	"strings"
	"unsafe"
)

// Response is the response to the request being handled, valid only while the
// RequestHandler runs. It starts as status 200 with no headers and an empty body; the library
// adds Content-Length, Date and Connection. Every method copies its arguments. After the
// handler returns, the methods fail with ErrState.
type Response struct {
	c *C.prefork_response
	// n is the number of fields of srv.replay this response staged, or -1 when it does not
	// stage its fields in srv.replay's buffer.
	n int
	// The C callback's staging buffers: the status, the header fields and the body go there
	// while they fit, and the callback hands them to the library after the handler (shim.c's
	// apply), so that a handler crosses into C not once. A field that does not fit, or that
	// the library might refuse, goes to the library at once, after the staged ones; a body
	// that does not fit (or a body stream) sets x.direct, and from then on every body call
	// goes to the library, after what was staged.
	x   *C.goprefork_exchange
	srv *server // for the log lines of a body stream
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
	return &Error{Op: op, Code: CodeState, Message: "the response was used after its handler returned"}
}

// SetStatus sets the status code, 200 until set. It fails with ErrInvalidArgument, leaving
// the status unchanged, outside 200..599 (interim 1xx responses are the library's).
func (r *Response) SetStatus(code int) error {
	if err := r.ended("SetStatus"); err != nil {
		return err
	}
	if code < 200 || code > 599 {
		return invalid("SetStatus", "status %d is outside 200..599", code)
	}
	r.x.status = C.int(code) // the library's range too: applying it cannot fail
	return nil
}

// AddHeader adds a header field. The name must be an HTTP token and the value hold no control
// character but tab. Content-Length, Transfer-Encoding and Date belong to the library and are
// refused; "Connection: close" closes the connection after this response.
func (r *Response) AddHeader(name, value string) error {
	x := r.x
	if x == nil {
		return r.ended("AddHeader")
	}
	rp := r.srv.replay
	if r.n >= 0 && r.n < len(rp.fields) {
		if f := &rp.fields[r.n]; sameString(f.name, name) && sameString(f.value, value) {
			x.fields_len = C.size_t(f.end) // staged already, by the request before
			r.n++
			return nil
		}
	}
	at, need := int(x.fields_len), 4+len(name)+len(value)
	if need <= int(x.fields_cap)-at && stageable(name, value) {
		f := unsafe.Slice((*byte)(unsafe.Pointer(x.fields)), int(x.fields_cap))[at : at+need]
		binary.LittleEndian.PutUint32(f, uint32(len(name))|uint32(len(value))<<16)
		copy(f[4+copy(f[4:], name):], value)
		x.fields_len = C.size_t(at + need)
		if r.n >= 0 {
			// What follows in the buffer is overwritten from here on.
			rp.fields = append(rp.fields[:r.n], replayField{name, value, at + need})
			r.n++
		}
		return nil
	}
	return r.addHeaderDirect(name, value)
}

// addHeaderDirect adds the field to the library's response at once, after the staged ones,
// with the library's verdict on it.
func (r *Response) addHeaderDirect(name, value string) error {
	if r.x.fields_len > 0 {
		C.goprefork_flush_fields(r.c, r.x) // the fields keep their order
	}
	r.n = -1 // the buffer is no longer what replay says
	return lastError("AddHeader", C.prefork_response_add_header(r.c,
		stringPtr(name), C.size_t(len(name)), stringPtr(value), C.size_t(len(value))))
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
	x := r.x
	if x != nil && x.direct == 0 && len(p) <= int(x.stage_cap-x.stage_len) {
		stage := unsafe.Slice((*byte)(unsafe.Pointer(x.stage)), int(x.stage_cap))
		x.stage_len += C.size_t(copy(stage[x.stage_len:], p))
		return len(p), nil
	}
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
	if x.direct == 0 && len(b) <= int(x.stage_cap-x.stage_len) {
		stage := unsafe.Slice((*byte)(unsafe.Pointer(x.stage)), int(x.stage_cap))
		x.stage_len += C.size_t(copy(stage[x.stage_len:], b))
		return nil
	}
	x.direct = 1
	if n := x.stage_len; n > 0 {
		x.stage_len = 0
		if err := lastError(op, C.goprefork_write(r.c, x.stage, n)); err != nil {
			return err
		}
	}
	return lastError(op, C.goprefork_write(r.c, bytesPtr(b), C.size_t(len(b))))
}

// setBody replaces the body with b.
func (r *Response) setBody(op string, b []byte) error {
	r.x.stage_len = 0
	if r.x.direct == 0 {
		// Nothing reached the library yet: the staged bytes were the whole body.
		return r.write(op, b)
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
	if rc := C.goprefork_set_body_stream(r.c, C.uintptr_t(h)); rc != C.PREFORK_OK {
		deleteHandle(h)
		return lastError("SetBodyStream", rc)
	}
	// The stream replaced the buffered body; later body calls are the library's to ignore.
	r.x.stage_len, r.x.direct = 0, 1
	return nil
}
