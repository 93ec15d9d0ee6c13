package prefork_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// kept returns the connection dial makes, closed when the test ends, every wait on it
// bounded by waitBound.
func kept[C net.Conn](t *testing.T, dial func() (C, error)) C {
	t.Helper()
	conn, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(waitBound))
	return conn
}

// dialPlain dials m's port over TCP.
func dialPlain(m *master) func() (net.Conn, error) {
	return func() (net.Conn, error) {
		return net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(m.port), waitBound)
	}
}

// holdTheLoop holds the child's event loop in a 400 ms /sleep on hold: what the other
// connections send meanwhile is ready in its next turn.
func holdTheLoop(t *testing.T, hold net.Conn) {
	t.Helper()
	if _, err := io.WriteString(hold, "GET /sleep?ms=400 HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // the loop is in the handler
}

// pipeline writes the GETs of paths in one write on a fresh connection to m's child and
// returns the connection and its reader.
func pipeline(t *testing.T, m *master, paths ...string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn := kept(t, dialPlain(m))
	var b strings.Builder
	for _, p := range paths {
		b.WriteString("GET " + p + " HTTP/1.1\r\nHost: x\r\n\r\n")
	}
	if _, err := io.WriteString(conn, b.String()); err != nil {
		t.Fatal(err)
	}
	return conn, bufio.NewReader(conn)
}

func expectResponse(t *testing.T, r *bufio.Reader, status int, body string) *http.Response {
	t.Helper()
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := readBody(t, resp); resp.StatusCode != status || got != body {
		t.Fatalf("%d %s, want %d %s", resp.StatusCode, brief(got), status, brief(body))
	}
	return resp
}

// brief quotes s, or for a long s its length and the runs of equal bytes it is made of.
func brief(s string) string {
	if len(s) <= 80 {
		return strconv.Quote(s)
	}
	var runs []string
	for i := 0; i < len(s); {
		j := i
		for j < len(s) && s[j] == s[i] {
			j++
		}
		runs = append(runs, fmt.Sprintf("%d×%q", j-i, s[i]))
		if len(runs) == 8 {
			runs = append(runs, "...")
			break
		}
		i = j
	}
	return fmt.Sprintf("%d bytes: %s", len(s), strings.Join(runs, " "))
}

// The requests of one read reach Go in one batch (prefork_handler.handle_batch). A response
// the library must finish before the next one (a body stream here) ends its batch in Go, and
// the requests after it come in the next: every response arrives, in order, on a connection
// that stays open, and the library never finds answers after such a response (which it would
// log, closing the connection).
func TestPipelinedRequestsAreAnsweredInOrderAcrossBatches(t *testing.T) {
	m := startMaster(t, envChildren+"=1")
	paths := []string{"/", "/teapot", "/stream?n=3000", "/", "/pieces?sizes=5000,10", "/"}
	for range 3 {
		conn, r := pipeline(t, m, append(paths, paths...)...)
		for range 2 {
			expectResponse(t, r, 200, "hello")
			if resp := expectResponse(t, r, 418, "short and stout"); resp.Header.Get("X-Kind") != "teapot" {
				t.Fatalf("X-Kind %q", resp.Header.Get("X-Kind"))
			}
			expectResponse(t, r, 200, patternString(3000))
			expectResponse(t, r, 200, "hello")
			expectResponse(t, r, 200, strings.Repeat("a", 5000)+strings.Repeat("b", 10))
			expectResponse(t, r, 200, "hello")
		}
		io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		expectResponse(t, r, 200, "hello") // still open
	}
	if strings.Contains(m.transcript(), "handle_batch answered") {
		t.Fatalf("the library dropped answers:\n%s", m.transcript())
	}
}

// Each request of a batch stages its body in its own place's buffer: every body arrives whole
// and alone, whether it fills the buffer exactly, is written in pieces, outgrows it (and goes
// to the library) or is replaced, and whatever the request before it at that place left.
func TestBodiesStagedInOneBatchStayApart(t *testing.T) {
	m := startMaster(t, envChildren+"=1")
	type want struct{ path, body string }
	rep := strings.Repeat
	cases := []want{
		{"/pieces?sizes=13&from=a", rep("a", 13)},
		{"/pieces?sizes=4096&from=c", rep("c", 4096)},
		{"/pieces?sizes=1&from=e", "e"},
		{"/pieces?sizes=4000,200&from=g", rep("g", 4000) + rep("h", 200)},
		{"/pieces?sizes=4095,1&from=i", rep("i", 4095) + "j"},
		{"/pieces?sizes=0&from=k", ""},
		{"/pieces?sizes=17&set=5&from=m", "zzzzz"},
		{"/pieces?sizes=15&from=o", rep("o", 15)},
		{"/pieces?sizes=4097&from=q", rep("q", 4097)},
		{"/pieces?sizes=30,30&from=s", rep("s", 30) + rep("t", 30)},
	}
	var paths []string
	for range 2 {
		for _, c := range cases {
			paths = append(paths, c.path)
		}
	}
	for range 3 {
		_, r := pipeline(t, m, paths...)
		for range 2 {
			for _, c := range cases {
				expectResponse(t, r, 200, c.body)
			}
		}
	}
}

// A panic in the middle of a batch answers that request 500 and closes the connection after
// it; the requests before it are answered as usual.
func TestAPanicEndsItsBatch(t *testing.T) {
	m := startMaster(t, envChildren+"=1")
	conn, r := pipeline(t, m, "/", "/", "/panic", "/", "/")
	expectResponse(t, r, 200, "hello")
	expectResponse(t, r, 200, "hello")
	resp := expectResponse(t, r, 500, "500 Internal Server Error\n")
	if !resp.Close {
		t.Fatal("the 500 does not close the connection")
	}
	conn.SetReadDeadline(time.Now().Add(waitBound))
	if n, err := r.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after the 500: %d bytes, %v; want EOF", n, err)
	}
	if strings.Contains(m.transcript(), "handle_batch answered") {
		t.Fatalf("the library dropped answers:\n%s", m.transcript())
	}
}

// Requests that arrive on several connections while the event loop is held (by a /sleep)
// are ready in the same turn, and the library hands them to Go in one batch: each connection
// gets the answer to its own request, and a panic in one answers that one 500 and closes
// only its connection.
func TestRequestsOfSeveralConnectionsInOneTurnGetTheirOwnAnswers(t *testing.T) {
	m := startMaster(t, envChildren+"=1")
	hold := kept(t, dialPlain(m))
	conns := make([]net.Conn, 6)
	for i := range conns {
		conns[i] = kept(t, dialPlain(m))
	}
	time.Sleep(100 * time.Millisecond) // all accepted
	holdTheLoop(t, hold)
	for i, conn := range conns {
		req := fmt.Sprintf("GET /echo?conn=%d HTTP/1.1\r\nHost: x\r\nX-Test: %d\r\n\r\n", i, i)
		if i == 3 {
			req = "GET /panic HTTP/1.1\r\nHost: x\r\n\r\n"
		}
		if _, err := io.WriteString(conn, req); err != nil {
			t.Fatal(err)
		}
	}
	for i, conn := range conns {
		r := bufio.NewReader(conn)
		if i == 3 {
			if resp := expectResponse(t, r, 500, "500 Internal Server Error\n"); !resp.Close {
				t.Fatal("the 500 does not close its connection")
			}
			continue
		}
		resp := expectResponse(t, r, 200, fmt.Sprintf(
			"method=GET\npath=/echo\nquery=conn=%d\ntarget=/echo?conn=%d\nx-test=%d\nx-missing=true\nheaders=2\nproto=1.1\nbody=\n", i, i, i))
		if resp.Close {
			t.Fatalf("connection %d closed after its answer", i)
		}
	}
	expectResponse(t, bufio.NewReader(hold), 200, "slept")
	if strings.Contains(m.transcript(), "handle_batch answered") {
		t.Fatalf("the library dropped answers:\n%s", m.transcript())
	}
}
