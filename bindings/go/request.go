package prefork

// #include "shim.h"
import "C"

import (
	"net/http"
	"strconv"
	"unsafe"
)

// Request is the request being handled, valid only while the RequestHandler runs.
//
// The methods returning []byte are zero-copy views of the library's buffers: read-only, and
// valid only until the handler returns (the memory is then reused for the next request).
// Copy what must outlive the handler with the *String and *Copy methods, or bytes.Clone.
// After the handler returns, every method returns empty values.
type Request struct {
	k *call // the request's call, while it names this Request
}

// live is the request's call while the handler runs, else nil.
func (r *Request) live() *call {
	if k := r.k; k != nil && k.req == r {
		return k
	}
	return nil
}

// creq is the library's request while the handler runs, else NULL, for which the library's
// accessors return empty values.
func (r *Request) creq() *C.prefork_request {
	if k := r.live(); k != nil {
		return k.c
	}
	return nil
}

// line is the exchange holding the request line, read by the C callback (no cgo call for its
// accessors): an empty one once the handler returned.
func (r *Request) line() *C.goprefork_exchange {
	if k := r.live(); k != nil {
		return k.x
	}
	return &noLine
}

var noLine C.goprefork_exchange

// view turns a borrowed prefork_str into a slice over the same C memory (cap == len, so an
// append copies instead of writing past the view).
func view(s C.prefork_str) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(s.ptr)), int(s.len))
}

// Method is the method as received, e.g. "GET" (a view, valid only in the handler).
func (r *Request) Method() []byte { return view(r.line().method) }

// MethodString is a copy of Method.
func (r *Request) MethodString() string { return string(r.Method()) }

// Target is the request-target as received: "/path?query", "http://host/path" or "*"
// (a view, valid only in the handler).
func (r *Request) Target() []byte { return view(r.line().target) }

// TargetString is a copy of Target.
func (r *Request) TargetString() string { return string(r.Target()) }

// Path is the target's path, without the query, not percent-decoded (a view, valid only in
// the handler).
func (r *Request) Path() []byte { return view(r.line().path) }

// PathString is a copy of Path.
func (r *Request) PathString() string { return string(r.Path()) }

// Query is the part of the target after "?", without it; empty when there is none; not
// percent-decoded (a view, valid only in the handler).
func (r *Request) Query() []byte { return view(r.line().query) }

// QueryString is a copy of Query.
func (r *Request) QueryString() string { return string(r.Query()) }

// Body is the whole request body, de-chunked (a view, valid only in the handler).
func (r *Request) Body() []byte { return view(C.prefork_request_body(r.creq())) }

// BodyCopy is a copy of Body, or nil when the body is empty.
func (r *Request) BodyCopy() []byte {
	b := r.Body()
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

// ProtoMinor is 1 for HTTP/1.1 and 0 for HTTP/1.0.
func (r *Request) ProtoMinor() int {
	return max(int(C.prefork_request_minor_version(r.creq())), 0)
}

// Header is the first value of the named header (compared case-insensitively), or nil when
// the request has no such header (a view, valid only in the handler).
func (r *Request) Header(name string) []byte {
	var v C.prefork_str
	// The name's bytes are only read during the call.
	if !C.prefork_request_header(r.creq(), stringPtr(name), C.size_t(len(name)), &v) {
		return nil
	}
	return view(v)
}

// HeaderString is a copy of Header ("" when the header is absent).
func (r *Request) HeaderString(name string) string { return string(r.Header(name)) }

// VisitHeaders calls f with each header field in the order received, names as received
// (views, valid only in the handler).
func (r *Request) VisitHeaders(f func(name, value []byte)) {
	c := r.creq()
	n := C.prefork_request_header_count(c)
	for i := C.size_t(0); i < n; i++ {
		var name, value C.prefork_str
		if C.prefork_request_header_at(c, i, &name, &value) {
			f(view(name), view(value))
		}
	}
}

// details is the exchange with its header views, body and version filled in (one cgo call).
func (r *Request) details() *C.goprefork_exchange {
	k := r.live()
	if k == nil {
		return &noLine
	}
	C.goprefork_details(k.c, k.x)
	return k.x
}

// headerAt is the header field at i, in the order received (views, valid only in the handler).
func (r *Request) headerAt(i int) (name, value []byte) {
	var n, v C.prefork_str
	if !C.prefork_request_header_at(r.creq(), C.size_t(i), &n, &v) {
		return nil, nil
	}
	return view(n), view(v)
}

// Headers is a copy of every header field, keyed by canonical name as net/http does.
func (r *Request) Headers() http.Header {
	h := make(http.Header, int(C.prefork_request_header_count(r.creq())))
	r.VisitHeaders(func(name, value []byte) {
		h.Add(string(name), string(value))
	})
	return h
}

// RemoteAddr is the client's address, "203.0.113.7:51234" or "[2001:db8::1]:51234"; "unix:"
// on a Unix-socket listener; "" when it is unknown. With PROXY protocol on for the listener,
// the client's address from the connection's header, over a Unix socket too (the balancer's
// own address for a header that names no client, such as a health check's).
func (r *Request) RemoteAddr() string {
	k := r.live()
	if k == nil {
		return ""
	}
	if C.goprefork_peer(k.c, k.x) == 0 {
		// No IP address: the library's text, "unix:" for a Unix socket's peer.
		if C.goprefork_peer_text(k.c, k.x) == 0 {
			return ""
		}
		return C.GoString(&k.x.peer_text[0])
	}
	return k.peerText()
}

// LocalAddr is the address of the listener that accepted the connection, as ListenerAddrs
// writes it ("0.0.0.0:8080" for a listener on every interface, "unix:/run/app.sock"): which
// of the server's listeners the request came in on.
func (r *Request) LocalAddr() string {
	var buf [C.PREFORK_ADDR_STRLEN]C.char
	if C.prefork_request_local_addr(r.creq(), &buf[0], C.size_t(len(buf))) != C.PREFORK_OK {
		return ""
	}
	return C.GoString(&buf[0])
}

// peerText is the text of the address in k.x (peer_ok set): for IPv4 formatted here, else the
// library's; on the event loop the last one is kept, so that the requests of a keep-alive
// connection share one string.
func (k *call) peerText() string {
	x := k.x
	ip := unsafe.Slice((*byte)(unsafe.Pointer(&x.peer_ip[0])), int(x.peer_ip_len))
	port := uint16(x.peer_port)
	last := k.srv.peer
	if last != nil && last.text != "" && last.port == port && string(last.ip[:last.n]) == string(ip) {
		return last.text
	}
	var text string
	if len(ip) == 4 {
		var b [len("255.255.255.255:65535")]byte
		t := strconv.AppendUint(b[:0], uint64(ip[0]), 10)
		for _, o := range ip[1:] {
			t = strconv.AppendUint(append(t, '.'), uint64(o), 10)
		}
		text = string(strconv.AppendUint(append(t, ':'), uint64(port), 10))
	} else if C.goprefork_peer_text(k.c, x) != 0 {
		text = C.GoString(&x.peer_text[0]) // IPv6, with its scope as the library writes it
	} else {
		return ""
	}
	if last != nil {
		last.n = copy(last.ip[:], ip)
		last.port, last.text = port, text
	}
	return text
}

// peerCache is the last client address a server on the event loop formatted.
type peerCache struct {
	ip   [C.PREFORK_IP_BYTES]byte
	n    int
	port uint16
	text string
}

// ProxyTLV is the value of the first TLV of type typ (0x02 authority, 0x05 unique id, 0xE0 to
// 0xEF an application's) in the connection's PROXY protocol version 2 header, and whether
// there is one: false without Prefork.ProxyProtocol or with a version 1 header. The value is
// a view, valid only in the handler.
func (r *Request) ProxyTLV(typ byte) ([]byte, bool) {
	var value C.prefork_str
	if !C.prefork_request_proxy_tlv(r.creq(), C.uint8_t(typ), &value) {
		return nil, false
	}
	return view(value), true
}
