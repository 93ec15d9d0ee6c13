package prefork_test

// Tests where the test process itself is the master, as in a real program: its children are
// this test binary re-executed, which TestMain turns into the server role.

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"libprefork.dev/prefork"
)

func TestIsChildIsFalseInTheTestProcess(t *testing.T) {
	if prefork.IsChild() {
		t.Fatal("IsChild() is true in a process started by go test")
	}
	if v := prefork.Version(); !strings.Contains(v, ".") {
		t.Fatalf("Version() = %q", v)
	}
}

func mustNotHandle(*prefork.Request, *prefork.Response) {
	panic("the master never handles requests")
}

// freePort finds a port nobody listens on, for the tests that cannot read a child's port.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func checkNoHandles(t *testing.T) {
	t.Helper()
	if n := prefork.LiveHandles(); n != 0 {
		t.Fatalf("%d cgo handles were not released", n)
	}
}

type lineLogger struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineLogger) Printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *lineLogger) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

func TestInProcessMasterHooksLoggerAndShutdown(t *testing.T) {
	port := freePort(t)
	p := prefork.New(mustNotHandle)
	p.Children = 2
	logger := &lineLogger{}
	p.Logger = logger
	ready := make(chan []int, 1)
	var spawned []int
	p.OnChildSpawn = func(pid int) error { spawned = append(spawned, pid); return nil }
	p.OnMasterReady = func(pids []int) error { ready <- pids; return nil }

	served := make(chan error, 1)
	go func() { served <- p.ListenAndServe("127.0.0.1:" + strconv.Itoa(port)) }()
	var pids []int
	select {
	case pids = <-ready:
	case err := <-served:
		t.Fatalf("ListenAndServe returned before ready: %v", err)
	case <-time.After(waitBound):
		p.Shutdown()
		t.Fatalf("not ready within %v", waitBound)
	}
	if len(pids) != 2 {
		t.Fatalf("OnMasterReady got %v, want 2 pids", pids)
	}

	if err := p.ListenAndServe("127.0.0.1:0"); !errors.Is(err, prefork.ErrState) {
		t.Errorf("a second ListenAndServe while serving returned %v, want ErrState", err)
	}
	code, body := get(t, "http://127.0.0.1:"+strconv.Itoa(port)+"/pid")
	pid, _ := strconv.Atoi(body)
	if code != 200 || (pid != pids[0] && pid != pids[1]) {
		t.Errorf("GET /pid = %d %q, want a child of %v", code, body, pids)
	}

	p.Shutdown()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("ListenAndServe after Shutdown returned %v, want nil", err)
		}
	case <-time.After(waitBound):
		t.Fatalf("ListenAndServe still runs %v after Shutdown", waitBound)
	}
	if len(spawned) != 2 || spawned[0] != pids[0] || spawned[1] != pids[1] {
		t.Errorf("OnChildSpawn saw %v, OnMasterReady %v", spawned, pids)
	}
	for _, pid := range pids {
		// The library reaps its children before ListenAndServe returns.
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("child %d still exists after ListenAndServe returned (kill: %v)", pid, err)
		}
	}
	if text := logger.text(); !strings.Contains(text, "INFO") || !strings.Contains(text, strconv.Itoa(pids[0])) {
		t.Errorf("the Logger did not get the library's lines:\n%s", text)
	}
	checkNoHandles(t)
}

func TestBindErrorIsErrBind(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := prefork.New(mustNotHandle)
	p.Children = 1
	err = p.ListenAndServe(ln.Addr().String())
	var perr *prefork.Error
	if !errors.Is(err, prefork.ErrBind) || !errors.As(err, &perr) || perr.Code != prefork.CodeBind || perr.Message == "" {
		t.Fatalf("ListenAndServe on a busy port returned %#v, want an *Error with CodeBind and a message", err)
	}
	if errors.Is(err, prefork.ErrOverRecovery) {
		t.Fatalf("%v matches ErrOverRecovery too", err)
	}
	// The OS's reason comes as a number: in use, not (say) a privileged port.
	if !errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, syscall.EACCES) || perr.Errno != syscall.EADDRINUSE {
		t.Fatalf("ListenAndServe on a busy port returned Errno %d (%v), want EADDRINUSE", perr.Errno, err)
	}
	// An address that cannot be resolved is a bind error too ("could not be resolved or bound"),
	// with no OS error behind it.
	err = p.ListenAndServe("no port here")
	if !errors.Is(err, prefork.ErrBind) || !strings.Contains(err.Error(), `"no port here"`) {
		t.Fatalf("a malformed address returned %v, want ErrBind naming the address", err)
	}
	if errors.As(err, &perr); perr.Errno != 0 {
		t.Fatalf("a malformed address returned Errno %d, want 0", perr.Errno)
	}
	// TEST-NET-1 (RFC 5737) is no local address: bind(2) refuses it without sending anything.
	other := prefork.New(mustNotHandle)
	other.Children = 1
	if err := other.ListenAndServe("192.0.2.1:0"); !errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Fatalf("binding a foreign address returned %v, want EADDRNOTAVAIL", err)
	}
	checkNoHandles(t)
}

func TestInvalidOptionsAreRefused(t *testing.T) {
	cases := []struct {
		name string
		set  func(p *prefork.Prefork)
		want string // in the message
	}{
		{"negative backlog", func(p *prefork.Prefork) { p.Backlog = -1 }, "Backlog"},
		{"negative timeout", func(p *prefork.Prefork) { p.IdleTimeout = -time.Second }, "IdleTimeout"},
		{"unknown network", func(p *prefork.Prefork) { p.Network = "udp" }, "udp"},
		{"too many children", func(p *prefork.Prefork) { p.Children = 5000 }, "5000"},
		{"request line above head", func(p *prefork.Prefork) { p.MaxRequestLine, p.MaxHeadSize = 4096, 1024 }, "max_request_line"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := prefork.New(mustNotHandle)
			p.Children = 1
			c.set(p)
			err := p.ListenAndServe("127.0.0.1:0")
			if !errors.Is(err, prefork.ErrInvalidArgument) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want ErrInvalidArgument mentioning %q", err, c.want)
			}
		})
	}
	checkNoHandles(t)
}

func TestMissingHandlerIsRefused(t *testing.T) {
	var p prefork.Prefork
	if err := p.ListenAndServe("127.0.0.1:0"); !errors.Is(err, prefork.ErrInvalidArgument) {
		t.Fatalf("a Prefork without New returned %v, want ErrInvalidArgument", err)
	}
}

// Serve mode has no TLS: refused before anything starts, with no certificate read.
func TestTLSWithServeFuncIsErrState(t *testing.T) {
	p := prefork.New(func(*prefork.Request, *prefork.Response) {})
	p.ServeFunc = func(ln net.Listener) error { return ln.Close() }
	err := p.ListenAndServeTLS("127.0.0.1:0", "/nonexistent/key.pem", "/nonexistent/cert.pem")
	if !errors.Is(err, prefork.ErrState) || !strings.Contains(err.Error(), "serve mode does not support TLS") {
		t.Fatalf("ListenAndServeTLS with a ServeFunc returned %v, want ErrState naming serve mode", err)
	}
}
