//! `prefork_handler`: the C request-handler vtable, adapted to [`crate::Handler`].

use std::ffi::{c_int, c_void};

use super::error::FfiError;
use super::extensible::Extensible;
use super::request::prefork_request;
use super::response::prefork_response;
use super::user_data::UserData;
use crate::{HookError, Request, Response};

/// The application: what `prefork_new` takes, as Go's `prefork.New(server)` takes the server.
///
/// The same program runs as master and as every child (each child is a fresh `exec` of it),
/// so `user_data` is built by `main` in each process before `prefork_new`. Only the children
/// call `init_child`, `handle` and `exit_child`; the master never does.
///
/// Extensible: members are only ever added at the end, and a member a program does not know
/// of reads as NULL (unset). Initialise it by member name, with every other member zero
/// (`prefork_handler h = {0}; h.handle = my_handle;`, or C99 designated initialisers), and
/// pass it to the `prefork_new` macro, which hands the library `sizeof(prefork_handler)`.
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

// SAFETY: raw pointers and optional function pointers only, so all-zero is the unset value.
unsafe impl Extensible for prefork_handler {
    const NAME: &'static str = "prefork_handler";
    const SINCE: &'static str = "0.1";
    // user_data, init_child, handle, exit_child, user_data_free.
    const FIRST_SIZE: usize = size_of::<[usize; 5]>();
}

type HandleFn = unsafe extern "C" fn(*mut c_void, *const prefork_request, *mut prefork_response);

/// The vtable behind `crate::Handler`; owns `user_data` (its finalizer runs on drop).
pub(crate) struct CHandler {
    init_child: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
    handle: HandleFn,
    exit_child: Option<unsafe extern "C" fn(*mut c_void)>,
    user_data: UserData,
}

impl CHandler {
    /// Fails, without taking `user_data`, when the required `handle` is missing.
    pub(crate) fn new(vtable: prefork_handler) -> Result<CHandler, FfiError> {
        let handle = vtable
            .handle
            .ok_or_else(|| FfiError::null("handler->handle"))?;
        Ok(CHandler {
            init_child: vtable.init_child,
            handle,
            exit_child: vtable.exit_child,
            user_data: UserData::new(vtable.user_data, vtable.user_data_free),
        })
    }
}

impl crate::Handler for CHandler {
    fn init_child(&self) -> Result<(), HookError> {
        let Some(init) = self.init_child else {
            return Ok(());
        };
        // SAFETY: a callback of the caller's vtable with its own user_data.
        match unsafe { init(self.user_data.ptr()) } {
            0 => Ok(()),
            code => Err(format!("the handler's init_child returned {code}").into()),
        }
    }

    fn handle(&self, req: &Request<'_>, resp: &mut Response) {
        let req: *const Request<'_> = req;
        let resp: *mut Response = resp;
        // SAFETY: both pointers are live for the whole call; the accessors cast them back.
        unsafe { (self.handle)(self.user_data.ptr(), req.cast(), resp.cast()) }
    }

    fn exit_child(&self) {
        if let Some(exit) = self.exit_child {
            // SAFETY: a callback of the caller's vtable with its own user_data.
            unsafe { exit(self.user_data.ptr()) }
        }
    }
}
