#!/usr/bin/env bash
# The Go binding (bindings/go): links the libprefork the Rust stage built, then go vet and go
# test, whose tests run real preforking servers (the test binary re-executed as master and
# children) on 127.0.0.1: requests, a handler panic, a killed child replaced, SIGTERM, no
# process left; net/http and fasthttp servers as ServeFunc; a chi router through HTTPHandler.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

if ! command -v go >/dev/null; then
  cat >&2 <<'MSG'
40-go: FAILED: no go command on PATH (nor in /usr/local/go/bin), and this stage needs Go 1.22 or
newer, with cgo, to test bindings/go. Install it, then rerun scripts/test:
  - the official archive from https://go.dev/dl/ unpacked into /usr/local (scripts/test adds
    /usr/local/go/bin to PATH itself), or
  - your distribution's package if it is 1.22 or newer (apt-get install golang-go; check
    `go version`: Debian 12's is 1.19, too old for this module).
MSG
  exit 1
fi
have=$(go env GOVERSION 2>/dev/null || true)
minor=$(sed -n 's/^go1\.\([0-9]*\).*/\1/p' <<<"$have")
if [ -z "$minor" ] || [ "$minor" -lt 22 ]; then
  echo "40-go: FAILED: bindings/go needs Go 1.22 or newer; $(command -v go) is ${have:-unknown}" >&2
  exit 1
fi
command -v gcc >/dev/null || command -v cc >/dev/null || {
  echo "no C compiler (gcc or cc): cgo needs one to build bindings/go" >&2
  exit 1
}
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }

# The debug library of the Rust stage, in the repository's target dir (a no-op build when that
# stage ran: one build of the library serves every stage). CGO_LDFLAGS puts it ahead of the
# cgo directives' target/release, which is for users who build a release library by hand.
target=${CARGO_TARGET_DIR:-$repo/target}
cargo build --lib --locked --target-dir "$target"
lib=$target/debug
# Binaries record the soname (libprefork.so.0), which cargo does not lay out.
ln -sf libprefork.so "$lib/libprefork.so.0"

cd bindings/go
export CGO_ENABLED=1
export CGO_LDFLAGS="-L$lib -Wl,-rpath,$lib ${CGO_LDFLAGS:-}"
# No toolchain download. The package has no dependencies; its tests have some (fasthttp, to
# run fasthttp.Server under ServeFunc, chi, a router for HTTPHandler, and coder/websocket, for
# the WebSocket echo over a hijacked connection), which go test fetches from the module proxy
# (GOPROXY, proxy.golang.org by default) into the module cache on a fresh machine and checks
# against go.sum.
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
  echo "gofmt: these files need formatting: $unformatted" >&2
  exit 1
fi
go vet ./...
go build -o /dev/null ./examples/hello
# Each test bounds its own waits (15 s); -timeout is the backstop, timeout(1) the last resort.
timeout 300 go test -count=1 -timeout 180s ./...
