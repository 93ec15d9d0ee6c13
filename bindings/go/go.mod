module libprefork.dev/prefork

go 1.22

// Test dependencies only (servefunc_test.go runs fasthttp.Server as a ServeFunc,
// nethttp_test.go a chi router through HTTPHandler, deferred_test.go a WebSocket echo over a
// hijacked connection with coder/websocket); the package imports none. Each is the newest
// version whose go.mod accepts Go 1.22.
require (
	github.com/coder/websocket v1.8.13
	github.com/go-chi/chi/v5 v5.2.3
	github.com/valyala/fasthttp v1.59.0
)

require (
	github.com/andybalholm/brotli v1.1.1 // indirect
	github.com/klauspost/compress v1.17.11 // indirect
	github.com/valyala/bytebufferpool v1.0.0 // indirect
)
