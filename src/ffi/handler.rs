//! `prefork_handler`: the C request-handler vtable, adapted to [`crate::Handler`].

use std::ffi::{c_int, c_void};

use super::error::FfiError;
use super::request::prefork_request;
use super::response::prefork_response;
use crate::{HookError, Request, Response};

/// The application: what `prefork_new` takes, as Go's `prefork.New(server)` takes the server.
///
/// The same program runs as master and as every child (each child is a fresh `exec` of it),
/// so `user_data` is built by `main` in each process before `prefork_new`. Only the children
/// call `init_child`, `handle` and `exit_child`; the master never does.
///
/// The library copies this struct: it need not outlive the `prefork_new` call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct prefork_handler {
    /// Passed as the first argument of every callback below; the library never reads it.
    /// The caller guarantees that the callbacks may use it from the threads named below.
    pub user_data: *mut c_void,
    /// Optional (may be NULL). Runs once in each child, on the thread that called
    /// `prefork_listen_and_serve`, before the child reports ready: the place to build
    /// per-process state (connections, caches). Return 0 on success; nonzero makes the child
    /// exit, and the master counts that as a crash.
    pub init_child: Option<unsafe extern "C" fn(user_data: *mut c_void) -> c_int>,
    /// Required. Answers one request: read `req` with the `prefork_request_*` accessors and
    /// fill `resp` with the `prefork_response_*` builders (status 200 and an empty body until
    /// set). Both pointers, and every view obtained from them, are valid only until `handle`
    /// returns. Runs in a child, on its event-loop thread (the thread that called
    /// `prefork_listen_and_serve`), or, when `handler_threads` > 0, on one of the child's
    /// handler threads, concurrently with other calls: `user_data` must then be thread-safe.
    /// It must not call `prefork_free`, the setters or `prefork_listen_and_serve`.
    pub handle: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            req: *const prefork_request,
            resp: *mut prefork_response,
        ),
    >,
    /// Optional. Runs once in each child after it stopped serving (drained), on the thread that
    /// called `prefork_listen_and_serve`.
    pub exit_child: Option<unsafe extern "C" fn(user_data: *mut c_void)>,
    /// Optional finalizer: called once with `user_data` when the handle is freed by
    /// `prefork_free` (in every process that freed it), never when `prefork_new` failed.
    pub user_data_free: Option<unsafe extern "C" fn(user_data: *mut c_void)>,
}

type HandleFn = unsafe extern "C" fn(*mut c_void, *const prefork_request, *mut prefork_response);

/// The vtable behind `crate::Handler`; owns `user_data` (finalizer on drop).
pub(crate) struct CHandler {
    vtable: prefork_handler,
    handle: HandleFn,
}

// SAFETY: the library only passes `user_data` back to the caller's callbacks; prefork_handler's
// documentation makes its use from the named threads the caller's responsibility.
unsafe impl Send for CHandler {}
// SAFETY: as above: with handler_threads > 0 the caller guarantees concurrent use is safe.
unsafe impl Sync for CHandler {}

impl CHandler {
    pub(crate) fn new(vtable: prefork_handler) -> Result<CHandler, FfiError> {
        let handle = vtable
            .handle
            .ok_or_else(|| FfiError::null("handler->handle"))?;
        Ok(CHandler { vtable, handle })
    }
}

impl crate::Handler for CHandler {
    fn init_child(&self) -> Result<(), HookError> {
        let Some(init) = self.vtable.init_child else {
            return Ok(());
        };
        // SAFETY: a callback of the caller's vtable with its own user_data.
        match unsafe { init(self.vtable.user_data) } {
            0 => Ok(()),
            code => Err(format!("the handler's init_child returned {code}").into()),
        }
    }

    fn handle(&self, req: &Request<'_>, resp: &mut Response) {
        let req: *const Request<'_> = req;
        let resp: *mut Response = resp;
        // SAFETY: both pointers are live for the whole call; the accessors cast them back.
        unsafe { (self.handle)(self.vtable.user_data, req.cast(), resp.cast()) }
    }

    fn exit_child(&self) {
        if let Some(exit) = self.vtable.exit_child {
            // SAFETY: a callback of the caller's vtable with its own user_data.
            unsafe { exit(self.vtable.user_data) }
        }
    }
}

impl Drop for CHandler {
    fn drop(&mut self) {
        if let Some(free) = self.vtable.user_data_free {
            // SAFETY: runs once, when the last reference to the handler goes away.
            unsafe { free(self.vtable.user_data) }
        }
    }
}
