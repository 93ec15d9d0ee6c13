// Command migrate-handler is the fasthttp prefork program of the migration guide
// (bindings/go/README.md) moved to libprefork's own HTTP engine: the handler takes a
// *prefork.Request and a *prefork.Response instead of a *fasthttp.RequestCtx.
//
//	migrate-handler --addr 127.0.0.1:8080 --children 2
package main

import (
	"flag"
	"fmt"
	"log"
	"net/url"

	"libprefork.dev/prefork"
)

func handler(req *prefork.Request, resp *prefork.Response) {
	switch string(req.Path()) {
	case "/":
		resp.AddHeader("Content-Type", "text/plain")
		resp.WriteString("Hello, World!")
	case "/users":
		query, _ := url.ParseQuery(req.QueryString())
		resp.AddHeader("Content-Type", "application/json")
		fmt.Fprintf(resp, `{"id":%q}`, query.Get("id"))
	default:
		resp.SetStatus(404)
		resp.WriteString("not found")
	}
}

func main() {
	addr := flag.String("addr", ":8080", "listen address")
	children := flag.Int("children", 0, "child processes (0: one per CPU)")
	flag.Parse()

	p := prefork.New(handler)
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
