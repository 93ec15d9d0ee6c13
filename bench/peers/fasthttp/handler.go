// The fasthttp peer's handler, in a file of its own: the ours-go-fasthttp-serve subject links
// to this file, so that serve mode is measured with this very handler.

package main

import (
	"os"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"
)

var hello = []byte("Hello, World!")

func handler(ctx *fasthttp.RequestCtx) {
	switch string(ctx.Path()) {
	case "/":
		ctx.SetContentType("text/plain")
		ctx.Write(hello)
	case "/pid":
		ctx.SetContentType("text/plain")
		ctx.WriteString(strconv.Itoa(os.Getpid()))
	case "/sleep":
		ms, err := ctx.QueryArgs().GetUint("ms")
		if err != nil {
			ms = 0
		}
		time.Sleep(time.Duration(ms) * time.Millisecond)
		ctx.SetContentType("text/plain")
		ctx.WriteString("slept")
	default:
		ctx.Error("not found", fasthttp.StatusNotFound)
	}
}
