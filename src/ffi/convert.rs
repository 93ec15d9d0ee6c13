//! Conversions across the boundary, shared by every export: borrowed byte views and address
//! text handed to C, checked C arguments taken in.

use std::ffi::{CStr, OsStr, c_char, c_void};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::error::FfiError;

/// A borrowed view of bytes: `len` bytes at `ptr`, NOT NUL-terminated (use `%.*s` or
/// `fwrite` to print it). `ptr` is never NULL, even when `len` is 0. The bytes belong to the
/// library; how long they stay valid is said by the function that returned the view.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct prefork_str {
    /// First byte; never NULL.
    pub ptr: *const c_char,
    /// Number of bytes.
    pub len: usize,
}

impl prefork_str {
    /// Empty, with a valid pointer: C code may pass it to `memcmp` or `memcpy` as is.
    pub(crate) const EMPTY: prefork_str = prefork_str {
        ptr: c"".as_ptr(),
        len: 0,
    };

    pub(crate) fn from_bytes(bytes: &[u8]) -> prefork_str {
        if bytes.is_empty() {
            prefork_str::EMPTY
        } else {
            prefork_str {
                ptr: bytes.as_ptr().cast(),
                len: bytes.len(),
            }
        }
    }
}

/// `len` bytes at `ptr`; NULL is accepted only with `len == 0`.
///
/// # Safety
/// A non-NULL `ptr` must point to `len` readable bytes that stay valid for `'a`.
// Inlined, with the failures out of line: the response builders run several times per request
// and this check was a third of their cost (callgrind).
#[inline(always)]
pub(crate) unsafe fn bytes_arg<'a>(
    ptr: *const c_void,
    len: usize,
    arg: &str,
) -> Result<&'a [u8], FfiError> {
    if !ptr.is_null() && len <= isize::MAX as usize {
        // SAFETY: the caller's contract (see above); the length was checked against isize::MAX.
        return Ok(unsafe { std::slice::from_raw_parts(ptr.cast(), len) });
    }
    if ptr.is_null() && len == 0 {
        return Ok(&[]);
    }
    Err(bad_bytes_arg(ptr.is_null(), len, arg))
}

#[cold]
#[inline(never)]
fn bad_bytes_arg(null: bool, len: usize, arg: &str) -> FfiError {
    if null {
        FfiError::null(arg)
    } else {
        FfiError::invalid(format!("{arg}: length {len} is not a valid size"))
    }
}

/// A NUL-terminated file name argument, any bytes but NUL (Linux paths need not be UTF-8).
///
/// # Safety
/// A non-NULL `ptr` must point to a NUL-terminated string.
pub(crate) unsafe fn path_arg(ptr: *const c_char, arg: &str) -> Result<PathBuf, FfiError> {
    if ptr.is_null() {
        return Err(FfiError::null(arg));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    Ok(PathBuf::from(OsStr::from_bytes(bytes)))
}

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// A non-NULL `ptr` must point to a NUL-terminated string that stays valid for `'a`.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, arg: &str) -> Result<&'a str, FfiError> {
    if ptr.is_null() {
        return Err(FfiError::null(arg));
    }
    // SAFETY: the caller's contract (see above).
    let text = unsafe { CStr::from_ptr(ptr) };
    text.to_str()
        .map_err(|_| FfiError::invalid(format!("{arg} is not valid UTF-8")))
}

/// A shared reference to a handle-like argument.
///
/// # Safety
/// A non-NULL `ptr` must point to a live `T` for `'a`.
#[inline(always)]
pub(crate) unsafe fn ref_arg<'a, T>(ptr: *const T, arg: &str) -> Result<&'a T, FfiError> {
    // SAFETY: the caller's contract (see above).
    match unsafe { ptr.as_ref() } {
        Some(r) => Ok(r),
        None => Err(null_arg(arg)),
    }
}

#[cold]
#[inline(never)]
pub(crate) fn null_arg(arg: &str) -> FfiError {
    FfiError::null(arg)
}

/// Buffer size that always suffices for `prefork_request_peer_addr`, `prefork_local_addr`,
/// `prefork_listener_addr` and `prefork_request_local_addr`: "unix:" and the longest Unix
/// socket path (107 bytes), plus the NUL. (It was 64 before Unix sockets: a program built with
/// that value gets PREFORK_ERR_INVALID_ARGUMENT for a longer Unix address, never a cut one.)
pub const PREFORK_ADDR_STRLEN: usize = 128;

/// Size of the buffer `prefork_request_peer_ip` writes an IP address to: an IPv6 address's.
pub const PREFORK_IP_BYTES: usize = 16;

/// Writes `addr` as NUL-terminated text into `buf` (`cap` bytes), or fails without writing.
///
/// # Safety
/// `buf` must be non-NULL and point to `cap` writable bytes.
pub(crate) unsafe fn write_addr(
    addr: SocketAddr,
    buf: *mut c_char,
    cap: usize,
) -> Result<(), FfiError> {
    unsafe { write_text(format_args!("{addr}"), buf, cap) }
}

/// Writes an address's text (at most `PREFORK_ADDR_STRLEN` - 1 bytes) NUL-terminated into
/// `buf` (`cap` bytes), or fails without writing.
///
/// # Safety
/// `buf` must be non-NULL and point to `cap` writable bytes.
pub(crate) unsafe fn write_text(
    addr: std::fmt::Arguments<'_>,
    buf: *mut c_char,
    cap: usize,
) -> Result<(), FfiError> {
    let mut text = [0u8; PREFORK_ADDR_STRLEN];
    let mut cursor = &mut text[..PREFORK_ADDR_STRLEN - 1];
    cursor
        .write_fmt(addr)
        .map_err(|_| FfiError::invalid("address text too long"))?;
    let len = PREFORK_ADDR_STRLEN - 1 - cursor.len();
    if len + 1 > cap {
        return Err(FfiError::invalid(format!(
            "buf: {cap} bytes cannot hold the address ({} needed)",
            len + 1
        )));
    }
    // SAFETY: buf has room for cap >= len + 1 bytes (the caller's contract); text ends in 0.
    unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), len + 1) };
    Ok(())
}
