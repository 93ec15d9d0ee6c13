// Command servefunc is the fasthttp prefork program of the migration guide
// (bindings/go/README.md) moved to libprefork's supervisor, keeping its fasthttp.Server: the
// children run fs.Serve as a ServeFunc, and stop gracefully on the master's SIGTERM.
//
//	servefunc --addr 127.0.0.1:8080 --children 2
package main

import (
	"flag"
	"fmt"
	"log"

	"github.com/valyala/fasthttp"
	"libprefork.dev/prefork"
)

func handler(ctx *fasthttp.RequestCtx) {
	switch string(ctx.Path()) {
	case "/":
		ctx.SetContentType("text/plain")
		ctx.WriteString("Hello, World!")
	case "/users":
		ctx.SetContentType("application/json")
		fmt.Fprintf(ctx, `{"id":%q}`, ctx.QueryArgs().Peek("id"))
	default:
		ctx.Error("not found", fasthttp.StatusNotFound)
	}
}

func main() {
	addr := flag.String("addr", ":8080", "listen address")
	children := flag.Int("children", 0, "child processes (0: one per CPU)")
	flag.Parse()

	server := &fasthttp.Server{Handler: handler}
	p := prefork.New(nil) // the handler is not used: the children run ServeFunc
	p.ServeFunc = prefork.Graceful(server.Serve, server.ShutdownWithContext)
	p.Children = *children
	p.RecoverThreshold = 4
	p.OnMasterReady = func(pids []int) error {
		log.Printf("serving on %s, children %v", prefork.LocalAddr(), pids)
		return nil
	}
	if err := p.ListenAndServe(*addr); err != nil {
		log.Fatal(err)
	}
}
