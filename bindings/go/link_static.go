//go:build prefork_static

package prefork

// With `-tags prefork_static` the Rust library is linked into the Go binary (libprefork.a):
// nothing to install next to the program. The system libraries are what
// `rustc --print native-static-libs` lists for the crate.

// #cgo CFLAGS: -I${SRCDIR}/../../include
// #cgo LDFLAGS: ${SRCDIR}/../../target/release/libprefork.a -lgcc_s -lutil -lrt -lpthread -lm -ldl
import "C"
