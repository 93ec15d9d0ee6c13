#!/usr/bin/env bash
# The Go binding (bindings/go): builds libprefork in release mode, then go vet and go test, whose
# tests run real preforking servers (the test binary re-executed as master and children) on
# 127.0.0.1: requests, a handler panic, a killed child replaced, SIGTERM, no process left.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

command -v go >/dev/null || {
  echo "go not found: install Go 1.22 or newer (https://go.dev/doc/install) to test bindings/go" >&2
  exit 1
}
command -v gcc >/dev/null || command -v cc >/dev/null || {
  echo "no C compiler (gcc or cc): cgo needs one to build bindings/go" >&2
  exit 1
}
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }

# The repository's target dir, shared with the other stages (the cgo directives point at
# target/release); CARGO_TARGET_DIR, when set, is followed through CGO_LDFLAGS instead.
target=${CARGO_TARGET_DIR:-$repo/target}
cargo build --release --lib --locked --target-dir "$target"
lib=$target/release
# Binaries record the soname (libprefork.so.0), which cargo does not lay out.
ln -sf libprefork.so "$lib/libprefork.so.0"

cd bindings/go
export CGO_ENABLED=1
export CGO_LDFLAGS="-L$lib -Wl,-rpath,$lib ${CGO_LDFLAGS:-}"
# No toolchain download; the module has no dependencies, so nothing else is fetched.
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
