// Command migrate-nethttp is the fasthttp prefork program of the migration guide
// (bindings/go/README.md) moved to libprefork's own HTTP engine with net/http handlers: a
// standard http.ServeMux (any http.Handler: chi, gorilla/mux) through prefork.HTTPHandler.
//
//	migrate-nethttp --addr 127.0.0.1:8080 --children 2
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"

	"libprefork.dev/prefork"
)

func routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "Hello, World!")
	})
	mux.HandleFunc("GET /users", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":%q}`, r.URL.Query().Get("id"))
	})
	return mux
}

func main() {
	addr := flag.String("addr", ":8080", "listen address")
	children := flag.Int("children", 0, "child processes (0: one per CPU)")
	flag.Parse()

	p := prefork.New(prefork.HTTPHandler(routes()))
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
