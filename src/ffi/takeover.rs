//! `prefork_deferred` and `prefork_conn`: a response its handler completes later, and a
//! connection its handler takes over, over [`crate::Deferred`] and [`crate::Hijacked`].

use std::ffi::{c_int, c_void};
use std::os::fd::AsRawFd;

use super::convert::{prefork_str, ref_arg};
use super::error::{FfiError, prefork_result};
use super::response::{prefork_response, response};
use super::user_data::UserData;
use crate::{Deferred, Hijacked};

/// A response its handler took over with `prefork_response_defer`, to complete later from any
/// thread. Opaque. The caller owns it and frees it with `prefork_deferred_free`, exactly once,
/// whether it was completed or not; any thread may do both, one thread at a time.
pub struct prefork_deferred {
    deferred: Deferred,
}

/// A connection its handler took over with `prefork_response_hijack`: a connected TCP socket
/// the library no longer watches, and the bytes it had already read past the request. Opaque.
/// The callee of `on_conn` owns it and releases it with `prefork_conn_close`, exactly once,
/// from any thread.
pub struct prefork_conn {
    conn: Hijacked,
}

/// Takes the response over, so that `handle` may return at once and any thread complete the
/// response later: stores in `*out` a new handle, owned by the caller. Fill its response
/// (`prefork_deferred_response`) as `handle` would have, then send it with
/// `prefork_deferred_complete`, and release the handle with `prefork_deferred_free`. What was
/// set on `resp` so far moves into the handle; after this call, changes to `resp` are ignored.
///
/// The connection waits: its later (pipelined) requests are answered after this response,
/// so responses keep their order. Completing wakes the child's event loop, which sends the
/// response in its turn. A handle freed without being completed answers 500 and closes the
/// connection. A response still pending when the child drains is answered 503 as the grace
/// period ends (at most 250 ms before, so that the child may still exit by itself, running
/// `exit_child`, before the master's SIGKILL). A completion after the client left, or after the child stopped serving
/// (the handle outlives the server: complete and free it even after `prefork_free`), is
/// accepted and dropped. A client that closes its side of the connection meanwhile counts as
/// gone: the connection is closed at once rather than held until the completion.
///
/// Call it during `handle` (on any thread it runs on), on the `resp` it was given, at most
/// once. The request's views die when `handle` returns: copy what the answer needs first.
/// Returns PREFORK_ERR_NULL for a NULL argument and PREFORK_ERR_STATE for a response that is
/// not the one `handle` was given, or was deferred already; `*out` is then untouched.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_response_defer(
    resp: *mut prefork_response,
    out: *mut *mut prefork_deferred,
) -> prefork_result {
    ffi_boundary!({
        let resp = unsafe { response(resp) }?;
        if out.is_null() {
            return Err(FfiError::null("out"));
        }
        let deferred = resp.defer()?;
        let handle = Box::into_raw(Box::new(prefork_deferred { deferred }));
        // SAFETY: checked non-NULL; the caller's contract makes it writable.
        unsafe { *out = handle };
        Ok(prefork_result::PREFORK_OK)
    })
}

/// The response of a deferred handle, to fill with the `prefork_response_*` functions (as in
/// `handle`, including `prefork_response_hijack`). Valid until `prefork_deferred_free(d)`;
/// once `d` was completed, changes to it are ignored. NULL if `d` is NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_deferred_response(
    d: *mut prefork_deferred,
) -> *mut prefork_response {
    ffi_boundary!({
        // SAFETY: the caller's contract: NULL or a handle not yet freed.
        let d = unsafe { d.as_mut() }.ok_or_else(|| FfiError::null("d"))?;
        let resp: *mut crate::Response = d.deferred.response();
        Ok(resp.cast())
    })
}

/// Sends the deferred response: the child's event loop wakes and writes it in its turn. If
/// the client left, or the child stopped serving (even if `prefork_free` freed the server
/// since), the response is dropped and PREFORK_OK returned all the same. The handle stays the
/// caller's to free. Returns PREFORK_ERR_NULL for a NULL `d`, PREFORK_ERR_STATE if it was
/// completed already.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_deferred_complete(d: *mut prefork_deferred) -> prefork_result {
    ffi_boundary!({
        // SAFETY: the caller's contract: NULL or a handle not yet freed.
        let d = unsafe { d.as_mut() }.ok_or_else(|| FfiError::null("d"))?;
        d.deferred.complete_in_place()?;
        Ok(prefork_result::PREFORK_OK)
    })
}

/// Releases a deferred handle; NULL is accepted. One that was not completed answers 500 and
/// closes the connection. `d`, and the response `prefork_deferred_response` returned for it,
/// must not be used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_deferred_free(d: *mut prefork_deferred) {
    ffi_boundary!({
        if !d.is_null() {
            // SAFETY: the caller's contract: a handle from prefork_response_defer, freed once.
            drop(unsafe { Box::from_raw(d) });
        }
        Ok(())
    })
}

type OnConnFn = unsafe extern "C" fn(*mut c_void, *mut prefork_conn);

/// Takes the connection after this response: once it is written (and every response before it
/// on the connection), the child forgets the connection and calls `on_conn(user_data, conn)`
/// on its event-loop thread. `conn` holds the socket (blocking, close-on-exec) and the bytes
/// the client sent after this request that the child had already read (pipelined requests,
/// or the new protocol's first bytes): read those first. `on_conn` should return promptly,
/// handing the connection to a thread of its own; `conn` is its to close.
///
/// For a protocol upgrade, call `prefork_response_set_status(resp, 101)` after this call (101
/// is accepted only then), and add an `Upgrade` field naming the protocol, only for an
/// HTTP/1.1 request that asked for it in its own `Upgrade` field; the library sends
/// `Connection: Upgrade` with it. Any other response is sent with `Connection: close` (the
/// HTTP exchange ends with it), then the connection is handed over. Works on the response
/// `handle` was given and on a deferred one's.
///
/// The connection counts toward max_connections until `prefork_conn_close`, which is how the
/// library learns it closed. The child's drain does not wait for it: it ends when the child
/// exits (after `exit_child`).
///
/// `user_data_free` (optional) is called once with `user_data`, in the child, when `on_conn`
/// has returned, or instead of `on_conn` when the connection closes before the response is
/// written: on the event-loop thread, or for a deferred response that was dropped, on the
/// thread that completed it. Returns PREFORK_ERR_NULL for a NULL `resp` or `on_conn`,
/// PREFORK_ERR_STATE for a response already hijacked (or one the library does not send), and
/// PREFORK_ERR_UNSUPPORTED when the connection's transport is not a plain socket (a TLS
/// connection); `user_data` is then not taken over.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_response_hijack(
    resp: *mut prefork_response,
    on_conn: Option<unsafe extern "C" fn(user_data: *mut c_void, conn: *mut prefork_conn)>,
    user_data: *mut c_void,
    user_data_free: Option<unsafe extern "C" fn(user_data: *mut c_void)>,
) -> prefork_result {
    ffi_boundary!({
        let resp = unsafe { response(resp) }?;
        let on_conn: OnConnFn = on_conn.ok_or_else(|| FfiError::null("on_conn"))?;
        // Checked first: a refused hijack must leave user_data to the caller.
        resp.check_hijack()?;
        let hook = ConnHook {
            on_conn,
            user_data: UserData::new(user_data, user_data_free),
        };
        resp.hijack(move |conn| hook.call(conn))?;
        Ok(prefork_result::PREFORK_OK)
    })
}

/// The C callback of a hijack; owns `user_data` (freed when the hook is called or dropped).
struct ConnHook {
    on_conn: OnConnFn,
    user_data: UserData,
}

impl ConnHook {
    fn call(self, conn: Hijacked) {
        let conn = Box::into_raw(Box::new(prefork_conn { conn }));
        // SAFETY: the caller's callback with its own user_data; `conn` is now the callee's.
        unsafe { (self.on_conn)(self.user_data.ptr(), conn) };
    }
}

/// The socket of a taken-over connection, owned by `conn` (close it with
/// `prefork_conn_close`, never with close(2)). -1 if `conn` is NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_conn_fd(conn: *const prefork_conn) -> c_int {
    ffi_boundary!({ Ok(unsafe { ref_arg(conn, "conn") }?.conn.as_raw_fd()) })
}

/// The bytes the client sent after the request that the child had already read: the start of
/// what the new owner reads, before anything read from the socket. Valid until
/// `prefork_conn_close(conn)`; empty if `conn` is NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_conn_leftover(conn: *const prefork_conn) -> prefork_str {
    ffi_boundary!({
        Ok(prefork_str::from_bytes(
            unsafe { ref_arg(conn, "conn") }?.conn.leftover(),
        ))
    })
}

/// Closes the socket of a taken-over connection and releases `conn`; NULL is accepted. Its
/// place under max_connections is free again. Callable from any thread, once per connection;
/// `conn` must not be used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_conn_close(conn: *mut prefork_conn) {
    ffi_boundary!({
        if !conn.is_null() {
            // SAFETY: the caller's contract: a connection from on_conn, closed once.
            drop(unsafe { Box::from_raw(conn) });
        }
        Ok(())
    })
}
