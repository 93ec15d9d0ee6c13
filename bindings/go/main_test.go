package prefork_test

// The test binary is also the server under test: TestMain runs the server role when the
// environment asks for it (a master started by a test) or when the process is a prefork child
// (the library re-executes this binary with PREFORK_CHILD=1), as fasthttp's prefork_test.go
// re-executes its own test binary. The server prints one line per event on stdout, which the
// tests read.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"libprefork.dev/prefork"
)

// Environment of the server role.
const (
	envServer    = "GOTEST_PREFORK_SERVER"    // "1": run the server role (master)
	envAddr      = "GOTEST_PREFORK_ADDR"      // listen address
	envChildren  = "GOTEST_PREFORK_CHILDREN"  // Children
	envThreshold = "GOTEST_PREFORK_THRESHOLD" // RecoverThreshold
	envThreads   = "GOTEST_PREFORK_THREADS"   // HandlerThreads
	envReuseport = "GOTEST_PREFORK_REUSEPORT" // "1": Reuseport
	envFailReady = "GOTEST_PREFORK_FAILREADY" // "1": OnMasterReady returns errNotReady
	envProducer  = "GOTEST_PREFORK_PRODUCER"  // "1": children come from a CommandProducer
	envProduced  = "GOTEST_PREFORK_PRODUCED"  // set by that producer in the children
	envMaxBody   = "GOTEST_PREFORK_MAXBODY"   // MaxBodySize
	envEveryExit = "GOTEST_PREFORK_EVERYEXIT" // "1": RecoverEveryExit
	envServe     = "GOTEST_PREFORK_SERVE"     // a ServeFunc instead of the engine: see serveFuncs
	envChi       = "GOTEST_PREFORK_CHI"       // "1": the handler is HTTPHandler(chiRouter())
	envNetwork   = "GOTEST_PREFORK_NETWORK"   // Network
	envProxy     = "GOTEST_PREFORK_PROXY"     // "1": ProxyProtocol
	envTLSCert   = "GOTEST_PREFORK_TLS_CERT"  // serve TLS with this certificate file...
	envTLSKey    = "GOTEST_PREFORK_TLS_KEY"   // ...and this key file
	envTLSEmbed  = "GOTEST_PREFORK_TLS_EMBED" // "1": read them and use ListenAndServeTLSEmbed
	envTLSExtra  = "GOTEST_PREFORK_TLS_EXTRA" // "CERT:KEY" added with AppendCert first
	envListeners = "GOTEST_PREFORK_LISTENERS" // ";"-separated Listeners ("+proxy": PROXY on)
	envDelayMS   = "GOTEST_PREFORK_DELAY_MS"  // ShutdownDelay, in milliseconds
)

var errNotReady = errors.New("not ready on purpose")

func TestMain(m *testing.M) {
	if os.Getenv(envServer) == "1" || prefork.IsChild() {
		os.Exit(serve())
	}
	os.Exit(m.Run())
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// say prints one event line for the test that started the master (a single write, so lines
// of several processes never interleave). Children of an in-process master stay quiet: their
// stdout is go test's.
func say(format string, args ...any) {
	if os.Getenv(envServer) == "1" {
		fmt.Fprintf(os.Stdout, format+"\n", args...)
	}
}

func serve() int {
	handler := handle
	if os.Getenv(envChi) == "1" {
		handler = prefork.HTTPHandler(chiRouter())
	}
	p := prefork.New(handler)
	p.Children = envInt(envChildren, 2)
	p.RecoverThreshold = envInt(envThreshold, prefork.DefaultRecoverThreshold)
	p.HandlerThreads = envInt(envThreads, 0)
	p.MaxBodySize = envInt(envMaxBody, 0)
	p.Reuseport = os.Getenv(envReuseport) == "1"
	if n := os.Getenv(envNetwork); n != "" {
		p.Network = n
	}
	p.RecoverEveryExit = os.Getenv(envEveryExit) == "1"
	p.ProxyProtocol = os.Getenv(envProxy) == "1"
	for _, a := range strings.Split(os.Getenv(envListeners), ";") {
		if a == "" {
			continue
		}
		l := prefork.Listener{Addr: a, UnixMode: 0o660}
		if addr, ok := strings.CutSuffix(a, "+proxy"); ok {
			l = prefork.Listener{Addr: addr, ProxyProtocol: prefork.ListenerProxyOn}
		}
		if !strings.HasPrefix(l.Addr, "unix:/") {
			l.UnixMode = 0
		}
		p.Listeners = append(p.Listeners, l)
	}
	p.ShutdownGracePeriod = 5 * time.Second
	p.ShutdownDelay = time.Duration(envInt(envDelayMS, 0)) * time.Millisecond
	p.RecoverBackoffMax = -1 // replace a killed child at once
	p.OnChildSpawn = func(pid int) error { say("spawn pid=%d", pid); return nil }
	p.OnChildExit = func(pid, code int, sig syscall.Signal) {
		say("exit pid=%d code=%d signal=%d", pid, code, int(sig))
	}
	p.OnChildRecover = func(oldPID, newPID int) error {
		say("recover old=%d new=%d", oldPID, newPID)
		return nil
	}
	p.OnMasterReady = func(pids []int) error {
		s := make([]string, len(pids))
		for i, pid := range pids {
			s[i] = strconv.Itoa(pid)
		}
		say("master-addr %s", prefork.LocalAddr())
		say("listeners %s", strings.Join(prefork.ListenerAddrs(), " "))
		say("ready pid=%d children=%s", os.Getpid(), strings.Join(s, ","))
		if os.Getenv(envFailReady) == "1" {
			return errNotReady
		}
		return nil
	}
	p.OnReload = func(generation uint64, pids []int) error {
		s := make([]string, len(pids))
		for i, pid := range pids {
			s[i] = strconv.Itoa(pid)
		}
		say("reloaded generation=%d children=%s", generation, strings.Join(s, ","))
		return nil
	}
	p.OnUpgrade = func(oldPID, newPID int) { say("upgraded old=%d new=%d", oldPID, newPID) }
	p.OnReloadFailed = func(generation uint64, reason string) {
		say("reload-failed generation=%d reason=%s", generation, reason)
	}
	p.InitChild = func() error {
		// How the tests find a server bound to port 0.
		_, port, err := net.SplitHostPort(prefork.LocalAddr())
		if err != nil {
			return err
		}
		say("child pid=%d port=%s", os.Getpid(), port)
		return nil
	}
	p.ExitChild = func() { say("child-exit pid=%d", os.Getpid()) }
	p.OnMasterDeath = func() { say("master-death pid=%d", os.Getpid()) }
	if os.Getenv(envProducer) == "1" {
		p.CommandProducer = func(files []*os.File) (*exec.Cmd, error) {
			cmd, err := prefork.ChildCommand(files)
			if err != nil {
				return nil, err
			}
			cmd.Env = append(cmd.Env, envProduced+"=1")
			return cmd, cmd.Start()
		}
	}
	if kind := os.Getenv(envServe); kind != "" {
		p.ServeFunc = serveFuncs[kind]()
	}
	addr := os.Getenv(envAddr)
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	err := listen(p, addr)
	var perr *prefork.Error
	code := 0
	if errors.As(err, &perr) {
		code = int(perr.Code)
	}
	say("done pid=%d child=%t code=%d over-recovery=%t hook=%t not-ready=%t err=%v",
		os.Getpid(), prefork.IsChild(), code, errors.Is(err, prefork.ErrOverRecovery),
		errors.Is(err, prefork.ErrHook), errors.Is(err, errNotReady), err)
	if err != nil {
		return 1
	}
	return 0
}

// listen serves plain HTTP, or TLS when the environment names a certificate.
func listen(p *prefork.Prefork, addr string) error {
	cert, key := os.Getenv(envTLSCert), os.Getenv(envTLSKey)
	if cert == "" {
		return p.ListenAndServe(addr)
	}
	if extra := os.Getenv(envTLSExtra); extra != "" {
		c, k, _ := strings.Cut(extra, ":")
		_ = p.AppendCert(c, k)
	}
	var err error
	if os.Getenv(envTLSEmbed) == "1" {
		certData, _ := os.ReadFile(cert)
		keyData, _ := os.ReadFile(key)
		err = p.ListenAndServeTLSEmbed(addr, certData, keyData)
	} else {
		// fasthttp's order: the key first.
		err = p.ListenAndServeTLS(addr, key, cert)
	}
	say("tls-done err-tls=%t", errors.Is(err, prefork.ErrTLS))
	return err
}

// What /retain keeps, to show that a Request or Response used after its handler returned
// reads as empty and refuses writes instead of touching freed memory.
var (
	retainedReq  atomic.Pointer[prefork.Request]
	retainedResp atomic.Pointer[prefork.Response]
)

// barrier makes /together requests wait for each other: only concurrent handler threads can
// all get through.
var barrier struct {
	sync.Mutex
	arrived int
	all     chan struct{}
}

func handle(req *prefork.Request, resp *prefork.Response) {
	switch req.PathString() {
	case "/":
		resp.AddHeader("Content-Type", "text/plain")
		resp.WriteString("hello")
	case "/pid":
		resp.WriteString(strconv.Itoa(os.Getpid()))
	case "/stats":
		if s, err := prefork.StatsJSON(); err != nil {
			resp.SetStatus(503)
			resp.WriteString(err.Error())
		} else {
			resp.WriteString(s)
		}
	case "/echo":
		fmt.Fprintf(resp, "method=%s\npath=%s\nquery=%s\ntarget=%s\nx-test=%s\nx-missing=%t\nheaders=%d\nproto=1.%d\nbody=%s\n",
			req.Method(), req.Path(), req.Query(), req.Target(), req.Header("x-TEST"),
			req.Header("X-Missing") == nil, len(req.Headers()), req.ProtoMinor(), req.Body())
		resp.AddHeader("X-Remote-Set", strconv.FormatBool(req.RemoteAddr() != ""))
	case "/teapot":
		resp.SetStatus(418)
		resp.AddHeader("X-Kind", "teapot")
		resp.SetBodyString("short and stout")
	case "/bad-header":
		err := resp.AddHeader("Content-Length", "5")
		resp.WriteString(fmt.Sprintf("invalid=%t", errors.Is(err, prefork.ErrInvalidArgument)))
	case "/panic":
		resp.AddHeader("X-Before-Panic", "1")
		resp.WriteString("partial")
		panic("boom")
	case "/sleep":
		say("sleeping pid=%d", os.Getpid())
		ms, _ := strconv.Atoi(strings.TrimPrefix(req.QueryString(), "ms="))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		resp.WriteString("slept")
	case "/together":
		n, _ := strconv.Atoi(strings.TrimPrefix(req.QueryString(), "n="))
		barrier.Lock()
		if barrier.all == nil {
			barrier.all = make(chan struct{})
		}
		all := barrier.all
		barrier.arrived++
		if barrier.arrived == n {
			close(all)
		}
		barrier.Unlock()
		select {
		case <-all:
			resp.WriteString("together")
		case <-time.After(5 * time.Second):
			resp.WriteString("alone")
		}
	case "/stream":
		n, _ := strconv.Atoi(strings.TrimPrefix(req.QueryString(), "n="))
		resp.WriteString("replaced by the stream")
		resp.SetBodyStream(&pattern{left: n})
	case "/stream-panic":
		resp.SetBodyStream(&pattern{left: 1 << 20, panicAt: 5000})
	case "/pieces":
		// sizes=N,M,...: writes N bytes of 'a', M of 'b', ... (from=X: of X, the letter after
		// X, ...); then set=K: SetBody of K 'z's.
		q, _ := url.ParseQuery(req.QueryString())
		first := byte('a')
		if f := q.Get("from"); f != "" {
			first = f[0]
		}
		for i, f := range strings.Split(q.Get("sizes"), ",") {
			n, _ := strconv.Atoi(f)
			resp.Write(bytes.Repeat([]byte{first + byte(i)}, n))
		}
		if k := q.Get("set"); k != "" {
			n, _ := strconv.Atoi(k)
			resp.SetBodyString(strings.Repeat("z", n))
		}
	case "/streams-closed":
		resp.WriteString(strconv.FormatInt(streamsClosed.Load(), 10))
	case "/local":
		fmt.Fprintf(resp, "local=%s remote=%s", req.LocalAddr(), req.RemoteAddr())
	case "/proxy":
		tlv, ok := req.ProxyTLV(0xE0)
		fmt.Fprintf(resp, "remote=%s tlv=%q found=%t", req.RemoteAddr(), tlv, ok)
	case "/produced":
		resp.WriteString(os.Getenv(envProduced))
	case "/retain":
		retainedReq.Store(req)
		retainedResp.Store(resp)
		resp.WriteString("kept")
	case "/retained":
		_, err := retainedResp.Load().Write([]byte("late"))
		fmt.Fprintf(resp, "method=%q state-err=%t", retainedReq.Load().Method(), errors.Is(err, prefork.ErrState))
	case "/fields":
		// status=N, then f=NAME:VALUE in order (VALUE "long": longer than the staging buffer).
		// The body names the fields AddHeader refused.
		q, _ := url.ParseQuery(req.QueryString())
		if n, err := strconv.Atoi(q.Get("status")); err == nil {
			resp.SetStatus(n)
		}
		for _, f := range q["f"] {
			name, value, _ := strings.Cut(f, ":")
			if value == "long" {
				value = strings.Repeat("v", 1500)
			}
			if resp.AddHeader(name, value) != nil {
				resp.WriteString("refused " + name + "\n")
			}
		}
		resp.WriteString(q.Get("body"))
	case "/constfields":
		// n=K: the first K of constFields, the same strings on every request.
		n, _ := strconv.Atoi(strings.TrimPrefix(req.QueryString(), "n="))
		for _, f := range constFields[:n] {
			resp.AddHeader(f[0], f[1])
		}
		resp.WriteString("const")
	case "/remote":
		resp.WriteString(req.RemoteAddr())
	case "/stopping":
		resp.WriteString(strconv.FormatBool(prefork.IsStopping()))
	case "/counters":
		// The child's allocations and Go-to-C calls so far: "MALLOCS CGOCALLS".
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		cgo := runtime.NumCgoCall()
		var buf [48]byte
		b := strconv.AppendUint(buf[:0], ms.Mallocs, 10)
		b = strconv.AppendInt(append(b, ' '), cgo, 10)
		resp.Write(b)
	case "/stagecheck":
		// Every byte in a name and in a value: AddHeader stages a field exactly when the
		// library accepts it, and never stages one of the names the library owns.
		var wrong []string
		for b := range 256 {
			c := string([]byte{byte(b)})
			for _, f := range [][2]string{{"X" + c + "y", "v"}, {c, "v"}, {"X-Value", "a" + c + "b"}, {"X-Value", c}} {
				staged := prefork.Stageable(f[0], f[1])
				accepted := prefork.AddHeaderDirect(resp, f[0], f[1]) == nil
				if staged != accepted {
					wrong = append(wrong, fmt.Sprintf("%q: %q staged=%t accepted=%t", f[0], f[1], staged, accepted))
				}
			}
		}
		for _, name := range []string{"Date", "date", "CONNECTION", "Connection", "Content-Length", "content-length", "Transfer-Encoding", "TRANSFER-encoding"} {
			if prefork.Stageable(name, "x") {
				wrong = append(wrong, name+" is staged")
			}
		}
		if !prefork.Stageable("X-Tab", "a\tb") || !prefork.Stageable("X-High", "caf\u00e9") || !prefork.Stageable("X-Empty", "") {
			wrong = append(wrong, "a tab, a byte above 0x7f or an empty value is not staged")
		}
		for _, v := range []string{"0123456\r89", "01234567\n9abcdef", "\x7f", "abcdefgh\x00"} {
			if prefork.Stageable("X-Value", v) {
				wrong = append(wrong, fmt.Sprintf("%q is staged", v))
			}
		}
		resp.WriteString(strings.Join(wrong, "\n"))
	case "/defer":
		deferReply(req, resp)
	case "/ws":
		serveWebSocket(req, resp)
	case "/deferstaged":
		deferStaged(req, resp)
	case "/upgradestaged":
		upgradeStaged(req, resp)
	default:
		resp.SetStatus(404)
	}
}

// What /constfields adds.
var constFields = [][2]string{{"Content-Type", "text/plain"}, {"X-One", "1"}, {"Cache-Control", "no-store"}}

var streamsClosed atomic.Int64

// pattern is a body stream of `left` bytes "abc...zabc...", at most 1000 per Read, that
// panics once it has produced panicAt bytes (if set) and counts its Close calls.
type pattern struct {
	left, done, panicAt int
}

func (p *pattern) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	if p.panicAt > 0 && p.done >= p.panicAt {
		panic("stream broke")
	}
	n := min(len(b), p.left, 1000)
	for i := range n {
		b[i] = byte('a' + (p.done+i)%26)
	}
	p.left -= n
	p.done += n
	return n, nil
}

func (p *pattern) Close() error {
	streamsClosed.Add(1)
	return nil
}

func patternString(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return string(b)
}
