package prefork_test

// ServeFunc: existing Go servers (net/http, fasthttp) run in the children under libprefork's
// supervisor. fasthttp is a test dependency only: the package itself does not import it.

import (
	"context"
	"errors"
	"fmt"
	"go/build"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"libprefork.dev/prefork"
)

// serveFuncs are the servers the tests run as ServeFunc (GOTEST_PREFORK_SERVE), each
// answering /pid with its pid and /sleep?ms=N after N ms, saying "sleeping" first.
var serveFuncs = map[string]func() func(net.Listener) error{
	"nethttp": func() func(net.Listener) error {
		srv := &http.Server{Handler: http.HandlerFunc(netHTTPHandler), ReadHeaderTimeout: 5 * time.Second}
		serve := prefork.Graceful(srv.Serve, srv.Shutdown)
		return func(ln net.Listener) error {
			// What fasthttp prefork's ServeFunc gets, for servers that look.
			if _, ok := ln.(*net.TCPListener); !ok {
				return fmt.Errorf("ServeFunc got a %T, not a *net.TCPListener", ln)
			}
			return serve(ln)
		}
	},
	// What a program moving from fasthttp prefork would write first: Serve alone, no
	// shutdown. The binding's closing of the listener at the stop still ends it.
	"nethttp-naive": func() func(net.Listener) error {
		srv := &http.Server{Handler: http.HandlerFunc(netHTTPHandler), ReadHeaderTimeout: 5 * time.Second}
		return srv.Serve
	},
	"fasthttp": func() func(net.Listener) error {
		srv := &fasthttp.Server{Handler: fastHTTPHandler, IdleTimeout: 5 * time.Second}
		return prefork.Graceful(srv.Serve, srv.ShutdownWithContext)
	},
}

func netHTTPHandler(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/pid":
		fmt.Fprint(w, os.Getpid())
	case "/sleep":
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		say("sleeping pid=%d", os.Getpid())
		time.Sleep(time.Duration(ms) * time.Millisecond)
		fmt.Fprint(w, "slept")
	default:
		fmt.Fprint(w, "net/http")
	}
}

func fastHTTPHandler(ctx *fasthttp.RequestCtx) {
	switch string(ctx.Path()) {
	case "/pid":
		fmt.Fprint(ctx, os.Getpid())
	case "/sleep":
		ms, _ := strconv.Atoi(string(ctx.QueryArgs().Peek("ms")))
		say("sleeping pid=%d", os.Getpid())
		time.Sleep(time.Duration(ms) * time.Millisecond)
		fmt.Fprint(ctx, "slept")
	default:
		fmt.Fprint(ctx, "fasthttp")
	}
}

// servedBy makes n requests to /pid, each on a new connection, and returns the pids that
// answered.
func servedBy(t *testing.T, m *master, n int) map[int]bool {
	t.Helper()
	pids := map[int]bool{}
	for range n {
		code, body := get(t, m.url("/pid"))
		pid, err := strconv.Atoi(body)
		if code != 200 || err != nil {
			t.Fatalf("GET /pid = %d %q", code, body)
		}
		pids[pid] = true
	}
	return pids
}

func sameSet(got map[int]bool, want []int) bool {
	if len(got) != len(want) {
		return false
	}
	for _, pid := range want {
		if !got[pid] {
			return false
		}
	}
	return true
}

// One master per server kind: requests reach every child (one SO_REUSEPORT socket each), a
// child killed with SIGKILL is replaced and its replacement serves, and SIGTERM with a request
// in flight lets it finish before every child exits 0.
func TestServeFuncUnderTheSupervisor(t *testing.T) {
	for _, kind := range []string{"nethttp", "fasthttp"} {
		t.Run(kind, func(t *testing.T) {
			m := startMaster(t, envServe+"="+kind, envChildren+"=3", envReuseport+"=1")
			if code, body := get(t, m.url("/")); code != 200 || body != strings.ReplaceAll(kind, "nethttp", "net/http") {
				t.Fatalf("GET / = %d %q: not the %s server", code, body, kind)
			}
			if pids := servedBy(t, m, 40); !sameSet(pids, m.children) {
				t.Fatalf("40 connections reached %v, the children are %v", pids, m.children)
			}

			old := m.children[0]
			if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			m.waitLine(regexp.MustCompile(fmt.Sprintf(`^exit pid=%d code=-1 signal=9$`, old)))
			sub := m.waitLine(regexp.MustCompile(fmt.Sprintf(`^recover old=%d new=(\d+)$`, old)))
			replacement, _ := strconv.Atoi(sub[1])
			m.portOf(replacement)
			now := append([]int{replacement}, m.children[1:]...)
			if pids := servedBy(t, m, 40); !sameSet(pids, now) {
				t.Fatalf("after the replacement, 40 connections reached %v, the children are %v", pids, now)
			}

			type result struct {
				code int
				body string
				err  error
			}
			inFlight := make(chan result, 1)
			go func() {
				resp, err := client.Get(m.url("/sleep?ms=700"))
				if err != nil {
					inFlight <- result{err: err}
					return
				}
				inFlight <- result{code: resp.StatusCode, body: readBody(t, resp)}
			}()
			m.waitLine(regexp.MustCompile(`^sleeping pid=\d+$`))
			m.stop()
			r := <-inFlight
			if r.err != nil || r.code != 200 || r.body != "slept" {
				t.Fatalf("the request in flight at SIGTERM got %d %q, %v; want 200 \"slept\"", r.code, r.body, r.err)
			}
			for _, pid := range now {
				m.waitLine(regexp.MustCompile(fmt.Sprintf(`^child-exit pid=%d$`, pid)))
				m.waitLine(regexp.MustCompile(fmt.Sprintf(`^exit pid=%d code=0 signal=0$`, pid)))
			}
		})
	}
}

func TestServeFuncChildrenFollowAKilledMaster(t *testing.T) {
	for _, kind := range []string{"nethttp", "fasthttp"} {
		t.Run(kind, func(t *testing.T) {
			m := startMaster(t, envServe+"="+kind, envChildren+"=2")
			m.signal(syscall.SIGKILL)
			m.wait()
			m.allGone()
			for _, pid := range m.children {
				m.waitLine(regexp.MustCompile(fmt.Sprintf(`^master-death pid=%d$`, pid)))
				m.waitLine(regexp.MustCompile(fmt.Sprintf(`^child-exit pid=%d$`, pid)))
			}
		})
	}
}

// A ServeFunc that never looks at Stopping still stops at once: the binding closes its
// listener, so Serve returns, rather than running on until the master's SIGKILL.
func TestServeFuncIgnoringTheStopStillStops(t *testing.T) {
	m := startMaster(t, envServe+"=nethttp-naive", envChildren+"=1")
	if code, body := get(t, m.url("/")); code != 200 || body != "net/http" {
		t.Fatalf("GET / = %d %q", code, body)
	}
	asked := time.Now()
	m.stop()
	if took := time.Since(asked); took > 2*time.Second {
		t.Fatalf("stopping took %v: the child waited for the grace period (5s)", took)
	}
	m.waitLine(regexp.MustCompile(fmt.Sprintf(`^exit pid=%d code=0 signal=0$`, m.children[0])))
}

// Before any stop, a serve that returns is a failure of the child: its error comes back and
// nothing is shut down.
func TestGracefulReturnsTheErrorOfAServeThatEndsOnItsOwn(t *testing.T) {
	broken := errors.New("accept failed")
	shutdowns := 0
	serve := prefork.Graceful(func(net.Listener) error { return broken },
		func(context.Context) error { shutdowns++; return nil })
	if err := serve(nil); !errors.Is(err, broken) || shutdowns != 0 {
		t.Fatalf("Graceful gave %v after %d shutdowns, want %v and none", err, shutdowns, broken)
	}
}

// The test dependencies stay test dependencies: the package imports the standard library only.
func TestThePackageImportsOnlyTheStandardLibrary(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range pkg.Imports {
		if first, _, _ := strings.Cut(path, "/"); strings.Contains(first, ".") {
			t.Errorf("the package imports %s, a module: only its tests may", path)
		}
	}
}
