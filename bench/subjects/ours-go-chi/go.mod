// The benchmark's chi subjects (ours-go-chi, nethttp-chi): one router on libprefork's engine
// through the Go binding's net/http adapter, and on net/http alone.
module libprefork.dev/bench/chi-hello

go 1.22

require (
	github.com/go-chi/chi/v5 v5.2.3
	libprefork.dev/prefork v0.0.0
)

replace libprefork.dev/prefork => ../../../bindings/go
