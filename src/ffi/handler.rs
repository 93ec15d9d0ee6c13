//! `prefork_handler`: the C request-handler vtable, adapted to [`crate::Handler`].

use std::ffi::{c_int, c_void};
use std::mem::MaybeUninit;

use super::error::FfiError;
use super::extensible::Extensible;
use super::request::prefork_request;
use super::response::prefork_response;
use super::user_data::UserData;
use crate::{HookError, MAX_BATCH, Request, Response};

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
    /// Optional (since 0.2). Answers several requests in one call: for a handler whose every
    /// call is costly (a foreign-language runtime behind a callback, as the Go binding is),
    /// one call per turn of the event loop instead of one per request. When set, the event
    /// loop calls it instead of `handle` for the complete requests at the start of
    /// connections' inputs: those a turn of the loop found on several connections at once
    /// (at depth 1, one request on each of the connections that were ready), and the
    /// pipelined requests of a connection's read. `handle` stays required: it gets the
    /// requests completed otherwise (a head begun in an earlier read, a body that came later
    /// or chunked), those of a lone connection whose last read brought only one (a batch of
    /// one costs more than a call of `handle`), and every request on the handler threads
    /// (`handler_threads` > 0).
    ///
    /// `reqs[i]` is answered in `resps[i]`, for i in 0..`count`; `count` is between 1 and
    /// PREFORK_MAX_BATCH. A batch may hold requests of several connections
    /// (`prefork_request_peer_addr` tells them apart): each connection's are next to each
    /// other, in the order received, and end after one that closes the connection. Each
    /// request has its head and whole body in. The arrays, the pointers in them and every view
    /// obtained from them are valid only until `handle_batch` returns. Each response is what
    /// `handle` gets: the builders, `prefork_response_defer` and `prefork_response_hijack`
    /// work alike. It runs on the event-loop thread only.
    ///
    /// Returns how many requests it answered, from the first: the others are not consumed and
    /// come again in a later call, so a handler may stop early (its buffers are full, say). A
    /// response its connection must wait for or ends with (deferred, hijacked, with a body
    /// stream, or with `Connection: close`) must be the last answered of that connection's
    /// requests; stopping right after it (returning its index + 1) is always right. If the
    /// handler answers a later request of the same connection anyway, the library drops those
    /// answers (their requests are not handled again), logs an error, and closes the
    /// connection after that response; the other connections' answers stand. 0 or a value
    /// above `count` counts as `count`.
    ///
    /// Default: NULL (every request goes to `handle`).
    pub handle_batch: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            reqs: *const *const prefork_request,
            resps: *const *mut prefork_response,
            count: usize,
        ) -> usize,
    >,
}

// SAFETY: raw pointers and optional function pointers only, so all-zero is the unset value.
unsafe impl Extensible for prefork_handler {
    const NAME: &'static str = "prefork_handler";
    const SINCE: &'static str = "0.1";
    // user_data, init_child, handle, exit_child, user_data_free.
    const FIRST_SIZE: usize = size_of::<[usize; 5]>();
}

/// The most requests one `prefork_handler.handle_batch` call gets (since 0.2).
pub const PREFORK_MAX_BATCH: usize = 32;

const _: () = assert!(PREFORK_MAX_BATCH == MAX_BATCH);

type HandleFn = unsafe extern "C" fn(*mut c_void, *const prefork_request, *mut prefork_response);
type HandleBatchFn = unsafe extern "C" fn(
    *mut c_void,
    *const *const prefork_request,
    *const *mut prefork_response,
    usize,
) -> usize;

/// The vtable behind `crate::Handler`; owns `user_data` (its finalizer runs on drop).
pub(crate) struct CHandler {
    init_child: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
    handle: HandleFn,
    handle_batch: Option<HandleBatchFn>,
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
            handle_batch: vtable.handle_batch,
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

    fn batches(&self) -> bool {
        self.handle_batch.is_some()
    }

    fn handle_batch(&self, reqs: &[Request<'_>], resps: &mut [Response]) -> usize {
        let Some(batch) = self.handle_batch else {
            unreachable!("the engine batches only when the vtable has handle_batch");
        };
        let n = reqs.len().min(resps.len()).min(MAX_BATCH);
        // Only the first n are written, and C reads only those: no need to clear 64 pointers.
        let mut req_ptrs = [MaybeUninit::<*const prefork_request>::uninit(); MAX_BATCH];
        let mut resp_ptrs = [MaybeUninit::<*mut prefork_response>::uninit(); MAX_BATCH];
        for i in 0..n {
            let req: *const Request<'_> = &reqs[i];
            let resp: *mut Response = &mut resps[i];
            req_ptrs[i].write(req.cast());
            resp_ptrs[i].write(resp.cast());
        }
        // SAFETY: n live requests and responses, each used by one pointer, for the whole call;
        // the first n pointers of each array are initialised.
        unsafe {
            batch(
                self.user_data.ptr(),
                req_ptrs.as_ptr().cast(),
                resp_ptrs.as_ptr().cast(),
                n,
            )
        }
    }

    fn exit_child(&self) {
        if let Some(exit) = self.exit_child {
            // SAFETY: a callback of the caller's vtable with its own user_data.
            unsafe { exit(self.user_data.ptr()) }
        }
    }
}
