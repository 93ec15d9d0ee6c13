// fasthttp-serve: the fasthttp peer's server (bench/peers/fasthttp: its handler.go, linked
// here, and its fasthttp version) run as a ServeFunc under libprefork's supervisor, for the
// issue 17 target: serve mode within 0.97 × fasthttp prefork's own requests/s, the supervisor
// costing nothing on the hot path.
//
//	fasthttp-serve --addr 127.0.0.1:8080 --children 2
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/valyala/fasthttp"
	"libprefork.dev/prefork"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address, host:port")
	children := flag.Int("children", 0, "child processes (0: one per CPU)")
	flag.Parse()

	srv := &fasthttp.Server{Handler: handler, Name: "fasthttp"}
	serve := prefork.Graceful(srv.Serve, srv.ShutdownWithContext)
	p := prefork.New(nil) // the children run ServeFunc, not a handler
	p.ServeFunc = func(ln net.Listener) error {
		// As fasthttp's prefork children do (prefork.listen): one P per child process.
		runtime.GOMAXPROCS(1)
		return serve(ln)
	}
	p.Children = *children
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
		log.Fatalf("fasthttp-serve: %v", err)
	}
}
