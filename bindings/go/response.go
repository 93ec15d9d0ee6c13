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
	c   *C.prefork_response
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
	if len(s) == 0 {
		return nil
	}
	return (*C.char)(unsafe.Pointer(unsafe.StringData(s)))
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
	if err := lastError("Write", C.goprefork_write(r.c, bytesPtr(p), C.size_t(len(p)))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteString appends s to the body (io.StringWriter).
func (r *Response) WriteString(s string) (int, error) {
	if err := r.ended("WriteString"); err != nil {
		return 0, err
	}
	err := lastError("WriteString", C.goprefork_write(r.c, stringPtr(s), C.size_t(len(s))))
	if err != nil {
		return 0, err
	}
	return len(s), nil
}

// SetBody replaces the body with b.
func (r *Response) SetBody(b []byte) error {
	if err := r.ended("SetBody"); err != nil {
		return err
	}
	return lastError("SetBody", C.goprefork_set_body(r.c, bytesPtr(b), C.size_t(len(b))))
}

// SetBodyString replaces the body with s.
func (r *Response) SetBodyString(s string) error {
	if err := r.ended("SetBodyString"); err != nil {
		return err
	}
	return lastError("SetBodyString", C.goprefork_set_body(r.c, stringPtr(s), C.size_t(len(s))))
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
	return nil
}
