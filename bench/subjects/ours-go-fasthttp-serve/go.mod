// The benchmark's ours-go-fasthttp-serve subject: the fasthttp peer's server as a ServeFunc
// under libprefork (bindings/go), with the peer's fasthttp version (bench/peers/fasthttp).
module libprefork.dev/bench/fasthttp-serve

go 1.26.8

require (
	github.com/valyala/fasthttp v1.78.0
	libprefork.dev/prefork v0.0.0
)

require (
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/molecule-man/go-brrr v1.3.1 // indirect
	github.com/valyala/bytebufferpool v1.0.0 // indirect
)

replace libprefork.dev/prefork => ../../../bindings/go
