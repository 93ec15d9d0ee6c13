//! `prefork_version`. The version macros of the header (PREFORK_VERSION_MAJOR, _MINOR, _PATCH
//! and PREFORK_VERSION) are in cbindgen.toml's `after_includes`, because cbindgen cannot emit
//! a C99 string macro from a Rust constant; `tests/header.rs` keeps them on Cargo.toml's.

use std::ffi::c_char;

/// The version of the loaded library, "MAJOR.MINOR.PATCH": compare it with `PREFORK_VERSION`
/// to detect a header/library mismatch. A static string, never NULL; callable at any time.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_version() -> *const c_char {
    ffi_boundary!({ Ok(concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()) })
}
