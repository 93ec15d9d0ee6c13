package prefork_test

// Deferred responses and hijacked connections: the handler returns at once and a goroutine
// keeps the Response, completing it later (Complete) or taking its connection over (Hijack),
// here for a WebSocket echo served with github.com/coder/websocket.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"libprefork.dev/prefork"
)

// deferReply serves /defer?ms=N: a goroutine answers after N ms. With &twice=1 it reports
// what a second Complete and a Hijack of a completed Response return, on stdout.
func deferReply(req *prefork.Request, resp *prefork.Response) {
	q, _ := url.ParseQuery(req.QueryString())
	ms, _ := strconv.Atoi(q.Get("ms"))
	twice := q.Get("twice") == "1"
	resp.WriteString("deferred ") // staged before Defer: it moves with the response
	if err := resp.Defer(); err != nil {
		resp.SetStatus(500)
		return
	}
	inHandler := resp.Defer()
	_, hijackErr := (&prefork.Response{}).Hijack()
	go func() {
		time.Sleep(time.Duration(ms) * time.Millisecond)
		fmt.Fprintf(resp, "%d ms", ms)
		if err := resp.Complete(); err != nil {
			say("complete failed: %v", err)
		}
		if twice {
			again := resp.Complete()
			_, hijacked := resp.Hijack()
			_, writeErr := resp.WriteString("late")
			say("defer-misuse again=%t hijack=%t write=%t undeferred-hijack=%t defer-twice=%t",
				errors.Is(again, prefork.ErrState), errors.Is(hijacked, prefork.ErrState),
				errors.Is(writeErr, prefork.ErrState), errors.Is(hijackErr, prefork.ErrState),
				errors.Is(inHandler, prefork.ErrState))
		}
	}()
}

// upgradeWriter is the http.ResponseWriter and http.Hijacker a WebSocket library needs, over
// a deferred Response.
type upgradeWriter struct {
	resp   *prefork.Response
	header http.Header
	status int
	done   bool
}

func (w *upgradeWriter) Header() http.Header { return w.header }

func (w *upgradeWriter) WriteHeader(code int) { w.status = code }

func (w *upgradeWriter) Write(b []byte) (int, error) { return w.resp.Write(b) }

// head hands the status and the fields to the Response.
func (w *upgradeWriter) head() {
	for name, values := range w.header {
		for _, v := range values {
			w.resp.AddHeader(name, v)
		}
	}
	if w.status != 0 {
		w.resp.SetStatus(w.status)
	}
}

func (w *upgradeWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.head()
	w.done = true
	conn, err := w.resp.Hijack()
	if err != nil {
		return nil, nil, err
	}
	return conn, bufio.NewReadWriter(bufio.NewReader(conn), bufio.NewWriter(conn)), nil
}

// serveWebSocket serves /ws: a WebSocket echo of every message, text or binary, until the
// client closes.
func serveWebSocket(req *prefork.Request, resp *prefork.Response) {
	r := &http.Request{
		Method:     req.MethodString(),
		URL:        &url.URL{Path: req.PathString(), RawQuery: req.QueryString()},
		Proto:      fmt.Sprintf("HTTP/1.%d", req.ProtoMinor()),
		ProtoMajor: 1,
		ProtoMinor: req.ProtoMinor(),
		Header:     req.Headers(),
		Host:       req.HeaderString("Host"),
		RequestURI: req.TargetString(),
	}
	if err := resp.Defer(); err != nil {
		resp.SetStatus(500)
		return
	}
	go func() {
		w := &upgradeWriter{resp: resp, header: http.Header{}}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			say("ws accept failed: %v", err)
			if !w.done {
				w.head()
				resp.Complete()
			}
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(1 << 20)
		ctx := context.Background()
		for {
			typ, msg, err := c.Read(ctx)
			if err != nil {
				say("ws closed: %d (%v)", websocket.CloseStatus(err), err)
				return
			}
			if err := c.Write(ctx, typ, msg); err != nil {
				return
			}
		}
	}()
}

// deferStaged serves /deferstaged: the handler stages a status, fields and a body, as a
// handler that makes no call into C does (with long=1 a field too long to stage goes to the
// library at once between them), then defers; a goroutine adds a field and more body, and
// with status=N sets the status again, then completes. What was staged must reach the
// client, ahead of what the goroutine added.
func deferStaged(req *prefork.Request, resp *prefork.Response) {
	q, _ := url.ParseQuery(req.QueryString())
	resp.SetStatus(202)
	resp.AddHeader("Content-Type", "text/x-staged")
	if q.Get("long") == "1" {
		resp.AddHeader("X-Long", strings.Repeat("v", 1500))
	}
	resp.AddHeader("X-Staged", "1")
	resp.WriteString("staged ")
	if err := resp.Defer(); err != nil {
		resp.SetStatus(500)
		return
	}
	status, _ := strconv.Atoi(q.Get("status"))
	go func() {
		if err := resp.AddHeader("X-Deferred", "2"); err != nil {
			say("deferstaged: AddHeader: %v", err)
		}
		if status != 0 {
			resp.SetStatus(status)
		}
		resp.WriteString("deferred")
		if err := resp.Complete(); err != nil {
			say("deferstaged: Complete: %v", err)
		}
	}()
}

// upgradeStaged serves /upgradestaged: the handler stages fields (the Upgrade field among
// them) and a status, then defers; a goroutine adds a field, sets 101 and hijacks, then
// echoes every line the client sends. The staged fields must be in the 101's head, in order.
func upgradeStaged(req *prefork.Request, resp *prefork.Response) {
	resp.SetStatus(200) // replaced by the 101
	resp.AddHeader("X-Staged", "1")
	resp.AddHeader("Upgrade", "line-echo")
	if err := resp.Defer(); err != nil {
		resp.SetStatus(500)
		return
	}
	go func() {
		resp.AddHeader("X-Deferred", "2")
		resp.SetStatus(101)
		conn, err := resp.Hijack()
		if err != nil {
			say("upgradestaged: Hijack: %v", err)
			return
		}
		defer conn.Close()
		r := bufio.NewReader(conn)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			io.WriteString(conn, "echo "+line)
		}
	}()
}

// A deferred Response sends what the handler staged before Defer (the status, the fields in
// their order, the body) ahead of what its goroutine adds; on the event loop, where the
// fields are staged in the buffer kept across requests, and on handler threads.
func TestDeferredResponsesSendWhatWasStaged(t *testing.T) {
	for _, threads := range []string{"0", "2"} {
		t.Run("threads="+threads, func(t *testing.T) {
			m := startMaster(t, envChildren+"=1", envThreads+"="+threads)
			addr := "127.0.0.1:" + strconv.Itoa(m.port)
			long := "X-Long: " + strings.Repeat("v", 1500)
			for _, c := range []struct {
				query  string
				status int
				fields []string
			}{
				{"", 202, []string{"Content-Type: text/x-staged", "X-Staged: 1", "X-Deferred: 2"}},
				{"status=203", 203, []string{"Content-Type: text/x-staged", "X-Staged: 1", "X-Deferred: 2"}},
				{"long=1", 202, []string{"Content-Type: text/x-staged", long, "X-Staged: 1", "X-Deferred: 2"}},
				{"", 202, []string{"Content-Type: text/x-staged", "X-Staged: 1", "X-Deferred: 2"}},
			} {
				got := rawGet(t, addr, "/deferstaged?"+c.query)
				if got.status != c.status || strings.Join(got.fields, "\n") != strings.Join(c.fields, "\n") || got.body != "staged deferred" {
					t.Errorf("GET /deferstaged?%s = %d %q %q, want %d %q %q",
						c.query, got.status, got.fields, got.body, c.status, c.fields, "staged deferred")
				}
				// An ordinary request after it stages its own fields, not the deferred one's.
				if got := rawGet(t, addr, "/constfields?n=2"); strings.Join(got.fields, ",") != "Content-Type: text/plain,X-One: 1" {
					t.Errorf("GET /constfields?n=2 after /deferstaged = %q", got.fields)
				}
			}
			m.stop()
		})
	}
}

// A hijacked Response's 101 carries the fields the handler staged before Defer, in order,
// ahead of those its goroutine added; the connection is then the goroutine's.
func TestHijackSendsWhatWasStaged(t *testing.T) {
	for _, threads := range []string{"0", "2"} {
		t.Run("threads="+threads, func(t *testing.T) {
			m := startMaster(t, envChildren+"=1", envThreads+"="+threads)
			conn := kept(t, dialPlain(m))
			fmt.Fprintf(conn, "GET /upgradestaged HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: line-echo\r\n\r\n")
			r := bufio.NewReader(conn)
			status, err := r.ReadString('\n')
			if err != nil || !strings.HasPrefix(status, "HTTP/1.1 101 ") {
				t.Fatalf("status line %q: %v", status, err)
			}
			var fields []string
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					t.Fatalf("the head: %v", err)
				}
				line = strings.TrimRight(line, "\r\n")
				if line == "" {
					break
				}
				if name, _, _ := strings.Cut(line, ":"); !strings.EqualFold(name, "Date") && !strings.EqualFold(name, "Connection") {
					fields = append(fields, line)
				}
			}
			if want := []string{"X-Staged: 1", "Upgrade: line-echo", "X-Deferred: 2"}; strings.Join(fields, "\n") != strings.Join(want, "\n") {
				t.Errorf("the 101's fields = %q, want %q", fields, want)
			}
			for _, line := range []string{"one\n", "two\n"} {
				io.WriteString(conn, line)
				if got, err := r.ReadString('\n'); err != nil || got != "echo "+line {
					t.Fatalf("echo of %q = %q: %v", line, got, err)
				}
			}
			conn.Close()
			if code, body := get(t, m.url("/")); code != 200 || body != "hello" {
				t.Fatalf("GET / after the hijack = %d %q", code, body)
			}
			m.stop()
		})
	}
}

func TestDeferredResponses(t *testing.T) {
	m := startMaster(t, envChildren+"=1")
	code, body := get(t, m.url("/defer?ms=50"))
	if code != 200 || body != "deferred 50 ms" {
		t.Fatalf("GET /defer?ms=50 = %d %q", code, body)
	}

	// Concurrent on the child's one event loop: together, not one after the other.
	const n = 200
	t0 := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(m.url("/defer?ms=100"))
			if err != nil {
				errs <- err
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "deferred 100 ms" {
				errs <- fmt.Errorf("body %q", b)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if took := time.Since(t0); took > 5*time.Second {
		t.Fatalf("%d concurrent /defer?ms=100 took %v", n, took)
	} else {
		t.Logf("%d concurrent /defer?ms=100 took %v", n, took)
	}

	// Pipelined: the request after the deferred one waits for it.
	conn := kept(t, dialPlain(m))
	fmt.Fprintf(conn, "GET /defer?ms=150 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	for _, want := range []string{"deferred 150 ms", "hello"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != want {
			t.Fatalf("pipelined response %q, want %q", b, want)
		}
	}

	get(t, m.url("/defer?ms=0&twice=1"))
	m.waitLine(regexp.MustCompile(`^defer-misuse again=true hijack=true write=true undeferred-hijack=true defer-twice=true$`))
	m.stop()
}

func TestWebSocketEchoOverAHijackedConnection(t *testing.T) {
	m := startMaster(t, envChildren+"=1")
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws://127.0.0.1:"+strconv.Itoa(m.port)+"/ws", nil)
	if err != nil {
		t.Fatalf("dial: %v (response %+v)", err, resp)
	}
	if resp.StatusCode != 101 || !strings.EqualFold(resp.Header.Get("Connection"), "Upgrade") {
		t.Fatalf("handshake: %d %v", resp.StatusCode, resp.Header)
	}
	c.SetReadLimit(1 << 20)
	messages := []struct {
		typ  websocket.MessageType
		data []byte
	}{
		{websocket.MessageText, []byte("hello, websocket")},
		{websocket.MessageBinary, []byte{0, 1, 2, 0xfe, 0xff}},
		{websocket.MessageText, []byte(strings.Repeat("large ", 20000))},
		{websocket.MessageBinary, make([]byte, 70000)},
	}
	for _, msg := range messages {
		if err := c.Write(ctx, msg.typ, msg.data); err != nil {
			t.Fatal(err)
		}
		typ, got, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if typ != msg.typ || string(got) != string(msg.data) {
			t.Fatalf("echo of a %v message of %d bytes: a %v message of %d bytes", msg.typ, len(msg.data), typ, len(got))
		}
	}
	if err := c.Close(websocket.StatusNormalClosure, "done"); err != nil {
		t.Fatalf("clean close: %v", err)
	}
	m.waitLine(regexp.MustCompile(`^ws closed: 1000 `))
	// The child serves on after handing a connection over.
	if code, body := get(t, m.url("/")); code != 200 || body != "hello" {
		t.Fatalf("GET / after the WebSocket = %d %q", code, body)
	}
	m.stop()
}

func TestDeferredResponsesFromHandlerThreads(t *testing.T) {
	m := startMaster(t, envChildren+"=1", envThreads+"=2")
	for _, ms := range []int{0, 50} {
		code, body := get(t, m.url(fmt.Sprintf("/defer?ms=%d", ms)))
		if want := fmt.Sprintf("deferred %d ms", ms); code != 200 || body != want {
			t.Fatalf("GET /defer?ms=%d = %d %q, want %q", ms, code, body, want)
		}
	}
	m.stop()
}
