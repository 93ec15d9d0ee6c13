package prefork

// The Go ends of the C callbacks (shim.c calls them). A file with //export may only declare C
// functions in its preamble, so the definitions live in shim.c. No Go panic may unwind into
// the library: every trampoline recovers.

// #include "shim.h"
import "C"

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/cgo"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// serverOf is the server behind a callback's handle. The last one found is kept: a child
// serves one server, and Handle.Value is a concurrent-map lookup on every request.
func serverOf(h C.uintptr_t) *server {
	if c := lastServer.Load(); c != nil && c.h == cgo.Handle(h) {
		return c.s
	}
	s := cgo.Handle(h).Value().(*server)
	lastServer.Store(&handleServer{cgo.Handle(h), s})
	return s
}

type handleServer struct {
	h cgo.Handle
	s *server
}

var lastServer atomic.Pointer[handleServer]

//export goPreforkRelease
func goPreforkRelease(h C.uintptr_t) {
	deleteHandle(cgo.Handle(h))
}

//export goPreforkHandle
func goPreforkHandle(h C.uintptr_t, creq *C.prefork_request, cresp *C.prefork_response, cx *C.goprefork_exchange) {
	s := serverOf(h)
	if s.calls == nil {
		// A handler thread: a call of the pool's, an exchange of the shared slabs.
		k := threadCalls.Get().(*call)
		k.srv = s
		s.handleOne(k, newExchange(), creq, cresp, cx)
		threadCalls.Put(k)
		return
	}
	s.handleOne(&s.calls[0], s.slab.next(), creq, cresp, cx)
	s.yield(1)
}

// goPreforkHandleBatch answers the n requests of a batch (on the event loop), each in its
// exchange of cxs, up to the first whose response ends the batch; it returns how many it
// answered (the library offers the rest again). One call from C into Go, the costly
// direction (~475 instructions of the Go runtime), for all of them.
//
//export goPreforkHandleBatch
func goPreforkHandleBatch(h C.uintptr_t, creqs **C.prefork_request, cresps **C.prefork_response, cxs *C.goprefork_exchange, n C.size_t) C.size_t {
	s := serverOf(h)
	answered := s.handleBatch(unsafe.Slice(creqs, int(n)), unsafe.Slice(cresps, int(n)), unsafe.Slice(cxs, int(n)))
	s.yield(answered)
	return C.size_t(answered)
}

// How often the event loop's goroutine goes through the scheduler: at least every
// yieldInterval, checked every yieldCheck requests.
const (
	yieldInterval = 9 * time.Millisecond
	yieldCheck    = 8
)

// yield lets the scheduler run the event loop's goroutine again (runtime.Gosched) when it has
// not for yieldInterval; n requests were answered since the last call. That goroutine is one
// long cgo call that never reaches the scheduler on its own, and the runtime's sysmon takes
// any goroutine that has not been rescheduled for 10 ms for a hog: from then on, at each of
// its ticks (20 µs when it acts), it takes the goroutine's P away while the loop is in C,
// which the next callback must get back, or preempts it in Go code. That churn cost a child
// ~0.3-0.5 µs of another thread's CPU per request at depth 1 (sysmon awake ~2,500 times a
// second, 1,300 futex wakeups and 16 preemption signals a second against 0 after).
//
// A yield wakes three threads, as the goroutine is locked to its own: one takes the P, finds
// the goroutine and hands it back, and a spinning one finds nothing. Wake-ups inside the
// server's scheduler group cost it CPU per request on a machine it shares with its clients,
// so the loop yields as seldom as sysmon allows: sysmon counts 10 ms from the first look that
// finds the goroutine rescheduled, which comes after the yield, so a yield every 9 ms (while
// the loop is busy enough to check) is never late. One that is (its thread kept off the CPU)
// costs one preemption, which the yield stands for anyway. Against every 5 ms: 40% fewer
// futex calls, and sysmon still in its 10 ms sleep (~110 wake-ups a second against ~100).
// Only on the event loop: handler threads block and are rescheduled anyway.
func (s *server) yield(n int) {
	before := s.handled
	if s.handled += uint64(n); s.handled/yieldCheck == before/yieldCheck || time.Since(s.yielded) < yieldInterval {
		return
	}
	runtime.Gosched()
	s.yielded = time.Now()
}

var internalErrorBody = []byte("500 Internal Server Error\n")

// internalError replaces what a panicking handler left with a 500. The connection closes:
// the headers that reached the library (those that were not staged) cannot be taken back,
// and the handler's state is suspect.
func internalError(c *C.prefork_response) {
	C.prefork_response_set_status(c, 500)
	C.goprefork_set_body(c, bytesPtr(internalErrorBody), C.size_t(len(internalErrorBody)))
	name, value := "Connection", "close"
	C.prefork_response_add_header(c, stringPtr(name), C.size_t(len(name)), stringPtr(value), C.size_t(len(value)))
}

// hook runs a Go hook: an error or a panic is kept for ListenAndServe and returns nonzero,
// which makes the master stop.
func (s *server) hook(name string, f func() error) (rc C.int) {
	defer func() {
		if v := recover(); v != nil {
			s.fail(fmt.Errorf("%s panicked: %v", name, v))
			rc = 1
		}
	}()
	if err := f(); err != nil {
		s.fail(fmt.Errorf("%s: %w", name, err))
		return 1
	}
	return 0
}

// notify runs a Go hook that cannot fail: a panic is logged.
func (s *server) notify(name string, f func()) {
	defer func() {
		if v := recover(); v != nil {
			s.logf("ERROR", "%s panicked: %v\n%s", name, v, debug.Stack())
		}
	}()
	f()
}

//export goPreforkInitChild
func goPreforkInitChild(h C.uintptr_t) C.int {
	s := serverOf(h)
	return s.hook("InitChild", s.p.InitChild)
}

//export goPreforkExitChild
func goPreforkExitChild(h C.uintptr_t) {
	s := serverOf(h)
	s.notify("ExitChild", s.p.ExitChild)
}

//export goPreforkServe
func goPreforkServe(h C.uintptr_t, listenFD, stopFD C.int) C.int {
	return C.int(serverOf(h).serveChild(int(listenFD), int(stopFD)))
}

//export goPreforkOnChildSpawn
func goPreforkOnChildSpawn(h C.uintptr_t, pid C.int32_t) C.int {
	s := serverOf(h)
	return s.hook("OnChildSpawn", func() error { return s.p.OnChildSpawn(int(pid)) })
}

//export goPreforkOnMasterReady
func goPreforkOnMasterReady(h C.uintptr_t, cpids *C.int32_t, n C.size_t) C.int {
	s := serverOf(h)
	pids := make([]int, int(n))
	for i, pid := range unsafe.Slice((*int32)(unsafe.Pointer(cpids)), int(n)) {
		pids[i] = int(pid)
	}
	return s.hook("OnMasterReady", func() error { return s.p.OnMasterReady(pids) })
}

//export goPreforkOnReload
func goPreforkOnReload(h C.uintptr_t, generation C.uint64_t, cpids *C.int32_t, n C.size_t) C.int {
	s := serverOf(h)
	pids := make([]int, int(n))
	for i, pid := range unsafe.Slice((*int32)(unsafe.Pointer(cpids)), int(n)) {
		pids[i] = int(pid)
	}
	return s.hook("OnReload", func() error { return s.p.OnReload(uint64(generation), pids) })
}

//export goPreforkOnReloadFailed
func goPreforkOnReloadFailed(h C.uintptr_t, generation C.uint64_t, reason *C.char) {
	s := serverOf(h)
	why := C.GoString(reason)
	s.notify("OnReloadFailed", func() { s.p.OnReloadFailed(uint64(generation), why) })
}

//export goPreforkOnUpgrade
func goPreforkOnUpgrade(h C.uintptr_t, oldPID, newPID C.int32_t) {
	s := serverOf(h)
	s.notify("OnUpgrade", func() { s.p.OnUpgrade(int(oldPID), int(newPID)) })
}

//export goPreforkOnChildRecover
func goPreforkOnChildRecover(h C.uintptr_t, oldPID, newPID C.int32_t) C.int {
	s := serverOf(h)
	return s.hook("OnChildRecover", func() error { return s.p.OnChildRecover(int(oldPID), int(newPID)) })
}

//export goPreforkOnChildExit
func goPreforkOnChildExit(h C.uintptr_t, pid, exitCode, sig C.int32_t) {
	s := serverOf(h)
	s.notify("OnChildExit", func() { s.p.OnChildExit(int(pid), int(exitCode), syscall.Signal(sig)) })
}

//export goPreforkOnMasterDeath
func goPreforkOnMasterDeath(h C.uintptr_t) {
	s := serverOf(h)
	s.notify("OnMasterDeath", s.p.OnMasterDeath)
}

//export goPreforkCommandProducer
func goPreforkCommandProducer(h C.uintptr_t, listenerFD, lifelineFD C.int, slot C.size_t) C.int32_t {
	s := serverOf(h)
	pid := C.int32_t(-1)
	s.hook("CommandProducer", func() error {
		// os.File owns its descriptor and the library keeps its own: hand over copies.
		files, err := dupFiles(int(listenerFD), int(lifelineFD))
		if err != nil {
			return err
		}
		defer func() {
			for _, f := range files {
				f.Close()
			}
		}()
		cmd, err := s.p.CommandProducer(files)
		switch {
		case err != nil:
			return err
		case cmd == nil || cmd.Process == nil:
			return fmt.Errorf("returned no started command (call cmd.Start)")
		}
		pid = C.int32_t(cmd.Process.Pid)
		return nil
	})
	return pid
}

func dupFiles(fds ...int) ([]*os.File, error) {
	files := make([]*os.File, 0, len(fds))
	for _, fd := range fds {
		// F_DUPFD_CLOEXEC: no other child started meanwhile may inherit the copy.
		nfd, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 0)
		if errno != 0 {
			for _, f := range files {
				f.Close()
			}
			return nil, fmt.Errorf("dup descriptor %d: %w", fd, errno)
		}
		files = append(files, os.NewFile(nfd, fmt.Sprintf("prefork-fd-%d", fd)))
	}
	return files, nil
}

// maxEmptyReads bounds how often a body stream's Read may return nothing without an error
// before the stream is abandoned: the library takes 0 for the end of the body.
const maxEmptyReads = 100

//export goPreforkStreamRead
func goPreforkStreamRead(h C.uintptr_t, buf *C.char, size C.size_t) (n C.ptrdiff_t) {
	bs := cgo.Handle(h).Value().(*bodyStream)
	defer func() {
		if v := recover(); v != nil {
			bs.srv.logf("ERROR", "body stream Read panicked: %v\n%s", v, debug.Stack())
			n = -1
		}
	}()
	p := unsafe.Slice((*byte)(unsafe.Pointer(buf)), int(size))
	for range maxEmptyReads {
		got, err := bs.r.Read(p)
		switch {
		case got < 0 || got > len(p):
			return -1
		case got > 0:
			return C.ptrdiff_t(got) // an error with data shows again on the next Read
		case err == io.EOF:
			return 0
		case err != nil:
			return -1
		}
	}
	return -1
}

//export goPreforkStreamFree
func goPreforkStreamFree(h C.uintptr_t) {
	handle := cgo.Handle(h)
	defer deleteHandle(handle)
	if c, ok := handle.Value().(*bodyStream).r.(io.Closer); ok {
		defer func() { recover() }() // a panicking Close must not crash the child
		c.Close()
	}
}

var levelNames = [...]string{"DEBUG", "INFO", "WARN", "ERROR"}

//export goPreforkLog
func goPreforkLog(h C.uintptr_t, level C.int, msg *C.char, n C.size_t) {
	if level <= C.PREFORK_LOG_DEBUG || int(level) >= len(levelNames) {
		return // as the library's own logger: debug lines are not for users
	}
	s := serverOf(h)
	s.logf(levelNames[level], "%s", C.GoStringN(msg, C.int(n)))
}

// logf writes a line to the Logger, or to stderr in the library's format when there is none.
func (s *server) logf(level, format string, args ...any) {
	defer func() { recover() }() // a panicking Logger must not crash the server
	msg := fmt.Sprintf(format, args...)
	if s.p.Logger != nil {
		s.p.Logger.Printf("prefork[%d] %s: %s", os.Getpid(), level, msg)
		return
	}
	fmt.Fprintf(os.Stderr, "prefork[%d] %s: %s\n", os.Getpid(), level, msg)
}

// hijackWait is what a Hijack's cgo.Handle holds: where the library's hand-over lands.
type hijackWait struct {
	conns chan hijackResult // buffered: the event loop never waits for Hijack's goroutine
	srv   *server
}

type hijackResult struct {
	conn net.Conn
	err  error
}

//export goPreforkOnConn
func goPreforkOnConn(h C.uintptr_t, cconn *C.prefork_conn) {
	w := cgo.Handle(h).Value().(*hijackWait)
	defer func() {
		if v := recover(); v != nil {
			w.srv.logf("ERROR", "handing a connection to Hijack panicked: %v\n%s", v, debug.Stack())
		}
	}()
	conn, err := newHijackedConn(cconn)
	if err != nil {
		C.prefork_conn_close(cconn)
	}
	w.conns <- hijackResult{conn, err}
}

//export goPreforkHijackFree
func goPreforkHijackFree(h C.uintptr_t) {
	handle := cgo.Handle(h)
	// After goPreforkOnConn, or instead of it: Hijack then learns the connection is gone.
	close(handle.Value().(*hijackWait).conns)
	deleteHandle(handle)
}
