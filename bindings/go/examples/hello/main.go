// Command hello is a preforking HTTP server with a Go handler, served by libprefork.
//
//	hello --addr 127.0.0.1:8080 --children 2 [--handler-threads N] [--reuseport] [--cpu-affinity]
//
// Routes (the same as examples-c/demo_server.c, which the benchmark relies on):
//
//	/           200 text/plain "Hello, World!"
//	/pid        the serving child's pid
//	/sleep?ms=N 200 "slept" after N milliseconds (blocks the handler: use --handler-threads)
//
// When every child listens, the master prints "ready pid=<master> children=<pid>,<pid>,..."
// on stdout. SIGTERM or SIGINT stops it gracefully.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"strconv"
	"strings"
	"time"

	"libprefork.dev/prefork"
)

var hello = []byte("Hello, World!")

func handle(req *prefork.Request, resp *prefork.Response) {
	switch string(req.Path()) { // the conversion in a switch does not allocate
	case "/":
		resp.AddHeader("Content-Type", "text/plain")
		resp.Write(hello)
	case "/pid":
		resp.AddHeader("Content-Type", "text/plain")
		resp.WriteString(strconv.Itoa(os.Getpid()))
	case "/sleep":
		ms, _ := strconv.Atoi(strings.TrimPrefix(req.QueryString(), "ms="))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		resp.AddHeader("Content-Type", "text/plain")
		resp.WriteString("slept")
	default:
		resp.SetStatus(404)
		resp.WriteString("not found\n")
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address, host:port")
	children := flag.Int("children", 0, "child processes (0: one per CPU)")
	threads := flag.Int("handler-threads", 0, "handler threads per child (0: run the handler on the event loop)")
	reuseport := flag.Bool("reuseport", false, "one SO_REUSEPORT socket per child")
	affinity := flag.Bool("cpu-affinity", false, "pin child i to the i-th allowed CPU")
	flag.Parse()

	p := prefork.New(handle)
	p.Children = *children
	p.HandlerThreads = *threads
	p.Reuseport = *reuseport
	p.CPUAffinity = *affinity
	p.OnMasterReady = func(pids []int) error {
		s := make([]string, len(pids))
		for i, pid := range pids {
			s[i] = strconv.Itoa(pid)
		}
		// os.Stdout is unbuffered: the line is out when Printf returns.
		fmt.Printf("ready pid=%d children=%s\n", os.Getpid(), strings.Join(s, ","))
		return nil
	}
	if err := p.ListenAndServe(*addr); err != nil {
		log.Fatalf("hello: %v", err)
	}
}
