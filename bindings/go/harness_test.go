package prefork_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// waitBound caps every wait of the tests: nothing here takes more than a few seconds.
const waitBound = 15 * time.Second

// master is a server role started as a separate process (the test binary, re-executed), in
// its own process group so that a failing test can still kill everything it started.
type master struct {
	t        testing.TB
	cmd      *exec.Cmd
	pid      int
	children []int
	port     int

	mu     sync.Mutex
	lines  []string // stdout: the event lines of the master and its children
	stdout bool     // stdout reached EOF: every process holding it is gone
	stderr bytes.Buffer
	waited chan struct{}
	status *os.ProcessState
}

// startMaster runs the server role with env added to this process's environment and waits
// for its ready line.
func startMaster(t testing.TB, env ...string) *master {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), append([]string{envServer + "=1", envAddr + "=127.0.0.1:0"}, env...)...)
	cmd.Stdout, cmd.Stderr = outW, errW // *os.File: the children inherit them
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	m := &master{t: t, cmd: cmd, waited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	outW.Close()
	errW.Close()
	m.pid = cmd.Process.Pid
	go m.read(outR, errR)
	go func() {
		_ = cmd.Wait()
		m.mu.Lock()
		m.status = cmd.ProcessState
		m.mu.Unlock()
		close(m.waited)
	}()
	t.Cleanup(m.cleanup)

	ready := m.waitLine(regexp.MustCompile(`^ready pid=(\d+) children=([\d,]+)$`))
	if pid, _ := strconv.Atoi(ready[1]); pid != m.pid {
		t.Fatalf("ready line names pid %d, the master is %d", pid, m.pid)
	}
	for _, s := range strings.Split(ready[2], ",") {
		pid, _ := strconv.Atoi(s)
		m.children = append(m.children, pid)
	}
	// Each child printed its port (from InitChild) before it reported ready.
	m.port = m.portOf(m.children[0])
	host := "127.0.0.1"
	for _, kv := range env {
		if a, ok := strings.CutPrefix(kv, envAddr+"="); ok {
			host, _, _ = net.SplitHostPort(a)
		}
	}
	want := "master-addr " + net.JoinHostPort(host, strconv.Itoa(m.port))
	if !m.has(regexp.MustCompile("^" + regexp.QuoteMeta(want) + "$")) {
		t.Fatalf("LocalAddr in the master is not the bound address: want %q\n%s", want, m.transcript())
	}
	return m
}

func (m *master) read(out, errs *os.File) {
	go func() {
		_, _ = io.Copy(lockedWriter{m}, errs)
		errs.Close()
	}()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		m.mu.Lock()
		m.lines = append(m.lines, sc.Text())
		m.mu.Unlock()
	}
	out.Close()
	m.mu.Lock()
	m.stdout = true
	m.mu.Unlock()
}

// lockedWriter appends to the master's stderr buffer under its lock.
type lockedWriter struct{ m *master }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	return w.m.stderr.Write(p)
}

// find returns the submatches of the first line from index `from` matching re, and the index
// after it; nil when there is none yet.
func (m *master) find(re *regexp.Regexp, from int) ([]string, int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := from; i < len(m.lines); i++ {
		if sub := re.FindStringSubmatch(m.lines[i]); sub != nil {
			return sub, i + 1
		}
	}
	return nil, len(m.lines)
}

// waitUntil polls done every 10 ms until it returns true; after waitBound it fails the test
// with "<what> within <bound>" and the transcript.
func (m *master) waitUntil(what string, done func() bool) {
	m.t.Helper()
	deadline := time.Now().Add(waitBound)
	for time.Now().Before(deadline) {
		if done() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	m.t.Fatalf("%s within %v\n%s", what, waitBound, m.transcript())
}

// waitLine waits (bounded) for a line matching re.
func (m *master) waitLine(re *regexp.Regexp) []string {
	m.t.Helper()
	var sub []string
	m.waitUntil(fmt.Sprintf("no line matching %q", re), func() bool {
		sub, _ = m.find(re, 0)
		return sub != nil
	})
	return sub
}

// waitStderr waits (bounded) until the servers' stderr holds s: log lines arrive through a
// pipe that another goroutine reads, possibly after the response that caused them.
func (m *master) waitStderr(s string) {
	m.t.Helper()
	m.waitUntil(fmt.Sprintf("stderr did not show %q", s), func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return strings.Contains(m.stderr.String(), s)
	})
}

// has reports whether some line already matches re.
func (m *master) has(re *regexp.Regexp) bool {
	sub, _ := m.find(re, 0)
	return sub != nil
}

func (m *master) portOf(child int) int {
	m.t.Helper()
	sub := m.waitLine(regexp.MustCompile(fmt.Sprintf(`^child pid=%d port=(\d+)$`, child)))
	port, _ := strconv.Atoi(sub[1])
	if port == 0 {
		m.t.Fatalf("child %d listens on port 0", child)
	}
	return port
}

func (m *master) transcript() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return "stdout:\n  " + strings.Join(m.lines, "\n  ") + "\nstderr:\n" + m.stderr.String()
}

func (m *master) url(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", m.port, path)
}

// signal sends sig to the master.
func (m *master) signal(sig syscall.Signal) {
	m.t.Helper()
	if err := syscall.Kill(m.pid, sig); err != nil {
		m.t.Fatalf("kill %d: %v", m.pid, err)
	}
}

// wait waits (bounded) for the master to exit and returns its exit code.
func (m *master) wait() int {
	m.t.Helper()
	select {
	case <-m.waited:
	case <-time.After(waitBound):
		m.t.Fatalf("master %d still runs after %v\n%s", m.pid, waitBound, m.transcript())
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.status.ExitCode()
}

// allGone checks, within the bound, that every process the test saw (master, children,
// replacements) is gone and that their shared stdout reached EOF, which happens only once
// the last process holding it exited.
func (m *master) allGone() {
	m.t.Helper()
	pids := []int{m.pid}
	for _, re := range []*regexp.Regexp{regexp.MustCompile(`^spawn pid=(\d+)$`), regexp.MustCompile(`^child pid=(\d+) `)} {
		for from := 0; ; {
			sub, next := m.find(re, from)
			if sub == nil {
				break
			}
			pid, _ := strconv.Atoi(sub[1])
			pids = append(pids, pid)
			from = next
		}
	}
	deadline := time.Now().Add(waitBound)
	for {
		var alive []int
		for _, pid := range pids {
			if running(pid) {
				alive = append(alive, pid)
			}
		}
		m.mu.Lock()
		eof := m.stdout
		m.mu.Unlock()
		if len(alive) == 0 && eof {
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("processes left after %v: %v (stdout EOF: %t)\n%s", waitBound, alive, eof, m.transcript())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// running reports whether pid exists and is not a zombie (an exited orphan that PID 1 has not
// reaped yet has stopped running all the same).
func running(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// Field 3, after "(comm)", which may itself hold spaces and parentheses.
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// cleanup kills whatever a failed test left in the master's process group.
func (m *master) cleanup() {
	select {
	case <-m.waited:
	default:
		_ = syscall.Kill(-m.pid, syscall.SIGKILL)
		<-m.waited
	}
	if m.t.Failed() {
		m.t.Logf("server transcript:\n%s", m.transcript())
	}
}

// client makes a new connection per request, so that every request can reach any child.
var client = &http.Client{
	Timeout:   10 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
}

// get returns the status and body of a GET.
func get(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading the body: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// readBody reads and closes a response body.
func readBody(t testing.TB, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	return string(b)
}
