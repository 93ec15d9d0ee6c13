// fasthttp-hello: the fasthttp prefork peer of the libprefork benchmark.
//
// Same routes as examples-c/demo_server.c where the benchmark needs them:
//
//	/          200 text/plain "Hello, World!"
//	/pid       the serving child's pid
//	/sleep?ms= 200 "slept" after ms milliseconds (one goroutine per connection blocks)
//
// With --tls-cert and --tls-key it serves HTTPS through prefork's ListenAndServeTLS (the TLS
// scenarios): each child loads the files and has session-ticket keys of its own.
//
// The child count is fasthttp prefork's own: runtime.GOMAXPROCS(0) in the master, which Go
// derives from the CPU affinity mask (so `taskset -c 1` gives one child) unless the GOMAXPROCS
// environment variable is set. The harness sets GOMAXPROCS=N to ask for N children; the children
// then run with GOMAXPROCS(1), as prefork.listen does.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/prefork"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	tlsCert := flag.String("tls-cert", "", "certificate chain (PEM): serve HTTPS")
	tlsKey := flag.String("tls-key", "", "private key (PEM) of --tls-cert")
	flag.Parse()
	if (*tlsCert == "") != (*tlsKey == "") {
		log.Fatal("fasthttp-hello: --tls-cert and --tls-key go together")
	}

	srv := &fasthttp.Server{Handler: handler, Name: "fasthttp"}
	p := prefork.New(srv)
	// The documented way to make children follow a dead master (watchMaster polls the ppid).
	p.OnMasterDeath = func() { os.Exit(1) }
	// fasthttp calls this once every child is spawned (not yet listening): the harness still
	// polls until the server answers.
	p.OnMasterReady = func(pids []int) error {
		s := make([]string, len(pids))
		for i, pid := range pids {
			s[i] = strconv.Itoa(pid)
		}
		// os.Stdout is unbuffered: the line is out when Printf returns.
		fmt.Printf("ready pid=%d children=%s\n", os.Getpid(), strings.Join(s, ","))
		return nil
	}
	if !prefork.IsChild() {
		stopOnSignal(p)
	}
	var err error
	if *tlsCert != "" {
		// fasthttp's order: the key first, then the certificate.
		err = p.ListenAndServeTLS(*addr, *tlsKey, *tlsCert)
	} else {
		err = p.ListenAndServe(*addr)
	}
	if stopping.Load() {
		os.Exit(0)
	}
	if err != nil {
		log.Fatalf("fasthttp-hello: %v", err)
	}
}

var (
	stopping    atomic.Bool
	errStopping = errors.New("stopping")
	childrenMu  sync.Mutex
	children    = map[int]bool{}
)

// stopOnSignal gives the master the graceful SIGTERM/SIGINT stop the other subjects have:
// fasthttp's prefork (v1.78) installs no signal handler, so SIGTERM would kill the master and
// orphan its children. Children get SIGTERM; when the supervision loop then starts a
// replacement, OnChildSpawn fails, which makes prefork stop every child (SIGTERM, then SIGKILL
// after its grace period) and return.
func stopOnSignal(p *prefork.Prefork) {
	p.OnChildSpawn = func(pid int) error {
		childrenMu.Lock()
		children[pid] = true
		childrenMu.Unlock()
		if stopping.Load() {
			return errStopping
		}
		return nil
	}
	// A replaced child is gone: forget it, so its pid (which may be recycled) is never signalled.
	p.OnChildRecover = func(oldPID, _ int) {
		childrenMu.Lock()
		delete(children, oldPID)
		childrenMu.Unlock()
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		stopping.Store(true)
		childrenMu.Lock()
		defer childrenMu.Unlock()
		for pid := range children {
			syscall.Kill(pid, syscall.SIGTERM)
		}
	}()
}
