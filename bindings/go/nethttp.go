package prefork

// #include "shim.h"
import "C"

// The net/http adapter: an http.Handler (a router such as chi or gorilla/mux, and its
// middleware) answering requests on the library's HTTP engine.

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// HTTPHandler returns a RequestHandler that serves each request with h, as net/http's server
// would: a router and its middleware run unchanged on the library's engine.
//
//	p := prefork.New(prefork.HTTPHandler(router))
//
// h gets an *http.Request with the method, URL (from the request-target, as net/http parses
// it), Proto, Header (canonical names; Host moved to r.Host, as net/http does), Host,
// RemoteAddr, RequestURI, ContentLength and the whole body (the engine has read and
// de-chunked it, up to MaxBodySize, before the handler runs; the body is a copy, so it may be
// read after h returns). r.Context() is canceled when h returns.
//
// The http.ResponseWriter keeps net/http's rules: the header map is sent at WriteHeader or
// the first Write (changes after it are ignored), the status is 200 unless WriteHeader said
// otherwise, and a missing Content-Type is sniffed from the first Write
// (http.DetectContentType). The library sets Content-Length, Transfer-Encoding and Date
// itself: those headers from h are dropped. A status outside 200..599 (1xx included) is not
// sent: 1xx ones are ignored, the others become 500.
//
// What is not supported: HTTP/2 (the engine speaks HTTP/1.1, in clear or under
// ListenAndServeTLS, where r.TLS stays nil: the engine ends TLS below the handler); Hijack (the
// writer is no http.Hijacker, so http.ResponseController reports http.ErrNotSupported, and
// WebSocket upgrades fail); streaming. The writer is an http.Flusher, so handlers that flush
// work, but the response (what Flush committed and what follows) reaches the client when h
// returns: the engine sends a response once its handler is done, and a body stream it pulls
// must never wait, so server-sent events and long polling do not stream. r.Context() is not
// canceled when the client goes away; trailers are not sent; request bodies above
// MaxBodySize get 413 before h runs.
//
// h runs where a RequestHandler runs: on the child's event loop, one request at a time, or
// with HandlerThreads > 0 concurrently on that many threads (needed for handlers that
// block).
func HTTPHandler(h http.Handler) RequestHandler {
	return func(req *Request, resp *Response) {
		x := new(httpExchange) // the writer, the URL, the body reader and small slices at once
		x.w = responseWriter{resp: resp, header: make(http.Header)}
		var r http.Request // copied by WithContext, so it stays on the stack
		if err := x.fill(&r, req); err != nil {
			resp.SetStatus(http.StatusBadRequest)
			resp.AddHeader("Content-Type", "text/plain; charset=utf-8")
			resp.AddHeader("Connection", "close")
			resp.WriteString("400 Bad Request: " + err.Error() + "\n")
			return
		}
		defer x.ctx.end()
		h.ServeHTTP(&x.w, r.WithContext(&x.ctx))
		x.w.commit(http.StatusOK)
	}
}

// handlerCtx is r.Context(): never done until the handler returns, canceled then (as
// net/http's, whose request context also ends when its handler returns). It is part of the
// request's httpExchange, where context.WithCancel would cost two allocations and its cancel
// a third of the adapter's work for a small request. Contexts derived from it (a middleware's
// WithTimeout) are told through AfterFunc, without a goroutine.
type handlerCtx struct {
	mu    sync.Mutex
	ended bool
	done  chan struct{} // made by the first Done
	after []func()      // AfterFunc's functions still to run
}

func (c *handlerCtx) Deadline() (time.Time, bool) { return time.Time{}, false }

func (c *handlerCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
		if c.ended {
			close(c.done)
		}
	}
	return c.done
}

func (c *handlerCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return context.Canceled
	}
	return nil
}

func (*handlerCtx) Value(any) any { return nil }

func (c *handlerCtx) String() string { return "prefork.HTTPHandler request context" }

// AfterFunc runs f in its own goroutine once the context ends (at once if it has), as
// context.AfterFunc does; the stop function unregisters it.
func (c *handlerCtx) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		go f()
		return func() bool { return false }
	}
	i := len(c.after)
	c.after = append(c.after, f)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.ended || c.after[i] == nil {
			return false
		}
		c.after[i] = nil
		return true
	}
}

// end cancels the context: when the handler returned.
func (c *handlerCtx) end() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ended = true
	if c.done != nil {
		close(c.done)
	}
	for _, f := range c.after {
		if f != nil {
			go f()
		}
	}
	c.after = nil
}

// httpExchange is what one request of the adapter allocates in one piece.
type httpExchange struct {
	w    responseWriter
	ctx  handlerCtx
	url  url.URL
	body bodyReader
	// Backing for the header map's value slices when the request has few fields.
	values [12]string
}

// bodyReader is the request body: a copy of the engine's (the handler may read it after it
// returns), and a no-op Close.
type bodyReader struct{ bytes.Reader }

func (*bodyReader) Close() error { return nil }

// fill makes r the net/http request for req: one cgo call for the headers, body and version
// (goprefork_details), and one string holding the target and every header value.
func (x *httpExchange) fill(r *http.Request, req *Request) error {
	d := req.details()
	target := req.Target()
	headers := unsafe.Slice(d.headers, 2*min(int(d.header_count), int(d.headers_cap)))
	field := func(i int) (name, value []byte) {
		if i < int(d.headers_cap) {
			return view(headers[2*i]), view(headers[2*i+1])
		}
		return req.headerAt(i)
	}
	n := int(d.header_count)
	size := len(target)
	for i := range n {
		_, v := field(i)
		size += len(v)
	}
	// The target and the values, copied once; every string below is a piece of it.
	text := make([]byte, 0, size)
	text = append(text, target...)
	for i := range n {
		_, v := field(i)
		text = append(text, v...)
	}
	all := unsafe.String(unsafe.SliceData(text), len(text))
	targetStr, at := all[:len(target)], len(target)

	u, err := x.parseTarget(targetStr)
	if err != nil {
		return fmt.Errorf("request-target %q: %w", targetStr, err)
	}
	header := make(http.Header, n)
	values := x.values[:0]
	if n > len(x.values) {
		values = make([]string, 0, n)
	}
	host := u.Host // as net/http: an absolute-form target's authority wins over Host
	minor := int(max(d.minor_version, 0))
	closing := minor == 0 // HTTP/1.0 closes unless it asks for keep-alive
	for i := range n {
		name, v := field(i)
		value := all[at : at+len(v)]
		at += len(v)
		key := canonicalKey(name)
		switch key {
		case "Host":
			if host == "" {
				host = value
			}
			continue // moved to r.Host, as net/http does
		case "Connection":
			if minor == 0 && hasToken(value, "keep-alive") {
				closing = false
			} else if minor > 0 && hasToken(value, "close") {
				closing = true
			}
		}
		if vs, ok := header[key]; ok {
			header[key] = append(vs, value)
			continue
		}
		values = append(values, value)
		header[key] = values[len(values)-1 : len(values) : len(values)]
	}
	*r = http.Request{
		Method:     methodString(req.Method()),
		URL:        u,
		Proto:      protos[min(minor, 1)],
		ProtoMajor: 1,
		ProtoMinor: minor,
		Header:     header,
		Host:       host,
		RemoteAddr: remoteAddr(req, d),
		RequestURI: targetStr,
		Body:       http.NoBody,
		Close:      closing,
	}
	if body := view(d.body); len(body) > 0 {
		x.body.Reset(bytes.Clone(body))
		r.Body, r.ContentLength = &x.body, int64(len(body))
	}
	return nil
}

var protos = [2]string{"HTTP/1.0", "HTTP/1.1"}

// remoteAddr is req.RemoteAddr() from the address goprefork_details read.
func remoteAddr(req *Request, d *C.goprefork_exchange) string {
	if d.peer_ok == 0 {
		return ""
	}
	return req.live().peerText() // live: details filled d
}

// parseTarget is url.ParseRequestURI(target), without its allocation for the common
// origin-form target whose path needs no unescaping and no escaping (see pathAsIs).
func (x *httpExchange) parseTarget(target string) (*url.URL, error) {
	if len(target) == 0 || target[0] != '/' {
		return url.ParseRequestURI(target)
	}
	path, query, hasQuery := strings.Cut(target, "?")
	if !pathAsIs(path) {
		return url.ParseRequestURI(target)
	}
	x.url = url.URL{Path: path, RawQuery: query}
	// As url.Parse: a lone "?" at the end is ForceQuery; "a??" keeps its "?" in the query.
	if hasQuery && query == "" {
		x.url.ForceQuery = true
	}
	return &x.url, nil
}

// pathAsIs reports whether url.ParseRequestURI takes path as it is: no %-escape to decode, and
// nothing its EscapedPath would escape (so RawPath stays empty).
func pathAsIs(path string) bool {
	for i := 0; i < len(path); i++ {
		if !pathChar[path[i]] {
			return false
		}
	}
	return true
}

var pathChar = func() (t [256]bool) {
	for _, b := range []byte("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~$&+,/:;=@") {
		t[b] = true
	}
	return t
}()

// methodString is the method as a string, without an allocation for the common ones.
func methodString(m []byte) string {
	switch string(m) { // no allocation: the compiler compares the bytes
	case "GET":
		return http.MethodGet
	case "POST":
		return http.MethodPost
	case "HEAD":
		return http.MethodHead
	case "PUT":
		return http.MethodPut
	case "DELETE":
		return http.MethodDelete
	case "PATCH":
		return http.MethodPatch
	case "OPTIONS":
		return http.MethodOptions
	}
	return string(m)
}

// canonicalKey is textproto.CanonicalMIMEHeaderKey(string(name)), as net/http keys its
// header map, without an allocation for common names.
func canonicalKey(name []byte) string {
	var lower [32]byte
	if len(name) <= len(lower) {
		for i, b := range name {
			if 'A' <= b && b <= 'Z' {
				b += 'a' - 'A'
			}
			lower[i] = b
		}
		if k := commonHeader(string(lower[:len(name)])); k != "" {
			return k
		}
	}
	return textproto.CanonicalMIMEHeaderKey(string(name))
}

// commonHeader is the canonical form of a common header name in lower case, or "". A switch
// (no allocation, no hashing) rather than a map.
func commonHeader(lower string) string {
	switch lower {
	case "accept":
		return "Accept"
	case "accept-charset":
		return "Accept-Charset"
	case "accept-encoding":
		return "Accept-Encoding"
	case "accept-language":
		return "Accept-Language"
	case "authorization":
		return "Authorization"
	case "cache-control":
		return "Cache-Control"
	case "connection":
		return "Connection"
	case "content-encoding":
		return "Content-Encoding"
	case "content-length":
		return "Content-Length"
	case "content-type":
		return "Content-Type"
	case "cookie":
		return "Cookie"
	case "dnt":
		return "Dnt"
	case "expect":
		return "Expect"
	case "forwarded":
		return "Forwarded"
	case "host":
		return "Host"
	case "if-match":
		return "If-Match"
	case "if-modified-since":
		return "If-Modified-Since"
	case "if-none-match":
		return "If-None-Match"
	case "if-range":
		return "If-Range"
	case "if-unmodified-since":
		return "If-Unmodified-Since"
	case "origin":
		return "Origin"
	case "pragma":
		return "Pragma"
	case "priority":
		return "Priority"
	case "range":
		return "Range"
	case "referer":
		return "Referer"
	case "sec-ch-ua":
		return "Sec-Ch-Ua"
	case "sec-ch-ua-mobile":
		return "Sec-Ch-Ua-Mobile"
	case "sec-ch-ua-platform":
		return "Sec-Ch-Ua-Platform"
	case "sec-fetch-dest":
		return "Sec-Fetch-Dest"
	case "sec-fetch-mode":
		return "Sec-Fetch-Mode"
	case "sec-fetch-site":
		return "Sec-Fetch-Site"
	case "sec-fetch-user":
		return "Sec-Fetch-User"
	case "te":
		return "Te"
	case "traceparent":
		return "Traceparent"
	case "upgrade":
		return "Upgrade"
	case "upgrade-insecure-requests":
		return "Upgrade-Insecure-Requests"
	case "user-agent":
		return "User-Agent"
	case "via":
		return "Via"
	case "x-forwarded-for":
		return "X-Forwarded-For"
	case "x-forwarded-host":
		return "X-Forwarded-Host"
	case "x-forwarded-proto":
		return "X-Forwarded-Proto"
	case "x-real-ip":
		return "X-Real-Ip"
	case "x-request-id":
		return "X-Request-Id"
	case "x-requested-with":
		return "X-Requested-With"
	}
	return ""
}

// hasToken reports whether the comma-separated list v holds token, compared
// case-insensitively (as net/http reads Connection).
func hasToken(v, token string) bool {
	for v != "" {
		var t string
		t, v, _ = strings.Cut(v, ",")
		if strings.EqualFold(strings.TrimSpace(t), token) {
			return true
		}
	}
	return false
}

// responseWriter is the http.ResponseWriter (and http.Flusher) over a Response.
type responseWriter struct {
	resp      *Response
	header    http.Header
	committed bool
	sniffed   bool
}

func (w *responseWriter) Header() http.Header { return w.header }

func (w *responseWriter) WriteHeader(code int) {
	if code < 200 && code >= 100 {
		return // informational: the engine sends none
	}
	w.commit(code)
}

// commit sends the status and the header map once: net/http ignores later changes too.
func (w *responseWriter) commit(code int) {
	if w.committed {
		return
	}
	w.committed = true
	if w.resp.SetStatus(code) != nil {
		w.resp.SetStatus(http.StatusInternalServerError)
	}
	for name, values := range w.header {
		if ownedByTheEngine(name) {
			continue
		}
		for _, v := range values {
			w.resp.AddHeader(name, v) // a field the engine refuses (a bad name) is left out
		}
	}
}

// ownedByTheEngine names the headers the library writes itself (any case).
func ownedByTheEngine(name string) bool {
	switch len(name) {
	case 4:
		return strings.EqualFold(name, "Date")
	case 14:
		return strings.EqualFold(name, "Content-Length")
	case 17:
		return strings.EqualFold(name, "Transfer-Encoding")
	}
	return false
}

func (w *responseWriter) Write(b []byte) (int, error) {
	if !w.committed && !w.sniffed && len(b) > 0 {
		w.sniffed = true
		// net/http sniffs only when the handler did not set the header, even to nothing.
		if _, set := w.header["Content-Type"]; !set {
			w.header.Set("Content-Type", http.DetectContentType(b))
		}
	}
	w.commit(http.StatusOK)
	return w.resp.Write(b)
}

func (w *responseWriter) WriteString(s string) (int, error) {
	return w.Write(stringBytes(s))
}

// Flush commits the status and headers; the body goes out when the handler returns (see
// HTTPHandler).
func (w *responseWriter) Flush() {
	w.commit(http.StatusOK)
}
