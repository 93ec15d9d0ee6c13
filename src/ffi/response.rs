//! `prefork_response`: builders over [`crate::Response`].

use std::ffi::{c_char, c_int, c_void};

use super::error::{FfiError, prefork_result};
use super::slice::bytes_arg;
use crate::Response;

/// The response to the request being handled, valid only during one `handle` callback.
/// Opaque: fill it with the `prefork_response_*` functions on the thread running the
/// callback. It starts as status 200 with no headers and an empty body; the engine adds
/// Content-Length, Date and Connection itself.
pub struct prefork_response {
    _opaque: [u8; 0],
}

/// The response behind the opaque pointer `handle` received.
///
/// # Safety
/// `resp` must be NULL or the pointer of a `handle` callback that is still running.
unsafe fn response<'a>(resp: *mut prefork_response) -> Result<&'a mut Response, FfiError> {
    // SAFETY: CHandler::handle made this pointer from a live `&mut Response` (see above).
    unsafe { resp.cast::<Response>().as_mut() }.ok_or_else(|| FfiError::null("resp"))
}

/// Sets the status code (200 until set). Returns PREFORK_ERR_INVALID_ARGUMENT, leaving the
/// status unchanged, outside 200..599 (1xx responses are the engine's).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_response_set_status(
    resp: *mut prefork_response,
    status: c_int,
) -> prefork_result {
    ffi_boundary!({
        let resp = unsafe { response(resp) }?;
        let code = u16::try_from(status)
            .map_err(|_| FfiError::invalid(format!("status {status} is outside 200..=599")))?;
        resp.set_status(code)?;
        Ok(prefork_result::PREFORK_OK)
    })
}

/// Adds a header field; the bytes are copied. `name` (`name_len` bytes) must be an HTTP
/// token; `value` (`value_len` bytes) must hold no control characters other than tab. Either
/// pointer may be NULL only with length 0. Content-Length, Transfer-Encoding and Date are
/// set by the engine and refused; "Connection: close" closes the connection after this
/// response. Returns PREFORK_ERR_INVALID_ARGUMENT (nothing added) for a bad field.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_response_add_header(
    resp: *mut prefork_response,
    name: *const c_char,
    name_len: usize,
    value: *const c_char,
    value_len: usize,
) -> prefork_result {
    ffi_boundary!({
        let resp = unsafe { response(resp) }?;
        let name = unsafe { bytes_arg(name.cast(), name_len, "name") }?;
        let value = unsafe { bytes_arg(value.cast(), value_len, "value") }?;
        resp.add_header(name, value)?;
        Ok(prefork_result::PREFORK_OK)
    })
}

/// Appends `len` bytes at `data` to the body (copied; `data` may be NULL only with `len` 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_response_write(
    resp: *mut prefork_response,
    data: *const c_void,
    len: usize,
) -> prefork_result {
    ffi_boundary!({
        let resp = unsafe { response(resp) }?;
        resp.write(unsafe { bytes_arg(data, len, "data") }?);
        Ok(prefork_result::PREFORK_OK)
    })
}

/// Replaces the body with `len` bytes at `data` (copied; `data` may be NULL only with
/// `len` 0, which empties the body).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_response_set_body(
    resp: *mut prefork_response,
    data: *const c_void,
    len: usize,
) -> prefork_result {
    ffi_boundary!({
        let resp = unsafe { response(resp) }?;
        resp.set_body(unsafe { bytes_arg(data, len, "data") }?);
        Ok(prefork_result::PREFORK_OK)
    })
}
