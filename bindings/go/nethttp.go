package prefork

// The net/http adapter: an http.Handler (a router such as chi or gorilla/mux, and its
// middleware) answering requests on the library's HTTP engine.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
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
// What is not supported: HTTP/2 and TLS (the engine speaks HTTP/1.1 in clear); Hijack (the
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
		r, err := newHTTPRequest(req)
		if err != nil {
			resp.SetStatus(http.StatusBadRequest)
			resp.AddHeader("Content-Type", "text/plain; charset=utf-8")
			resp.AddHeader("Connection", "close")
			resp.WriteString("400 Bad Request: " + err.Error() + "\n")
			return
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		w := &responseWriter{resp: resp, header: make(http.Header)}
		h.ServeHTTP(w, r.WithContext(ctx))
		w.commit(http.StatusOK)
	}
}

func newHTTPRequest(req *Request) (*http.Request, error) {
	target := req.TargetString()
	u, err := url.ParseRequestURI(target)
	if err != nil {
		return nil, fmt.Errorf("request-target %q: %w", target, err)
	}
	header := req.Headers()
	// As net/http: an absolute-form target's authority wins over the Host header.
	host := u.Host
	if host == "" {
		host = header.Get("Host")
	}
	delete(header, "Host")
	minor := req.ProtoMinor()
	r := &http.Request{
		Method:        req.MethodString(),
		URL:           u,
		Proto:         fmt.Sprintf("HTTP/1.%d", minor),
		ProtoMajor:    1,
		ProtoMinor:    minor,
		Header:        header,
		Host:          host,
		RemoteAddr:    req.RemoteAddr(),
		RequestURI:    target,
		Body:          http.NoBody,
		ContentLength: 0,
		Close:         wantsClose(header, minor),
	}
	if body := req.BodyCopy(); len(body) > 0 {
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
	}
	return r, nil
}

// wantsClose is net/http's Request.Close: the client asked to close after this request.
func wantsClose(h http.Header, minor int) bool {
	conn := strings.ToLower(strings.Join(h.Values("Connection"), ","))
	if minor == 0 {
		return !strings.Contains(conn, "keep-alive")
	}
	return strings.Contains(conn, "close")
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

// ownedByTheEngine names the headers the library writes itself.
func ownedByTheEngine(name string) bool {
	switch http.CanonicalHeaderKey(name) {
	case "Content-Length", "Transfer-Encoding", "Date":
		return true
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
