//! The `prefork` handle: creation, serving, freeing, and the process-wide calls.

use std::cell::UnsafeCell;
use std::ffi::c_char;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use super::convert::{ref_arg, str_arg, write_text};
use super::error::{FfiError, prefork_result};
use super::extensible::{self, Extensible};
use super::handler::{CHandler, prefork_handler};
use super::user_data::UserData;
use crate::{Level, Logger, Prefork, StderrLogger};

/// A preforking server: its handler, options, hooks and logger. Opaque; create it with
/// `prefork_new`, configure it with the `prefork_set_*` functions, run it with
/// `prefork_listen_and_serve` and release it with `prefork_free`.
///
/// A handle is meant to be used by one thread. Misuse from several threads is detected, not
/// undefined: a call made while another call on the same handle is running (for example a
/// setter while `prefork_listen_and_serve` runs) fails with PREFORK_ERR_STATE.
pub struct prefork {
    state: AtomicU8,
    inner: UnsafeCell<Inner>,
}

/// What a claimed handle gives access to.
pub(crate) struct Inner {
    pub(crate) server: Prefork,
    /// Keeps the hooks' user_data alive even when no hook member is set.
    pub(crate) hook_data: Option<Arc<UserData>>,
    /// Keeps the serve struct's user_data with the handle: a serve-mode child consumes its
    /// serve function, and the finalizer must run when the handle is freed, not there.
    pub(crate) serve_data: Option<Arc<UserData>>,
}

/// Nobody is using the handle.
const IDLE: u8 = 0;
/// A setter (or `prefork_free`) is running.
const CONFIGURING: u8 = 1;
/// `prefork_listen_and_serve` is running.
const SERVING: u8 = 2;

// SAFETY: `inner` is only reached through a `Claim`, and the state's compare-exchange from IDLE
// lets one claim exist at a time, so no two threads ever touch `inner` together.
unsafe impl Sync for prefork {}

/// Exclusive use of a handle; the handle is IDLE again when the claim drops (also when a
/// panic unwinds through it, so a caught panic leaves the handle usable).
struct Claim<'a> {
    handle: &'a prefork,
}

impl prefork {
    fn claim(&self, to: u8) -> Result<Claim<'_>, FfiError> {
        match self
            .state
            .compare_exchange(IDLE, to, Ordering::Acquire, Ordering::Acquire)
        {
            Ok(_) => Ok(Claim { handle: self }),
            Err(SERVING) => Err(FfiError::state(
                "prefork_listen_and_serve is running on this handle; options, hooks and the \
                 logger can only be changed before it starts",
            )),
            Err(_) => Err(FfiError::state(
                "another thread is using this handle right now",
            )),
        }
    }
}

impl Claim<'_> {
    fn inner(&mut self) -> &mut Inner {
        // SAFETY: this claim is the only one (see `unsafe impl Sync for prefork`).
        unsafe { &mut *self.handle.inner.get() }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.handle.state.store(IDLE, Ordering::Release);
    }
}

/// Runs a configuring call on the handle `p`: refuses NULL and use while serving or from two
/// threads at once, and returns `PREFORK_OK` when `change` succeeds.
///
/// # Safety
/// `p` must be NULL or a handle from `prefork_new` not yet freed.
pub(crate) unsafe fn configure<E: Into<FfiError>>(
    p: *mut prefork,
    change: impl FnOnce(&mut Inner) -> Result<(), E>,
) -> Result<prefork_result, FfiError> {
    let handle = unsafe { ref_arg(p, "p") }?;
    let mut claim = handle.claim(CONFIGURING)?;
    let inner = claim.inner();
    let before = inner.server.config().clone();
    change(inner).map_err(Into::into)?;
    // The per-option rules live in src/config.rs; a refused value leaves the option unchanged.
    if let Err(e) = inner.server.config().check_fields() {
        *inner.server.config_mut() = before;
        return Err(e.into());
    }
    Ok(prefork_result::PREFORK_OK)
}

/// Creates a server for `*handler`, a struct of `handler_size` bytes (copied), with every
/// option at its default, hooks unset and the stderr logger, and stores it in `*out`. C and
/// C++ call it through the `prefork_new(handler, out)` macro, which passes
/// `sizeof(prefork_handler)`; Go, Zig and other FFIs call it with the size of their
/// `prefork_handler`. Call it in `main` of every process: the master and each child (a
/// re-exec of the same program) run the same code.
///
/// Returns PREFORK_ERR_NULL if `handler`, `handler->handle` or `out` is NULL, and
/// PREFORK_ERR_INVALID_ARGUMENT when `handler_size` is no `prefork_handler` size or the struct
/// sets a member this library does not know (a newer header than the library); `*out` is then
/// untouched and `handler->user_data` still the caller's. On success the handle owns
/// `handler->user_data`: its `user_data_free` runs in `prefork_free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_new_sized(
    handler: *const prefork_handler,
    handler_size: usize,
    out: *mut *mut prefork,
) -> prefork_result {
    ffi_boundary!({ unsafe { new(handler, handler_size, out) } })
}

/// The 0.1 entry point, which programs built against a 0.1 header call: reads the 0.1
/// members of `*handler` only. Not in the header, whose `prefork_new` macro calls
/// `prefork_new_sized`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_new(
    handler: *const prefork_handler,
    out: *mut *mut prefork,
) -> prefork_result {
    ffi_boundary!({ unsafe { new(handler, prefork_handler::FIRST_SIZE, out) } })
}

/// # Safety
/// `handler` is NULL or points to `size` readable bytes; `out` is NULL or writable.
unsafe fn new(
    handler: *const prefork_handler,
    size: usize,
    out: *mut *mut prefork,
) -> Result<prefork_result, FfiError> {
    let vtable = unsafe { extensible::read(handler, size, "handler") }?;
    if out.is_null() {
        return Err(FfiError::null("out"));
    }
    let handler = CHandler::new(vtable)?;
    let handle = Box::new(prefork {
        state: AtomicU8::new(IDLE),
        inner: UnsafeCell::new(Inner {
            server: Prefork::from_arc(Arc::new(handler)),
            hook_data: None,
            serve_data: None,
        }),
    });
    // SAFETY: out is non-NULL and, by the caller's contract, writable.
    unsafe { *out = Box::into_raw(handle) };
    Ok(prefork_result::PREFORK_OK)
}

/// Frees the handle and calls the finalizers (`user_data_free`) of the handler, the hooks and
/// the logger, each once. NULL is accepted and does nothing. Freeing a handle while
/// `prefork_listen_and_serve` runs on it (on another thread, or from inside a callback) is
/// refused, not undefined: nothing is freed, the handle stays valid, an error line goes to
/// stderr and to `prefork_last_error`; free it after `prefork_listen_and_serve` returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_free(p: *mut prefork) {
    ffi_boundary!({
        // SAFETY: p is NULL or a live handle (the caller's contract).
        let Some(handle) = (unsafe { p.as_ref() }) else {
            return Ok(());
        };
        let claim = handle.claim(CONFIGURING).map_err(|_| {
            let refusal = FfiError::state(
                "the handle is in use (prefork_listen_and_serve is running); it was not \
                 freed: free it after prefork_listen_and_serve returns",
            );
            // The caller cannot see an error from a void function: say it where it shows.
            // StderrLogger holds no state, so using it here races with nothing.
            StderrLogger.log(
                Level::Error,
                &format!("prefork_free: {}", refusal.message()),
            );
            refusal
        })?;
        // The handle is about to go: nothing may reset its state afterwards.
        std::mem::forget(claim);
        // SAFETY: p came from Box::into_raw in prefork_new and the claim makes this the only
        // user; a second free of the same pointer is the caller's bug, as with free(3).
        drop(unsafe { Box::from_raw(p) });
        Ok(())
    })
}

/// Runs the server; `addr` is "host:port" (NUL-terminated; "[::1]:8080" for IPv6; an empty
/// host means every interface; port 0 picks a free port), or any address
/// `prefork_add_listener` takes ("unix:/path", "unix:@name", "systemd"). It is the first
/// listener, before those added with `prefork_add_listener`; "" serves only the added ones.
///
/// In the master (the program as started): binds `addr`, starts the children, calls the
/// hooks, and supervises until SIGTERM/SIGINT (when `handle_signals` is on) or
/// `prefork_shutdown`, then stops the children gracefully and returns PREFORK_OK. In a child
/// (`prefork_is_child()`, the same program re-executed by the master): serves the listeners
/// inherited from the master (`addr` is not used) until told to stop, drains, and returns
/// PREFORK_OK; the program should then free the handle and exit. In serve mode
/// (`prefork_set_serve`) a child calls the serve callback instead and exits the process when
/// it returns: the call returns in a child only on a failure before the callback started.
///
/// Blocks the calling thread, on which the master's hooks and the child's event loop run.
/// Errors: PREFORK_ERR_NULL, PREFORK_ERR_INVALID_ARGUMENT (`addr` is not UTF-8, or an invalid
/// combination of options), PREFORK_ERR_STATE (already serving on another thread, or already
/// served: a handle serves once), PREFORK_ERR_BIND (`addr` is malformed, does not resolve to
/// an address of the chosen network, or cannot be bound), PREFORK_ERR_SPAWN,
/// PREFORK_ERR_STARTUP_TIMEOUT, PREFORK_ERR_OVER_RECOVERY, PREFORK_ERR_HOOK, PREFORK_ERR_IO;
/// in a child, an `init_child` failure. `prefork_last_error()` has the details.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_listen_and_serve(
    p: *mut prefork,
    addr: *const c_char,
) -> prefork_result {
    ffi_boundary!({ unsafe { serve(p, addr, |server, addr| server.listen_and_serve(addr)) } })
}

/// Runs `run` on the server of handle `p` with the address `addr`, the handle held in the
/// serving state meanwhile (the other entry points refuse to touch it).
///
/// # Safety
/// `p` is NULL or a live handle; `addr` is NULL or a NUL-terminated string.
pub(crate) unsafe fn serve(
    p: *mut prefork,
    addr: *const c_char,
    run: impl FnOnce(&mut Prefork, &str) -> Result<(), crate::Error>,
) -> Result<prefork_result, FfiError> {
    let handle = unsafe { ref_arg(p, "p") }?;
    let addr = unsafe { str_arg(addr, "addr") }?;
    let mut claim = handle.claim(SERVING)?;
    run(&mut claim.inner().server, addr)?;
    Ok(prefork_result::PREFORK_OK)
}

/// True when this process is a child started by a prefork master (its environment has
/// PREFORK_CHILD=1). Callable from any thread, at any time.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_is_child() -> bool {
    ffi_boundary!({ Ok(crate::is_child()) })
}

/// Writes the address this process serves on as NUL-terminated text into `buf` (`cap` bytes,
/// `PREFORK_ADDR_STRLEN` always suffices), e.g. "127.0.0.1:41823": how a master bound to port
/// 0 learns its port. With several listeners it is the first's (`prefork_listener_addr`
/// with index 0: the address given to `prefork_listen_and_serve`, unless that was ""), which
/// may be a Unix socket's, "unix:/path" or "unix:@name". Available while `prefork_listen_and_serve` runs: in the master from the
/// bind on (so from every hook), in a child from before `init_child`. Returns PREFORK_OK;
/// PREFORK_ERR_STATE when nothing is being served; PREFORK_ERR_INVALID_ARGUMENT when it does
/// not fit; PREFORK_ERR_NULL for a NULL `buf`. `buf` is written only on success. Any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_local_addr(buf: *mut c_char, cap: usize) -> prefork_result {
    ffi_boundary!({
        if buf.is_null() {
            return Err(FfiError::null("buf"));
        }
        let Some(addr) = crate::listener_addrs().into_iter().next() else {
            return Err(FfiError::new(
                prefork_result::PREFORK_ERR_STATE,
                "no server is running in this process",
            ));
        };
        unsafe { write_text(format_args!("{addr}"), buf, cap) }?;
        Ok(prefork_result::PREFORK_OK)
    })
}

/// Asks whatever this process serves to stop gracefully, as SIGTERM does: in the master,
/// `prefork_listen_and_serve` stops the children within the grace period and returns; in a
/// child, it drains and returns. Returns false when no server has started in this process yet;
/// the request is remembered and stops the next one as soon as it starts.
///
/// Safe from any thread and from a signal handler (async-signal-safe): it only stores to
/// atomics and writes one byte to a non-blocking pipe with write(2); it does not allocate,
/// lock, or touch thread-local storage. Use it with `prefork_set_handle_signals(p, false)` to
/// keep the host's own signal handling.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_shutdown() -> bool {
    ffi_boundary!(signal_safe, { crate::shutdown() })
}

/// True once this process is stopping: in a child, from the master's announcement of its
/// shutdown delay (`prefork_set_shutdown_delay_ms`), its SIGTERM, `prefork_shutdown` or the
/// master's death on; in the master, from the stop request on. Never false again after that.
///
/// For a health check: a handler that answers its balancer's health check with 503 while this
/// is true gets the instance taken out of rotation during the shutdown delay, while it still
/// serves everything else (the demo's `/health` does). Safe from any thread and from a signal
/// handler (async-signal-safe): atomic loads only.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_stopping() -> bool {
    ffi_boundary!(signal_safe, { crate::stopping() })
}

/// Asks the master running in this process for a graceful reload, as SIGHUP does: it starts a
/// new generation of children (a re-execution of the program, so each reads its configuration
/// and certificates again), waits until every one of them reported "listening", then stops the
/// previous generation gracefully; `on_reload` reports it. If a child of the new generation
/// exits or misses the startup timeout before that, the new generation is stopped, the
/// previous one keeps serving, and `on_reload_failed` says why. A reload asked for while one
/// runs is queued (any number of them make one more reload) and starts when the running one
/// ends; one asked for before the master is ready waits for it; during a stop it is dropped.
///
/// Returns true when the request was passed to a running master, false when this process runs
/// none (before or after `prefork_listen_and_serve`, or in a child): the request is then
/// dropped. Safe from any thread and from a signal handler (async-signal-safe): atomics and one
/// write(2) to a non-blocking pipe, as `prefork_shutdown`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_reload() -> bool {
    ffi_boundary!(signal_safe, { crate::reload() })
}

/// Asks the master running in this process to serve with `children` child processes from now
/// on (1 to 1024), as `prefork_set_children` would at the start: it adds children (each ready
/// as a first child is: its slot counts once it reports "listening"), or removes the
/// highest-numbered slots, whose children stop gracefully, finishing their requests within the
/// grace period. In reuseport mode an added slot gets its own new socket on the same port,
/// and a removed slot's socket is closed by its child once it took the connections waiting in
/// it, so none is reset. A later request replaces one not yet applied. A request made while a
/// reload runs waits until it ends; one made before the master is ready waits for that.
///
/// Returns true when the request was passed to a running master; false (request dropped) when
/// this process runs none, or `children` is 0 or above 1024. Safe from any thread and from a
/// signal handler (async-signal-safe): atomics and one write(2), as `prefork_shutdown`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_children_live(children: u32) -> bool {
    ffi_boundary!(signal_safe, {
        children as usize <= crate::config::MAX_CHILDREN
            && crate::set_children_live(children as usize)
    })
}

/// Asks the master running in this process for `delta` children more, or fewer when it is
/// negative, counted from the number it serves with or was last asked for (SIGTTIN is +1,
/// SIGTTOU -1); it keeps at least 1 and at most 1024. Children come and go as with
/// `prefork_set_children_live`. Returns false (request dropped) when this process runs no
/// master. Safe from any thread and from a signal handler (async-signal-safe).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_scale_children(delta: i32) -> bool {
    ffi_boundary!(signal_safe, { crate::scale_children(i64::from(delta)) })
}

/// Asks the master running in this process for a zero-downtime binary upgrade, as SIGUSR2
/// does: it starts the program again from the path it was started from (so a binary replaced
/// there is what runs) as a new master, passing it the listening sockets (descriptors 4 and up,
/// named in PREFORK_UPGRADE_FDS, with a pipe at 3 named in PREFORK_UPGRADE_READY_FD); the new
/// master adopts them instead of binding, starts its children and, once every one of them
/// reported "listening", says so on the pipe (and sends MAINPID= to systemd when
/// NOTIFY_SOCKET is set). The old master then stops its children gracefully and its
/// `prefork_listen_and_serve` returns PREFORK_OK; the sockets never close, so no connection is
/// refused or reset. If the new master exits, or is not ready within twice the startup
/// timeout, it is killed and the old master serves on (logged). The new master is the old
/// one's child until the old one exits. Requests during a reload, a recycle or another upgrade
/// wait until it ends.
///
/// Returns false (request dropped) when this process runs no master. Safe from any thread and
/// from a signal handler (async-signal-safe), as `prefork_shutdown`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_upgrade() -> bool {
    ffi_boundary!(signal_safe, { crate::upgrade() })
}
