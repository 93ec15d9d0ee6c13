//go:build !prefork_static

package prefork

// By default the package links the shared library that `cargo build --release` leaves in the
// repository's target/release (with an rpath to it, so binaries run without LD_LIBRARY_PATH).
// The library's soname is libprefork.so.0: `ln -sf libprefork.so target/release/libprefork.so.0`
// once after building (scripts/test.d/40-go.sh does it). To link elsewhere, set CGO_LDFLAGS:
// its -L and -rpath come before these.

// #cgo CFLAGS: -I${SRCDIR}/../../include
// #cgo LDFLAGS: -L${SRCDIR}/../../target/release -Wl,-rpath,${SRCDIR}/../../target/release -lprefork
import "C"
