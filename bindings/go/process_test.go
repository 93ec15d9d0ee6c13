package prefork_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// stop sends SIGTERM to the master and checks the clean exit: status 0, nothing left.
func (m *master) stop() {
	m.t.Helper()
	m.signal(syscall.SIGTERM)
	if code := m.wait(); code != 0 {
		m.t.Fatalf("master exited with %d after SIGTERM, want 0\n%s", code, m.transcript())
	}
	m.allGone()
}

func TestServesRequests(t *testing.T) {
	m := startMaster(t, envChildren+"=2")
	if len(m.children) != 2 {
		t.Fatalf("ready line names children %v, want 2", m.children)
	}
	if m.portOf(m.children[1]) != m.port {
		t.Fatalf("children listen on different ports")
	}

	if code, body := get(t, m.url("/")); code != 200 || body != "hello" {
		t.Fatalf("GET / = %d %q, want 200 \"hello\"", code, body)
	}
	code, body := get(t, m.url("/pid"))
	pid, _ := strconv.Atoi(body)
	if code != 200 || !slices.Contains(m.children, pid) {
		t.Fatalf("GET /pid = %d %q, want the pid of a child in %v", code, body, m.children)
	}

	req, _ := http.NewRequest("POST", m.url("/echo?a=1&b=two"), strings.NewReader("the body"))
	req.Header.Set("X-Test", "value")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body = readBody(t, resp)
	want := "method=POST\npath=/echo\nquery=a=1&b=two\ntarget=/echo?a=1&b=two\nx-test=value\n" +
		"x-missing=true\n"
	if resp.StatusCode != 200 || !strings.HasPrefix(body, want) ||
		!strings.Contains(body, "proto=1.1\nbody=the body\n") {
		t.Fatalf("POST /echo = %d\n%s\nwant it to start with\n%s", resp.StatusCode, body, want)
	}
	if got := resp.Header.Get("X-Remote-Set"); got != "true" {
		t.Fatalf("RemoteAddr was empty in the handler (X-Remote-Set %q)", got)
	}

	resp, err = client.Get(m.url("/teapot"))
	if err != nil {
		t.Fatal(err)
	}
	body = readBody(t, resp)
	if resp.StatusCode != 418 || resp.Header.Get("X-Kind") != "teapot" || body != "short and stout" {
		t.Fatalf("GET /teapot = %d %v %q", resp.StatusCode, resp.Header, body)
	}

	if code, body := get(t, m.url("/bad-header")); code != 200 || body != "invalid=true" {
		t.Fatalf("AddHeader(Content-Length) should fail with ErrInvalidArgument: %d %q", code, body)
	}
	if code, _ := get(t, m.url("/nowhere")); code != 404 {
		t.Fatalf("GET /nowhere = %d, want 404", code)
	}
	m.stop()
	// OnChildExit also reports the children stopped at shutdown: drained, exit status 0.
	for _, c := range m.children {
		m.waitLine(regexp.MustCompile(fmt.Sprintf(`^exit pid=%d code=0 signal=0$`, c)))
	}
}

// Bodies up to the binding's staging buffer (4 KiB) are handed to the library after the
// handler; a larger one goes straight to the library, after what was staged.
func TestBodyAcrossTheStagingBuffer(t *testing.T) {
	m := startMaster(t, envChildren+"=1")
	for _, c := range []struct{ query, want string }{
		{"sizes=100,200", strings.Repeat("a", 100) + strings.Repeat("b", 200)},
		{"sizes=4096", strings.Repeat("a", 4096)},
		{"sizes=3000,3000,10", strings.Repeat("a", 3000) + strings.Repeat("b", 3000) + strings.Repeat("c", 10)},
		{"sizes=5000,20", strings.Repeat("a", 5000) + strings.Repeat("b", 20)},
		{"sizes=100&set=7", strings.Repeat("z", 7)},
		{"sizes=3000,3000&set=7", strings.Repeat("z", 7)},
		{"sizes=100&set=5000", strings.Repeat("z", 5000)},
		{"sizes=5000&set=9000", strings.Repeat("z", 9000)},
	} {
		code, body := get(t, m.url("/pieces?"+c.query))
		if code != 200 || body != c.want {
			t.Errorf("GET /pieces?%s = %d, %d bytes, want 200 and %d bytes (%.20q...)",
				c.query, code, len(body), len(c.want), body)
		}
	}
	m.stop()
}

func TestKeepAliveConnection(t *testing.T) {
	m := startMaster(t, envChildren+"=1")
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1}}
	defer c.CloseIdleConnections()
	for i := range 20 {
		resp, err := c.Get(m.url(fmt.Sprintf("/echo?i=%d", i)))
		if err != nil {
			t.Fatalf("request %d on a kept-alive connection: %v", i, err)
		}
		body := readBody(t, resp)
		if !strings.Contains(body, fmt.Sprintf("query=i=%d\n", i)) {
			t.Fatalf("request %d: %q", i, body)
		}
	}
	m.stop()
}

func TestHandlerPanicIs500AndChildKeepsServing(t *testing.T) {
	m := startMaster(t, envChildren+"=1")
	resp, err := client.Get(m.url("/panic"))
	if err != nil {
		t.Fatal(err)
	}
	body := readBody(t, resp)
	if resp.StatusCode != 500 || body != "500 Internal Server Error\n" {
		t.Fatalf("GET /panic = %d %q, want 500 and the binding's body", resp.StatusCode, body)
	}
	for range 3 {
		code, body := get(t, m.url("/pid"))
		if code != 200 || body != strconv.Itoa(m.children[0]) {
			t.Fatalf("after the panic, GET /pid = %d %q, want 200 from the same child %d", code, body, m.children[0])
		}
	}
	if m.has(regexp.MustCompile(`^exit pid=`)) {
		t.Fatalf("a child exited after the handler panicked\n%s", m.transcript())
	}
	m.waitStderr("panic serving GET /panic: boom")
	m.stop()
}

func TestHandlerThreadsRunConcurrently(t *testing.T) {
	const n = 3
	m := startMaster(t, envChildren+"=1", envThreads+"=4")
	var wg sync.WaitGroup
	bodies := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get(m.url(fmt.Sprintf("/together?n=%d", n)))
			if err != nil {
				bodies[i] = err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			bodies[i] = string(b)
		}()
	}
	wg.Wait()
	for i, b := range bodies {
		if b != "together" {
			t.Fatalf("request %d: %q: the handlers did not run at the same time", i, b)
		}
	}
	m.stop()
}

// A Request and Response kept past their handler read empty and refuse writes, also while
// the call they had (on the event loop, the batch place's; with handler threads, one of the
// pool's) serves the next request: /retained reads them from its own handler.
func TestRequestAndResponseAreDeadAfterTheHandler(t *testing.T) {
	for _, mode := range []string{envThreads + "=0", envThreads + "=1"} {
		t.Run(mode, func(t *testing.T) {
			m := startMaster(t, envChildren+"=1", mode)
			for range 3 {
				if code, body := get(t, m.url("/retain")); code != 200 || body != "kept" {
					t.Fatalf("GET /retain = %d %q", code, body)
				}
				if code, body := get(t, m.url("/retained")); code != 200 || body != `method="" state-err=true` {
					t.Fatalf("GET /retained = %d %q, want the old request empty and writes refused", code, body)
				}
			}
			m.stop()
		})
	}
}

func TestKilledChildIsReplaced(t *testing.T) {
	m := startMaster(t, envChildren+"=1")
	old := m.children[0]
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	m.waitLine(regexp.MustCompile(fmt.Sprintf(`^exit pid=%d code=-1 signal=9$`, old)))
	sub := m.waitLine(regexp.MustCompile(fmt.Sprintf(`^recover old=%d new=(\d+)$`, old)))
	replacement, _ := strconv.Atoi(sub[1])
	m.portOf(replacement) // the replacement got the listener and reported ready
	code, body := get(t, m.url("/pid"))
	if code != 200 || body != strconv.Itoa(replacement) {
		t.Fatalf("GET /pid = %d %q, want the replacement %d", code, body, replacement)
	}
	m.stop()
}

func TestSIGHUPReloadsANewGeneration(t *testing.T) {
	m := startMaster(t, envChildren+"=2")
	old := m.children
	m.signal(syscall.SIGHUP)
	sub := m.waitLine(regexp.MustCompile(`^reloaded generation=2 children=(\d+),(\d+)$`))
	for _, s := range sub[1:] {
		pid, _ := strconv.Atoi(s)
		if slices.Contains(old, pid) {
			t.Fatalf("reloaded children %v include an old one of %v", sub[1:], old)
		}
	}
	for _, pid := range old {
		m.waitLine(regexp.MustCompile(fmt.Sprintf(`^exit pid=%d code=0 signal=0$`, pid)))
	}
	code, body := get(t, m.url("/pid"))
	if code != 200 || (body != sub[1] && body != sub[2]) {
		t.Fatalf("GET /pid = %d %q after the reload, want one of %v", code, body, sub[1:])
	}
	code, body = get(t, m.url("/stats"))
	if code != 200 || !strings.Contains(body, `"generation":2,`) ||
		!strings.Contains(body, fmt.Sprintf(`{"pid":%s,`, sub[1])) {
		t.Fatalf("GET /stats = %d %q after the reload to %v", code, body, sub[1:])
	}
	m.stop()
}

func TestSIGUSR2UpgradesToANewMaster(t *testing.T) {
	// The old master leaves the new one to its parent's care when it exits: be the one that
	// reaps it (PR_SET_CHILD_SUBREAPER), as a service manager would.
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, 36, 1, 0); errno != 0 {
		t.Fatalf("PR_SET_CHILD_SUBREAPER: %v", errno)
	}
	m := startMaster(t, envChildren+"=2")
	m.signal(syscall.SIGUSR2)
	sub := m.waitLine(regexp.MustCompile(`^upgraded old=(\d+) new=(\d+)$`))
	newPID, _ := strconv.Atoi(sub[2])
	t.Cleanup(func() {
		if running(newPID) {
			_ = syscall.Kill(newPID, syscall.SIGKILL)
		}
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(newPID, &ws, 0, nil)
	})
	if sub[1] != strconv.Itoa(m.pid) || newPID == m.pid {
		t.Fatalf("OnUpgrade(%s, %s), the old master is %d", sub[1], sub[2], m.pid)
	}
	m.waitLine(regexp.MustCompile(fmt.Sprintf(`^ready pid=%d children=`, newPID)))
	if code := m.wait(); code != 0 {
		t.Fatalf("the old master exited with %d after the upgrade, want 0\n%s", code, m.transcript())
	}
	code, body := get(t, m.url("/pid"))
	if pid, _ := strconv.Atoi(body); code != 200 || slices.Contains(m.children, pid) {
		t.Fatalf("GET /pid = %d %q after the upgrade; the old children were %v", code, body, m.children)
	}
	if err := syscall.Kill(newPID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(newPID, &ws, 0, nil); err != nil || ws.ExitStatus() != 0 {
		t.Fatalf("the new master: %v, exit %d\n%s", err, ws.ExitStatus(), m.transcript())
	}
	m.allGone()
}

func TestSIGTTINAndSIGTTOUScale(t *testing.T) {
	m := startMaster(t, envChildren+"=1")
	m.signal(syscall.SIGTTIN)
	spawn := regexp.MustCompile(`^spawn pid=(\d+)$`)
	added := 0
	m.waitUntil("a second child's spawn line", func() bool {
		for from := 0; ; {
			sub, next := m.find(spawn, from)
			if sub == nil {
				return false
			}
			if pid, _ := strconv.Atoi(sub[1]); pid != m.children[0] {
				added = pid
				return true
			}
			from = next
		}
	})
	m.portOf(added) // it listens
	m.signal(syscall.SIGTTOU)
	m.waitLine(regexp.MustCompile(fmt.Sprintf(`^exit pid=%d code=0 signal=0$`, added)))
	code, body := get(t, m.url("/pid"))
	if code != 200 || body != strconv.Itoa(m.children[0]) {
		t.Fatalf("GET /pid = %d %q, want the remaining child %d", code, body, m.children[0])
	}
	m.stop()
}

func TestOverRecoveryStopsTheMaster(t *testing.T) {
	// With the default rule the kill counts only within RecoverMinUptime of the child's start,
	// a race with this test's pace; the every-exit rule counts it whenever it comes.
	m := startMaster(t, envChildren+"=2", envThreshold+"=0", envEveryExit+"=1")
	if err := syscall.Kill(m.children[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := m.wait(); code != 1 {
		t.Fatalf("master exited with %d, want 1", code)
	}
	m.waitLine(regexp.MustCompile(fmt.Sprintf(`^done pid=%d child=false code=7 over-recovery=true `, m.pid)))
	m.allGone()
}

func TestSIGTERMDrainsInFlightRequests(t *testing.T) {
	m := startMaster(t, envChildren+"=1")
	type result struct {
		code int
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := client.Get(m.url("/sleep?ms=700"))
		if err != nil {
			done <- result{err: err}
			return
		}
		body := readBody(t, resp)
		done <- result{code: resp.StatusCode, body: body}
	}()
	m.waitLine(regexp.MustCompile(`^sleeping pid=`))
	m.signal(syscall.SIGTERM)
	r := <-done
	if r.err != nil || r.code != 200 || r.body != "slept" {
		t.Fatalf("the request in flight at SIGTERM got %d %q %v, want 200 \"slept\"", r.code, r.body, r.err)
	}
	if code := m.wait(); code != 0 {
		t.Fatalf("master exited with %d, want 0", code)
	}
	m.waitLine(regexp.MustCompile(fmt.Sprintf(`^child-exit pid=%d$`, m.children[0])))
	m.allGone()
}

func TestShutdownDelayServesOnWithConnectionClose(t *testing.T) {
	m := startMaster(t, envChildren+"=2", envDelayMS+"=1000")
	if _, got := get(t, m.url("/stopping")); got != "false" {
		t.Fatalf("/stopping before the stop: %q", got)
	}
	m.signal(syscall.SIGTERM)
	asked := time.Now()
	time.Sleep(200 * time.Millisecond)
	resp, err := client.Get(m.url("/stopping"))
	if err != nil {
		t.Fatalf("a request in the shutdown delay: %v", err)
	}
	if body := readBody(t, resp); body != "true" || !resp.Close {
		t.Fatalf("in the delay: %q, Connection: close %t; want \"true\" and a close", body, resp.Close)
	}
	if code := m.wait(); code != 0 {
		t.Fatalf("master exited with %d, want 0", code)
	}
	if took := time.Since(asked); took < time.Second {
		t.Fatalf("the master exited %v after SIGTERM, inside the 1 s delay", took)
	}
	m.allGone()
}

func TestChildrenFollowAKilledMaster(t *testing.T) {
	m := startMaster(t, envChildren+"=2")
	m.signal(syscall.SIGKILL)
	m.wait()
	// A Go master is multi-threaded, so PDEATHSIG's SIGTERM may reach a child before the
	// lifeline's EOF; the library tells that apart from a stop and owes the hook all the same.
	for _, c := range m.children {
		m.waitLine(regexp.MustCompile(fmt.Sprintf(`^master-death pid=%d$`, c)))
		m.waitLine(regexp.MustCompile(fmt.Sprintf(`^done pid=%d child=true code=0 `, c)))
	}
	m.allGone()
}

func TestHookErrorStopsTheMaster(t *testing.T) {
	m := startMaster(t, envChildren+"=2", envFailReady+"=1")
	if code := m.wait(); code != 1 {
		t.Fatalf("master exited with %d, want 1", code)
	}
	sub := m.waitLine(regexp.MustCompile(`^done pid=\d+ child=false code=(\d+) over-recovery=false hook=(\w+) not-ready=(\w+) err=(.*)$`))
	if sub[1] != "8" || sub[2] != "true" || sub[3] != "true" || !strings.Contains(sub[4], "OnMasterReady: not ready on purpose") {
		t.Fatalf("ListenAndServe's error should match ErrHook and the hook's error: %q", sub[0])
	}
	m.allGone()
}

func TestCommandProducerStartsTheChildren(t *testing.T) {
	m := startMaster(t, envChildren+"=2", envProducer+"=1")
	if code, body := get(t, m.url("/produced")); code != 200 || body != "1" {
		t.Fatalf("GET /produced = %d %q: the child was not started by the producer", code, body)
	}
	m.stop()
}

func TestReuseport(t *testing.T) {
	m := startMaster(t, envChildren+"=2", envReuseport+"=1")
	if m.portOf(m.children[1]) != m.port {
		t.Fatalf("reuseport children listen on different ports")
	}
	seen := map[string]bool{}
	for i := 0; i < 50 && len(seen) < 2; i++ {
		_, body := get(t, m.url("/pid"))
		seen[body] = true
	}
	if len(seen) != 2 {
		t.Fatalf("50 connections reached only children %v of %v", seen, m.children)
	}
	m.stop()
}

func TestBodyStream(t *testing.T) {
	m := startMaster(t, envChildren+"=1")
	const n = 100_000
	resp, err := client.Get(m.url(fmt.Sprintf("/stream?n=%d", n)))
	if err != nil {
		t.Fatal(err)
	}
	body := readBody(t, resp)
	if resp.StatusCode != 200 || !slices.Equal(resp.TransferEncoding, []string{"chunked"}) || body != patternString(n) {
		t.Fatalf("GET /stream = %d %v, %d bytes, want 200, chunked, the %d pattern bytes",
			resp.StatusCode, resp.TransferEncoding, len(body), n)
	}
	// A Read that panics truncates that response only.
	if resp, err := client.Get(m.url("/stream-panic")); err == nil {
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Fatalf("a stream whose Read panicked gave a complete body of %d bytes", len(b))
		}
	}
	// Both readers were closed once done with (the first one after its last Read, the
	// second one after its panic), and the child still serves.
	deadline := time.Now().Add(waitBound)
	for {
		code, closed := get(t, m.url("/streams-closed"))
		if code == 200 && closed == "2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("streams closed: %d %q, want 2", code, closed)
		}
		time.Sleep(20 * time.Millisecond)
	}
	m.waitStderr("body stream Read panicked: stream broke")
	if m.has(regexp.MustCompile(`^exit pid=`)) {
		t.Fatalf("a child exited\n%s", m.transcript())
	}
	m.stop()
}

func TestOptionsReachTheChildren(t *testing.T) {
	m := startMaster(t, envChildren+"=1", envMaxBody+"=10")
	for _, c := range []struct {
		body string
		want int
	}{{"0123456789", 200}, {"0123456789A", 413}} {
		resp, err := client.Post(m.url("/echo"), "text/plain", strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		if resp.StatusCode != c.want {
			t.Fatalf("POST of %d bytes with MaxBodySize 10 = %d, want %d", len(c.body), resp.StatusCode, c.want)
		}
	}
	m.stop()
}

func TestProxyProtocolGivesTheClientAndTLVs(t *testing.T) {
	m := startMaster(t, envChildren+"=1", envProxy+"=1")
	// A PROXY protocol version 2 header (TCP over IPv4 from 198.51.100.20:40000) with one TLV
	// of type 0xE0, then a request.
	header := []byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x13")
	header = append(header, 198, 51, 100, 20, 192, 0, 2, 1, 0x9c, 0x40, 0x01, 0xbb)
	header = append(header, 0xE0, 0x00, 0x04, 'v', 'p', 'c', 'e')
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", m.port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET /proxy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
	if _, err := conn.Write(append(header, req...)); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	want := `remote=198.51.100.20:40000 tlv="vpce" found=true`
	if !strings.HasSuffix(string(got), want) {
		t.Fatalf("got %q, want a body %q", got, want)
	}
	// Without a header the connection is closed unanswered.
	status, _ := rawStatus(t, m.port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if status != "" {
		t.Fatalf("a connection without a PROXY header got %q", status)
	}
	m.stop()
}

// rawStatus sends raw bytes and returns the status line received, "" if the server closed the
// connection without one.
func rawStatus(t *testing.T, port int, raw string) (string, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(raw)); err != nil {
		return "", err
	}
	got, err := io.ReadAll(conn)
	line, _, _ := strings.Cut(string(got), "\r\n")
	return line, err
}

// BenchmarkKeepAliveRequest measures a GET through a Go handler in a child on one kept-alive
// connection (net/http's client included). The benchmark harness (bench/, subject ours-go)
// measures the server alone, with wrk and bindings/go/examples/hello.
func BenchmarkKeepAliveRequest(b *testing.B) {
	m := startMaster(b, envChildren+"=1")
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1}}
	defer c.CloseIdleConnections()
	url := m.url("/")
	b.ResetTimer()
	for range b.N {
		resp, err := c.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		if body := readBody(b, resp); body != "hello" {
			b.Fatalf("body %q", body)
		}
	}
	b.StopTimer()
	m.stop()
}

// TestListenersServeTCPAndUnixSockets: Prefork.Listeners adds a Unix socket file (with its
// mode), an abstract one with PROXY protocol, and a second TCP port to ListenAndServe's:
// ListenerAddrs lists them, each request's LocalAddr names its listener, RemoteAddr is
// "unix:" over a Unix socket or the PROXY header's client, and the stop removes the file.
func TestListenersServeTCPAndUnixSockets(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "go.sock")
	name := fmt.Sprintf("goprefork-%d", os.Getpid())
	m := startMaster(t, envChildren+"=2",
		envListeners+"=unix:"+path+";unix:@"+name+"+proxy;127.0.0.1:0")
	line := m.waitLine(regexp.MustCompile(`^listeners (.*)$`))
	addrs := strings.Split(line[1], " ")
	if len(addrs) != 4 || addrs[1] != "unix:"+path || addrs[2] != "unix:@"+name ||
		!strings.HasPrefix(addrs[3], "127.0.0.1:") || addrs[3] == addrs[0] {
		t.Fatalf("ListenerAddrs %q", addrs)
	}
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o660 {
		t.Fatalf("socket file %v, %v", info, err)
	}
	local := func(network, address, preface string) string {
		conn, err := net.DialTimeout(network, address, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "%sGET /local HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", preface)
		got, _ := io.ReadAll(conn)
		_, body, _ := strings.Cut(string(got), "\r\n\r\n")
		return body
	}
	if got, want := local("unix", path, ""), "local=unix:"+path+" remote=unix:"; got != want {
		t.Fatalf("over the socket file: %q, want %q", got, want)
	}
	got := local("unix", "@"+name, "PROXY TCP4 203.0.113.7 127.0.0.1 51234 80\r\n")
	if want := "local=unix:@" + name + " remote=203.0.113.7:51234"; got != want {
		t.Fatalf("over the abstract socket with PROXY: %q, want %q", got, want)
	}
	got = local("tcp", addrs[3], "")
	if !strings.HasPrefix(got, "local="+addrs[3]+" remote=127.0.0.1:") {
		t.Fatalf("over the second TCP port: %q", got)
	}
	m.stop()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the socket file outlived the stop: %v", err)
	}
}
