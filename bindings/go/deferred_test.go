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
	conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(m.port), waitBound)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(waitBound))
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
