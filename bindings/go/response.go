package prefork

// #include "shim.h"
import "C"

import (
	"io"
	"runtime/cgo"
	"unsafe"
)

// Response is the response to the request being handled, valid only while the
// RequestHandler runs. It starts as status 200 with no headers and an empty body; the library
// adds Content-Length, Date and Connection. Every method copies its arguments. After the
// handler returns, the methods fail with ErrState.
type Response struct {
	c *C.prefork_response
	// The C callback's staging buffer: the body goes there while it fits, and the callback
	// hands it to the library after the handler. Once it does not fit (or after
	// SetBodyStream), direct is set and every body call goes to the library, in order.
	x      *C.goprefork_exchange
	direct bool
	srv    *server // for the log lines of a body stream
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
	return lastError("SetStatus", C.prefork_response_set_status(r.c, C.int(code)))
}

// AddHeader adds a header field. The name must be an HTTP token and the value hold no control
// character but tab. Content-Length, Transfer-Encoding and Date belong to the library and are
// refused; "Connection: close" closes the connection after this response.
func (r *Response) AddHeader(name, value string) error {
	if err := r.ended("AddHeader"); err != nil {
		return err
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
	r.direct = true
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
	if !r.direct {
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
	r.x.stage_len, r.direct = 0, true
	return nil
}
