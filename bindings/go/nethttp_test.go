package prefork_test

// HTTPHandler: a chi router (github.com/go-chi/chi/v5, a test dependency only) and its
// middleware on the library's engine, unchanged.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/go-chi/chi/v5"
)

// lastCtx is the context of the previous /ctx request, to show that it ends with its handler.
var lastCtx atomic.Pointer[context.Context]

func chiRouter() http.Handler {
	r := chi.NewRouter()
	r.Use(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Middleware", "ran")
			next.ServeHTTP(w, r)
		})
	})
	r.Get("/users/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "id=%s q=%s host=%s proto=%s uri=%s agent=%s host-header=%q remote-set=%t",
			chi.URLParam(r, "id"), r.URL.Query().Get("q"), r.Host, r.Proto, r.RequestURI,
			r.Header.Get("User-Agent"), r.Header.Get("Host"), r.RemoteAddr != "")
	})
	r.Route("/api", func(r chi.Router) {
		r.Get("/items/{n:[0-9]+}", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "item %s", chi.URLParam(r, "n"))
		})
	})
	r.Post("/echo", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
		w.Header().Set("Content-Length", "1") // the engine's: dropped
		w.WriteHeader(http.StatusCreated)
		w.Header().Set("X-Late", "after WriteHeader") // net/http ignores it too
		fmt.Fprintf(w, "%d:%s", r.ContentLength, body)
	})
	r.Get("/html", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "<html><body>sniffed</body></html>")
	})
	r.Get("/flush", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "a")
		w.(http.Flusher).Flush()
		io.WriteString(w, "b")
		rc := http.NewResponseController(w)
		fmt.Fprintf(w, " flush-err=%v", rc.Flush())
		_, _, err := rc.Hijack()
		fmt.Fprintf(w, " hijack-unsupported=%t", errors.Is(err, http.ErrNotSupported))
	})
	r.Get("/status", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusContinue) // informational: not sent
		w.WriteHeader(http.StatusTeapot)
		w.WriteHeader(http.StatusOK) // superfluous: ignored, as net/http does
	})
	r.Get("/ctx", func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		prev := lastCtx.Swap(&ctx)
		fmt.Fprintf(w, "live=%t previous-ended=%t", ctx.Err() == nil, prev != nil && (*prev).Err() != nil)
	})
	return r
}

func TestHTTPHandlerRunsAChiRouter(t *testing.T) {
	m := startMaster(t, envChi+"=1", envChildren+"=1")
	do := func(method, path, body string, header ...string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, m.url(path), strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		return resp, readBody(t, resp)
	}
	expect := func(what string, resp *http.Response, body string, code int, want string, headers ...string) {
		t.Helper()
		if resp.StatusCode != code || body != want {
			t.Errorf("%s: %d %q, want %d %q", what, resp.StatusCode, body, code, want)
		}
		for i := 0; i+1 < len(headers); i += 2 {
			if got := resp.Header.Get(headers[i]); got != headers[i+1] {
				t.Errorf("%s: header %s = %q, want %q (all: %v)", what, headers[i], got, headers[i+1], resp.Header)
			}
		}
	}

	resp, body := do("GET", "/users/42?q=a%20b", "", "User-Agent", "prefork-test")
	expect("a route with a parameter", resp, body, 200,
		fmt.Sprintf("id=42 q=a b host=127.0.0.1:%d proto=HTTP/1.1 uri=/users/42?q=a%%20b agent=prefork-test host-header=\"\" remote-set=true", m.port),
		"X-Middleware", "ran", "Content-Type", "text/plain")
	resp, body = do("GET", "/api/items/7", "")
	expect("a subrouter with a pattern", resp, body, 200, "item 7", "Content-Type", "text/plain; charset=utf-8")
	resp, body = do("GET", "/api/items/seven", "")
	expect("a pattern that does not match", resp, body, 404, "404 page not found\n")
	resp, body = do("POST", "/echo", "the body", "Content-Type", "application/x-test")
	expect("a body and a status", resp, body, 201, "8:the body", "Content-Type", "application/x-test",
		"Content-Length", "10", "X-Late", "")
	resp, body = do("DELETE", "/echo", "")
	expect("a method the route lacks", resp, body, 405, "")
	resp, body = do("GET", "/html", "")
	expect("a sniffed Content-Type", resp, body, 200, "<html><body>sniffed</body></html>",
		"Content-Type", "text/html; charset=utf-8")
	resp, body = do("GET", "/flush", "")
	expect("Flush and the ResponseController", resp, body, 200, "ab flush-err=<nil> hijack-unsupported=true")
	resp, body = do("GET", "/status", "")
	expect("WriteHeader", resp, body, 418, "")
	do("GET", "/ctx", "")
	resp, body = do("GET", "/ctx", "")
	expect("the request context", resp, body, 200, "live=true previous-ended=true")
	// An absolute-form target's authority is r.Host, as in net/http.
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", m.port))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(conn, "GET http://example.test/users/9 HTTP/1.0\r\nHost: elsewhere.test\r\n\r\n")
	raw, _ := io.ReadAll(conn)
	conn.Close()
	if !strings.Contains(string(raw), "id=9 q= host=example.test proto=HTTP/1.0 uri=http://example.test/users/9 ") {
		t.Errorf("absolute-form request: %q", raw)
	}
	if !t.Failed() {
		m.stop()
	}
	if m.has(regexp.MustCompile(`^exit pid=\d+ code=-1`)) {
		t.Fatalf("a child died\n%s", m.transcript())
	}
}
