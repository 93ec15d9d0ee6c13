// The migration guide's programs that import fasthttp (bindings/go/README.md): a module of
// their own, so that every package of libprefork.dev/prefork imports only the standard
// library (fasthttp is a test dependency there).
module libprefork.dev/prefork/examples/migrate-fasthttp

go 1.22

require (
	github.com/valyala/fasthttp v1.59.0
	libprefork.dev/prefork v0.0.0
)

require (
	github.com/andybalholm/brotli v1.1.1 // indirect
	github.com/klauspost/compress v1.17.11 // indirect
	github.com/valyala/bytebufferpool v1.0.0 // indirect
	golang.org/x/sys v0.30.0 // indirect
)

replace libprefork.dev/prefork => ../..
