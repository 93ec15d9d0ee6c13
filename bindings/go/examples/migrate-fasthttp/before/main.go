// Command before is the fasthttp prefork program that bindings/go/README.md's migration guide
// starts from: a fasthttp.Server in preforked children, with github.com/valyala/fasthttp/prefork.
// Its three migrations are ../servefunc, ../../migrate-handler and ../../migrate-nethttp.
package main

import (
	"flag"
	"fmt"
	"log"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/prefork"
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
	flag.Parse()

	server := &fasthttp.Server{Handler: handler}
	p := prefork.New(server)
	p.RecoverThreshold = 4
	if err := p.ListenAndServe(*addr); err != nil {
		log.Fatal(err)
	}
}
