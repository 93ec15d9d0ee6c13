//! `prefork_response`: builders over [`crate::Response`].

use std::ffi::{c_char, c_int, c_void};

use super::convert::{bytes_arg, null_arg};
use super::error::{FfiError, prefork_result};
use crate::Response;

/// The response to the request being handled, valid only during one `handle` callback (or,
/// for a deferred response's, until its `prefork_deferred_free`). Opaque: fill it with the
/// `prefork_response_*` functions on the thread running the callback (for a deferred
/// response, on one thread at a time). It starts as status 200 with no headers and an empty
/// body; the engine adds Content-Length, Date and Connection itself.
pub struct prefork_response {
    _opaque: [u8; 0],
}

/// The response behind the opaque pointer `handle` received.
///
/// # Safety
/// `resp` must be NULL or the pointer of a `handle` callback that is still running.
#[inline(always)]
pub(super) unsafe fn response<'a>(
    resp: *mut prefork_response,
) -> Result<&'a mut Response, FfiError> {
    // SAFETY: CHandler::handle made this pointer from a live `&mut Response` (see above).
    match unsafe { resp.cast::<Response>().as_mut() } {
        Some(r) => Ok(r),
        None => Err(null_arg("resp")),
    }
}

/// Sets the status code (200 until set). Returns PREFORK_ERR_INVALID_ARGUMENT, leaving the
/// status unchanged, outside 200..599 (1xx responses are the engine's). A 204 or 304 response
/// is sent without Content-Length, Transfer-Encoding or body (RFC 9110 §6.4.1): a body written
/// or streamed for it is dropped, and the child logs that once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_response_set_status(
    resp: *mut prefork_response,
    status: c_int,
) -> prefork_result {
    ffi_boundary!({
        let resp = unsafe { response(resp) }?;
        resp.set_status(status_arg(status)?)?;
        Ok(prefork_result::PREFORK_OK)
    })
}

/// A C status as the `u16` of [`Response`]; out of that range it is out of 200..=599 too.
fn status_arg(status: c_int) -> Result<u16, FfiError> {
    u16::try_from(status)
        .map_err(|_| FfiError::invalid(format!("status {status} is outside 200..=599")))
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

/// Answers in one call: sets the status, adds the field `Content-Type: <content_type>`
/// (`content_type_len` bytes; no field when it is 0) and replaces the body with `body_len`
/// bytes at `body` (copied). It does what `prefork_response_set_status`,
/// `prefork_response_add_header` and `prefork_response_set_body` would, with one call and one
/// result to check, and is the cheapest way to send a buffered answer. Fields added before
/// are kept. Either pointer may be NULL only with length 0. Returns PREFORK_ERR_NULL or
/// PREFORK_ERR_INVALID_ARGUMENT (for a status outside 200..599 or a control character in
/// `content_type`), changing nothing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_response_reply(
    resp: *mut prefork_response,
    status: c_int,
    content_type: *const c_char,
    content_type_len: usize,
    body: *const c_void,
    body_len: usize,
) -> prefork_result {
    ffi_boundary!({
        let resp = unsafe { response(resp) }?;
        let content_type =
            unsafe { bytes_arg(content_type.cast(), content_type_len, "content_type") }?;
        let body = unsafe { bytes_arg(body, body_len, "body") }?;
        resp.reply(status_arg(status)?, content_type, body)?;
        Ok(prefork_result::PREFORK_OK)
    })
}

/// Produces a streamed body: copies up to `cap` bytes into `buf` and returns how many, 0 at
/// the end of the body, or -1 on error.
type ReadFn = unsafe extern "C" fn(*mut c_void, *mut c_char, usize) -> isize;

/// The C reader behind [`Response::set_body_stream`]; owns `user_data` (finalizer on drop).
struct CStream {
    read: ReadFn,
    user_data: *mut c_void,
    user_data_free: Option<unsafe extern "C" fn(*mut c_void)>,
}

// SAFETY: the library only passes user_data back to the caller's callbacks;
// prefork_response_set_body_stream's documentation makes their use from the child's
// event-loop thread the caller's responsibility.
unsafe impl Send for CStream {}

impl std::io::Read for CStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // SAFETY: the caller's callback, given a writable buffer of buf.len() bytes.
        let n = unsafe { (self.read)(self.user_data, buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            Ok(n) if n <= buf.len() => Ok(n),
            Ok(n) => Err(std::io::Error::other(format!(
                "the body stream's read returned {n}, more than the {} bytes asked for",
                buf.len()
            ))),
            Err(_) => Err(std::io::Error::other(format!(
                "the body stream's read returned {n}"
            ))),
        }
    }
}

impl Drop for CStream {
    fn drop(&mut self) {
        if let Some(free) = self.user_data_free {
            // SAFETY: the caller's finalizer, called once with its own user_data.
            unsafe { free(self.user_data) }
        }
    }
}

/// Streams the body from `read` instead of a buffer, for a body whose length is not known in
/// advance: HTTP/1.1 clients get it chunked (`Transfer-Encoding: chunked`), HTTP/1.0 clients
/// get the bytes as they come and the connection is closed after them. It replaces any
/// buffered body, and later `prefork_response_write` / `prefork_response_set_body` calls
/// are ignored. Call it during `handle`.
///
/// After `handle` returns, the child calls `read(user_data, buf, cap)` on its event-loop
/// thread whenever the connection can take more output, until `read` returns 0 (end of the
/// body). `read` copies at most `cap` bytes into `buf` and returns how many; it must return
/// promptly, since a `read` that blocks stalls every connection of the child. Returning -1
/// (or any value above `cap`) ends the response early and closes the connection, so an
/// HTTP/1.1 client sees the body as truncated. For HEAD requests and 204/304 responses
/// `read` is never called.
///
/// `user_data_free` (optional) is called once with `user_data`, in the child, when the stream
/// is finished with: after the last `read`, when the connection closed early, or right away if
/// the body is not sent. Returns PREFORK_ERR_NULL (taking nothing over) for a NULL `resp` or
/// `read`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_response_set_body_stream(
    resp: *mut prefork_response,
    read: Option<
        unsafe extern "C" fn(user_data: *mut c_void, buf: *mut c_char, cap: usize) -> isize,
    >,
    user_data: *mut c_void,
    user_data_free: Option<unsafe extern "C" fn(user_data: *mut c_void)>,
) -> prefork_result {
    ffi_boundary!({
        let resp = unsafe { response(resp) }?;
        let read: ReadFn = read.ok_or_else(|| FfiError::null("read"))?;
        resp.set_body_stream(CStream {
            read,
            user_data,
            user_data_free,
        });
        Ok(prefork_result::PREFORK_OK)
    })
}
