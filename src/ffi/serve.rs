//! `prefork_serve`: serve mode, the application's own server in the children, adapted to
//! [`crate::Prefork::set_serve`]; and `prefork_child_ready`.

use std::ffi::{c_int, c_void};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::Arc;

use super::error::{FfiError, prefork_result};
use super::extensible::{self, Extensible};
use super::handle::{configure, prefork};
use super::user_data::UserData;
use crate::{Ready, StopSignal};

/// `prefork_serve.ready`: the child reports ready just before `serve` is called (the default).
pub const PREFORK_SERVE_READY_ON_START: c_int = 0;
/// `prefork_serve.ready`: the child reports ready when `serve` calls `prefork_child_ready()`.
pub const PREFORK_SERVE_READY_EXPLICIT: c_int = 1;

/// Serve mode: each child runs the program's own server (a libuv or libevent loop, a custom
/// protocol) instead of the library's HTTP engine, as Go's fasthttp prefork runs its
/// `ServeFunc`. Set it with the `prefork_set_serve` macro before `prefork_listen_and_serve`.
///
/// The master does not change: it binds, starts and supervises the children as always
/// (readiness and the startup timeout, respawn, recover threshold and window, backoff, the
/// grace period then SIGKILL, reuseport slots, every hook). In each child, the library adopts
/// the listener and the lifeline, installs its signal handlers (with `handle_signals` on),
/// runs the handler's `init_child`, then calls `serve` on the thread that called
/// `prefork_listen_and_serve`. When `serve` returns, the child runs `exit_child` and exits
/// the process with `serve`'s return value as its status: in a serve-mode child,
/// `prefork_listen_and_serve` returns only when something failed before `serve` was called
/// (an `init_child` failure, for example). `prefork_new` still takes a `prefork_handler`,
/// whose `init_child` and `exit_child` run as said; its `handle` is never called, and the
/// HTTP options (the limits, timeouts and `handler_threads`) do not apply. Nor does TLS: the
/// TLS entry points (`prefork_listen_and_serve_tls`, `_embed`) return PREFORK_ERR_STATE on a
/// handle with a serve function.
///
/// Extensible, as `prefork_handler`: members are only ever added at the end, one a program
/// does not know of reads as 0 (unset). Initialise it by member name with the rest zero.
///
/// The library copies this struct: it need not outlive the `prefork_set_serve` call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct prefork_serve {
    /// Passed as the first argument of `serve` and `user_data_free`; the library never reads
    /// it.
    pub user_data: *mut c_void,
    /// Required. The child's server, called once in each child.
    ///
    /// `listen_fd` is the listening TCP socket the master bound (blocking, close-on-exec).
    /// `serve` owns it: close it when the server stops accepting. Its file status flags
    /// (O_NONBLOCK) are those of the socket, which the master shares with every child (with
    /// reuseport, with the children of its slot): set them the same way in every child.
    /// Descriptor 4 is the library's lifeline to the master: leave it alone.
    ///
    /// `stop_fd` becomes readable (POLLIN, and POLLHUP) when the child must stop, and stays
    /// so: on the master's graceful stop (its SIGTERM; with `handle_signals` off, the host's
    /// own handler calls `prefork_shutdown`), on the master's death (after `on_master_death`
    /// ran, on a library thread), and on `prefork_shutdown()` in this child. Poll it beside
    /// the server's own descriptors; do not read, write or close it: it is the library's, and
    /// valid until `serve` returns. On the stop, finish the requests in flight and return
    /// within the grace period, after which the master kills the child with SIGKILL.
    ///
    /// The return value is the child's exit status, which the master's `on_child_exit` hook
    /// sees: 0 for a clean stop, 1 to 255 as they are, any other value (a negative one, or
    /// above 255) 1. Returning before the stop is a child's exit like a crash: the master
    /// replaces it, within the recover threshold and with the backoff of a child that dies
    /// soon after its start.
    pub serve: Option<
        unsafe extern "C" fn(user_data: *mut c_void, listen_fd: c_int, stop_fd: c_int) -> c_int,
    >,
    /// When the child tells the master it is ready (the master's `on_master_ready` waits for
    /// every child, and until then its startup timeout runs):
    /// PREFORK_SERVE_READY_ON_START (0): just before `serve` is called; the master's socket
    /// already queues connections, so a server that accepts as soon as it runs needs nothing
    /// more. PREFORK_SERVE_READY_EXPLICIT: when `serve` calls `prefork_child_ready()`, for a
    /// server that sets itself up first; a `serve` that returns without calling it is a child
    /// that failed to start. Any other value is refused.
    pub ready: c_int,
    /// Optional finalizer: called once with `user_data` when this serve struct is replaced by
    /// another `prefork_set_serve` call or the handle is freed, never when `prefork_set_serve`
    /// failed. A serve-mode child exits without freeing the handle, so it does not run there.
    pub user_data_free: Option<unsafe extern "C" fn(user_data: *mut c_void)>,
}

// SAFETY: raw pointers, optional function pointers and an integer only, so all-zero is the
// unset value.
unsafe impl Extensible for prefork_serve {
    const NAME: &'static str = "prefork_serve";
    const SINCE: &'static str = "0.2";
    // user_data, serve, ready (padded to a pointer), user_data_free.
    const FIRST_SIZE: usize = size_of::<[usize; 4]>();
}

fn readiness(ready: c_int) -> Result<Ready, FfiError> {
    match ready {
        PREFORK_SERVE_READY_ON_START => Ok(Ready::OnStart),
        PREFORK_SERVE_READY_EXPLICIT => Ok(Ready::Explicit),
        other => Err(FfiError::invalid(format!(
            "serve->ready: {other} is neither PREFORK_SERVE_READY_ON_START (0) nor \
             PREFORK_SERVE_READY_EXPLICIT (1)"
        ))),
    }
}

/// Puts the handle `p` in serve mode with `*serve`, a struct of `serve_size` bytes (copied).
/// C and C++ call it through the `prefork_set_serve` macro, which passes
/// `sizeof(prefork_serve)`; Go, Zig and other FFIs call it with the size of their
/// `prefork_serve`. An earlier serve struct is replaced and its `user_data_free`, if any,
/// called. Call it in every process (the master ignores it, the children need it), from the
/// thread that owns `p`, before `prefork_listen_and_serve`.
///
/// Returns PREFORK_ERR_NULL for a NULL `p`, `serve` or `serve->serve`;
/// PREFORK_ERR_INVALID_ARGUMENT when `serve_size` is no `prefork_serve` size, the struct sets
/// a member this library does not know (a newer header than the library), or `ready` is no
/// PREFORK_SERVE_READY_* value; PREFORK_ERR_STATE while the server is serving. On failure
/// nothing is taken over (the caller still owns `serve->user_data`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_serve_sized(
    p: *mut prefork,
    serve: *const prefork_serve,
    serve_size: usize,
) -> prefork_result {
    ffi_boundary!({ unsafe { set_serve(p, serve, serve_size) } })
}

type ServeCallback = unsafe extern "C" fn(*mut c_void, c_int, c_int) -> c_int;

/// # Safety
/// `p` is NULL or a live handle; `serve` is NULL or points to `size` readable bytes.
unsafe fn set_serve(
    p: *mut prefork,
    serve: *const prefork_serve,
    size: usize,
) -> Result<prefork_result, FfiError> {
    let serve = unsafe { extensible::read(serve, size, "serve") }?;
    let callback = serve.serve.ok_or_else(|| FfiError::null("serve->serve"))?;
    let ready = readiness(serve.ready)?;
    unsafe {
        configure(p, |inner| {
            let data = Arc::new(UserData::new(serve.user_data, serve.user_data_free));
            inner
                .server
                .set_serve(ready, adapt(callback, Arc::clone(&data)));
            inner.serve_data = Some(data);
            Ok::<(), FfiError>(())
        })
    }
}

/// The Rust serve function calling the C one with its `user_data`.
fn adapt(
    callback: ServeCallback,
    data: Arc<UserData>,
) -> impl FnOnce(TcpListener, &StopSignal) -> i32 + Send + 'static {
    move |listener, stop| {
        let listen_fd = listener.into_raw_fd();
        // SAFETY: the caller's callback with its own user_data; it owns listen_fd from here
        // on, and stop_fd stays valid until it returns.
        unsafe { callback(data.ptr(), listen_fd, stop.as_raw_fd()) }
    }
}

/// Reports this serve-mode child ready to its master, for a `prefork_serve` whose `ready` is
/// PREFORK_SERVE_READY_EXPLICIT: call it from `serve` (or from any thread of the child while
/// `serve` runs) once the server can take connections. Reporting again, or with
/// PREFORK_SERVE_READY_ON_START, does nothing and returns PREFORK_OK.
///
/// Returns PREFORK_ERR_STATE when no `serve` callback is running in this process (in the
/// master, in a child of the HTTP engine, after `serve` returned), and PREFORK_ERR_IO when
/// the master is gone (the child is then about to be told to stop).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_child_ready() -> prefork_result {
    ffi_boundary!({
        crate::child_ready()?;
        Ok(prefork_result::PREFORK_OK)
    })
}
