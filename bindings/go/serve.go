package prefork

// Serve mode: a ServeFunc runs the program's own server (net/http, fasthttp, anything that
// serves a net.Listener) in each child instead of the library's HTTP engine, as fasthttp
// prefork's ServeFunc does, with the library's supervisor around it. The library hands the
// child its listener and a stop descriptor (prefork_set_serve); this file turns them into a
// net.Listener and the Stopping channel.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"sync"
	"time"
)

// Exit statuses of a ServeFunc child.
const (
	serveClean    = 0
	serveFailed   = 1
	servePanicked = 2 // what the Go runtime exits with on an unrecovered panic
)

// defaultGracePeriod is the library's grace period when ShutdownGracePeriod is zero (its
// "Default: 5s." is checked against the header by tests/go_options.rs).
const defaultGracePeriod = 5 * time.Second

var stop = struct {
	once sync.Once
	ch   chan struct{}
	at   time.Time     // when ch was closed
	left time.Duration // what Graceful's shutdown may take from then on
}{ch: make(chan struct{})}

// Stopping returns a channel that is closed when this child must stop: the master stops
// gracefully (SIGTERM or Shutdown in the master), the master died (after OnMasterDeath), or
// Shutdown was called in this child. A ServeFunc waits on it to shut its server down, then
// returns once the requests in flight are done, within ShutdownGracePeriod (after which the
// master kills the child). Graceful does all of this for servers with a Shutdown method.
//
// The channel belongs to the process, which serves one ServeFunc; it stays open in the
// master and in children of the library's HTTP engine.
func Stopping() <-chan struct{} {
	return stop.ch
}

func stopNow() {
	stop.once.Do(func() {
		stop.at = time.Now()
		close(stop.ch)
	})
}

func stopped() bool {
	select {
	case <-stop.ch:
		return true
	default:
		return false
	}
}

// Graceful returns a ServeFunc for a server whose Serve returns as soon as its shutdown starts,
// before the connections in flight are done, as net/http's and fasthttp's do:
//
//	srv := &http.Server{Handler: mux}
//	p.ServeFunc = prefork.Graceful(srv.Serve, srv.Shutdown)
//
//	fs := &fasthttp.Server{Handler: handler}
//	p.ServeFunc = prefork.Graceful(fs.Serve, fs.ShutdownWithContext)
//
// It runs serve(ln); when the child must stop (Stopping) it calls shutdown, waits for it and
// for serve to return, and returns nil for a clean stop. shutdown's context expires at nine
// tenths of ShutdownGracePeriod after the stop, so that a stuck connection ends in shutdown's
// error and a child exit of its own rather than in the master's SIGKILL. A serve that returns
// before any stop is a failure and its error is returned.
func Graceful(serve func(net.Listener) error, shutdown func(context.Context) error) func(net.Listener) error {
	return func(ln net.Listener) error {
		served := make(chan error, 1)
		go func() {
			defer func() {
				if v := recover(); v != nil {
					served <- fmt.Errorf("serve panicked: %v\n%s", v, debug.Stack())
				}
			}()
			served <- serve(ln)
		}()
		var serveErr error
		pending := true
		select {
		case serveErr = <-served:
			pending = false
			// The binding closes the listener at the stop, which may end serve first.
			if !stopped() {
				return serveErr
			}
		case <-Stopping():
		}
		ctx, cancel := context.WithDeadline(context.Background(), stop.at.Add(stop.left))
		defer cancel()
		// The binding closed the listener at the stop: a shutdown closing it again says so.
		if err := shutdown(ctx); err != nil && !isClosedError(err) {
			return fmt.Errorf("shutdown: %w", err)
		}
		if pending {
			select {
			case serveErr = <-served:
			case <-ctx.Done():
				return fmt.Errorf("serve did not return after shutdown: %w", ctx.Err())
			}
		}
		if serveErr != nil && !isClosedError(serveErr) {
			return serveErr
		}
		return nil
	}
}

// isClosedError reports whether err only says that the server's listener was closed, which
// after the stop is how a Serve method says it stopped (and a Shutdown that the listener was
// closed already).
func isClosedError(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, http.ErrServerClosed)
}

// serveChild runs ServeFunc in a child: the listener and the stop descriptor come from the
// library, which owns stopFD; the returned status becomes the child's exit status.
func (s *server) serveChild(listenFD, stopFD int) int {
	grace := s.p.ShutdownGracePeriod
	if grace <= 0 {
		grace = defaultGracePeriod
	}
	stop.left = grace - grace/10
	ln, err := childListener(listenFD)
	if err != nil {
		s.logf("ERROR", "ServeFunc not started: %v", err)
		return serveFailed
	}
	watching, err := watchStop(stopFD, ln)
	if err != nil {
		ln.Close()
		s.logf("ERROR", "ServeFunc not started: %v", err)
		return serveFailed
	}
	defer watching.Close()
	return s.runServeFunc(ln)
}

func (s *server) runServeFunc(ln net.Listener) (status int) {
	defer func() {
		if v := recover(); v != nil {
			s.logf("ERROR", "ServeFunc panicked: %v\n%s", v, debug.Stack())
			status = servePanicked
		}
	}()
	err := s.p.ServeFunc(ln)
	if err == nil || (stopped() && isClosedError(err)) {
		return serveClean
	}
	s.logf("ERROR", "ServeFunc: %v", err)
	return serveFailed
}

// childListener makes the inherited listener a net.Listener (a *net.TCPListener, as fasthttp
// prefork's ServeFunc gets); the library handed fd over.
func childListener(fd int) (net.Listener, error) {
	f := os.NewFile(uintptr(fd), "prefork-listener")
	defer f.Close() // FileListener works on a copy
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("the inherited listener (fd %d): %w", fd, err)
	}
	return ln, nil
}

// watchStop closes the Stopping channel, then ln, when the library's stop descriptor becomes
// readable. Closing ln also stops a ServeFunc that ignores Stopping: its Serve returns, and
// the child exits instead of waiting for the master's SIGKILL. Closing the returned file
// ends the watch.
func watchStop(stopFD int, ln net.Listener) (*os.File, error) {
	// A copy in the runtime's poller (the descriptor is non-blocking): the goroutine parks
	// instead of holding a thread, and the library's descriptor stays the library's.
	files, err := dupFiles(stopFD)
	if err != nil {
		return nil, fmt.Errorf("the stop descriptor: %w", err)
	}
	f := files[0]
	go func() {
		var b [1]byte
		// A byte, then EOF, when the child must stop; os.ErrClosed when serving ended first.
		if _, err := f.Read(b[:]); errors.Is(err, os.ErrClosed) {
			return
		}
		stopNow()
		ln.Close()
	}()
	return f, nil
}
