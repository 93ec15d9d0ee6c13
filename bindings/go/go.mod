module libprefork.dev/prefork

go 1.22

// Test dependencies only (servefunc_test.go runs fasthttp.Server as a ServeFunc); the
// package imports none. fasthttp v1.59.0 is the newest whose go.mod accepts Go 1.22.
require github.com/valyala/fasthttp v1.59.0

require (
	github.com/andybalholm/brotli v1.1.1 // indirect
	github.com/klauspost/compress v1.17.11 // indirect
	github.com/valyala/bytebufferpool v1.0.0 // indirect
)
