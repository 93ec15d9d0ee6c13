// chi-hello: one chi router (github.com/go-chi/chi/v5) served two ways, the benchmark's pair of
// subjects for the Go binding's net/http adapter:
//
//	chi-hello --addr HOST:PORT --children N [--handler-threads N]
//	    libprefork's engine in N preforked children, through prefork.HTTPHandler (ours-go-chi)
//	chi-hello-nethttp --addr HOST:PORT
//	    net/http alone, one process (nethttp-chi; its ctl sets GOMAXPROCS to the child count,
//	    so it runs on the same cores), built with -tags nethttp: no libprefork linked
//
// Routes (GET / is what the grid measures; /pid and /sleep as the other subjects have them):
//
//	/                200 text/plain "Hello, World!"
//	/pid             the serving process's pid
//	/sleep?ms=N      200 "slept" after N milliseconds
//	/users/{id}      200 "user <id>"
//	/api/items       GET: a JSON list; POST: 201 with the body echoed
//
// Both print "ready pid=<pid> children=<pids>" once they serve (net/http: no children).
package main

import (
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
)

var hello = []byte("Hello, World!")

func router() http.Handler {
	r := chi.NewRouter()
	r.Get("/", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(hello)
	})
	r.Get("/pid", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, strconv.Itoa(os.Getpid()))
	})
	r.Get("/sleep", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "slept")
	})
	r.Get("/users/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "user "+chi.URLParam(r, "id"))
	})
	r.Route("/api", func(r chi.Router) {
		r.Get("/items", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `[{"id":1},{"id":2}]`)
		})
		r.Post("/items", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusCreated)
			io.Copy(w, r.Body)
		})
	})
	return r
}
