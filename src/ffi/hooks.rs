//! `prefork_hooks`: the process engine's hooks as C function pointers, adapted to
//! [`crate::Hooks`].

use std::ffi::{CString, c_char, c_int, c_void};
use std::sync::Arc;

use super::error::{FfiError, prefork_result};
use super::extensible::{self, Extensible};
use super::handle::{configure, prefork};
use super::user_data::UserData;
use crate::{ChildExit, HookError, HookResult, Hooks, Pid};

/// Hooks of the process engine. Every member is optional (NULL = no hook). The master calls
/// them on the thread that called `prefork_listen_and_serve`, one at a time; only
/// `on_master_death` runs in a child. A hook returning nonzero stops the master: it stops and
/// reaps the children, then `prefork_listen_and_serve` returns PREFORK_ERR_HOOK with a
/// message naming the hook and the value it returned. Hooks must not call `prefork_free`,
/// the setters or `prefork_listen_and_serve`.
///
/// Extensible, as `prefork_handler`: members are only ever added at the end, one a program does
/// not know of reads as NULL. Initialise it by member name with the rest zero, and pass it to
/// the `prefork_set_hooks` macro.
///
/// The library copies this struct: it need not outlive the `prefork_set_hooks` call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct prefork_hooks {
    /// Passed as the first argument of every hook; the library never reads it. The caller
    /// guarantees the hooks may use it from the threads named here.
    pub user_data: *mut c_void,
    /// Master: after each child is started, first or replacement, with its pid.
    /// Return 0 to go on.
    pub on_child_spawn: Option<unsafe extern "C" fn(user_data: *mut c_void, pid: i32) -> c_int>,
    /// Master, once: every initial child reported "listening". `pids` holds `count` child pids
    /// in slot order, valid only during the call. Return 0 to go on.
    pub on_master_ready: Option<
        unsafe extern "C" fn(user_data: *mut c_void, pids: *const i32, count: usize) -> c_int,
    >,
    /// Master: an exited child was replaced (called after `on_child_spawn` for `new_pid`).
    /// Return 0 to go on.
    pub on_child_recover:
        Option<unsafe extern "C" fn(user_data: *mut c_void, old_pid: i32, new_pid: i32) -> c_int>,
    /// Master: a child exited and was reaped, before any replacement; also for each child
    /// stopped when the master stops. `exit_code` is its exit status and `signal` 0 when it
    /// exited; `exit_code` is -1 and `signal` the signal number when a signal killed it.
    pub on_child_exit:
        Option<unsafe extern "C" fn(user_data: *mut c_void, pid: i32, exit_code: i32, signal: i32)>,
    /// Child, at most once: its master is gone (the lifeline closed). Runs on the child's
    /// event-loop thread; the child then drains its connections and
    /// `prefork_listen_and_serve` returns. In serve mode it runs on a library thread of the
    /// child, while `serve` runs, just before `stop_fd` becomes readable.
    pub on_master_death: Option<unsafe extern "C" fn(user_data: *mut c_void)>,
    /// Master: starts a child instead of the default re-exec of the current program, and
    /// returns its pid, or -1 when it could not (the master then fails with
    /// PREFORK_ERR_SPAWN). The started process must have PREFORK_CHILD=1 in its environment,
    /// `listener_fd` at descriptor 3 and `lifeline_fd` at descriptor 4, and call
    /// `prefork_listen_and_serve` (the TLS entry point the master called, when it serves TLS:
    /// the master writes the certificates and keys on the lifeline right after this returns,
    /// and the child reads them from descriptor 4, so nothing more is needed); both descriptors are close-on-exec in the master, so
    /// place them with dup2 in the child (posix_spawn_file_actions_adddup2); descriptors of
    /// the host that lack close-on-exec would reach the child, so close them there too. It
    /// must be a direct child of the master (the master reaps it) and must not be reaped by
    /// the caller. `slot` is the 0-based child slot; a replacement gets its predecessor's slot.
    /// It places one listener: a server with several (`prefork_add_listener`) fails with
    /// PREFORK_ERR_SPAWN when it would call it.
    pub command_producer: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            listener_fd: c_int,
            lifeline_fd: c_int,
            slot: usize,
        ) -> i32,
    >,
    /// Optional finalizer: called once with `user_data` when these hooks are replaced by
    /// another `prefork_set_hooks` call or the handle is freed; never when
    /// `prefork_set_hooks` failed.
    pub user_data_free: Option<unsafe extern "C" fn(user_data: *mut c_void)>,
    /// Master (since 0.2): a reload (SIGHUP or `prefork_reload`) completed. Every child of
    /// generation `generation` (the first children are generation 1, each reload takes the
    /// next number) reported "listening"; `pids` holds their `count` pids in slot order, valid
    /// only during the call. The children they replace were told to stop gracefully and are
    /// still draining. Return 0 to go on.
    pub on_reload: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            generation: u64,
            pids: *const i32,
            count: usize,
        ) -> c_int,
    >,
    /// Master (since 0.2): the reload to `generation` failed, because one of its children
    /// exited or missed the startup timeout before all were ready, or could not be started;
    /// `reason` (NUL-terminated, valid only during the call) says which and how. Its children
    /// were told to stop; the previous generation, never stopped, keeps serving.
    pub on_reload_failed: Option<
        unsafe extern "C" fn(user_data: *mut c_void, generation: u64, reason: *const c_char),
    >,
    /// Master (since 0.2): a binary upgrade (SIGUSR2 or `prefork_upgrade`) completed. It runs
    /// in the old master, `old_pid` (this process): the new master, `new_pid`, started from
    /// the program on disk, has every child ready and serves on the same sockets. When it
    /// returns, this master stops its own children gracefully and `prefork_listen_and_serve`
    /// returns PREFORK_OK. The place to point a pid file or a supervisor at `new_pid`; the new
    /// master runs its own `on_master_ready` (where `getpid()` is `new_pid`). Under systemd
    /// the library has already sent MAINPID=`new_pid`. Nothing to return: this master stops
    /// whatever the hook does.
    pub on_upgrade:
        Option<unsafe extern "C" fn(user_data: *mut c_void, old_pid: i32, new_pid: i32)>,
}

// SAFETY: raw pointers and optional function pointers only, so all-zero is the unset value.
unsafe impl Extensible for prefork_hooks {
    const NAME: &'static str = "prefork_hooks";
    const SINCE: &'static str = "0.1";
    // user_data, six hooks, user_data_free.
    const FIRST_SIZE: usize = size_of::<[usize; 8]>();
}

fn verdict(hook: &str, code: c_int) -> HookResult {
    match code {
        0 => Ok(()),
        code => Err(format!("the {hook} hook returned {code}").into()),
    }
}

/// The Rust hooks calling the C ones in `c`. The closures share `data`, which the handle keeps
/// too, so `user_data` lives on even when no hook is set.
fn adapt(c: &prefork_hooks, data: &Arc<UserData>) -> Hooks {
    let mut hooks = Hooks::default();
    if let Some(f) = c.on_child_spawn {
        let d = Arc::clone(data);
        // SAFETY (all closures below): the caller's hook, with its own user_data.
        hooks.on_child_spawn = Some(Box::new(move |pid| {
            verdict("on_child_spawn", unsafe { f(d.ptr(), pid) })
        }));
    }
    if let Some(f) = c.on_master_ready {
        let d = Arc::clone(data);
        hooks.on_master_ready = Some(Box::new(move |pids: &[Pid]| {
            verdict("on_master_ready", unsafe {
                f(d.ptr(), pids.as_ptr(), pids.len())
            })
        }));
    }
    if let Some(f) = c.on_child_recover {
        let d = Arc::clone(data);
        hooks.on_child_recover = Some(Box::new(move |old, new| {
            verdict("on_child_recover", unsafe { f(d.ptr(), old, new) })
        }));
    }
    if let Some(f) = c.on_child_exit {
        let d = Arc::clone(data);
        hooks.on_child_exit = Some(Box::new(move |pid, exit| {
            let (code, signal) = match exit {
                ChildExit::Code(code) => (code, 0),
                ChildExit::Signal(signal) => (-1, signal),
            };
            unsafe { f(d.ptr(), pid, code, signal) }
        }));
    }
    if let Some(f) = c.on_master_death {
        let d = Arc::clone(data);
        hooks.on_master_death = Some(Box::new(move || unsafe { f(d.ptr()) }));
    }
    if let Some(f) = c.on_reload {
        let d = Arc::clone(data);
        hooks.on_reload = Some(Box::new(move |generation, pids: &[Pid]| {
            verdict("on_reload", unsafe {
                f(d.ptr(), generation, pids.as_ptr(), pids.len())
            })
        }));
    }
    if let Some(f) = c.on_reload_failed {
        let d = Arc::clone(data);
        hooks.on_reload_failed = Some(Box::new(move |generation, why: &str| {
            // The reasons are the library's own text, which has no NUL; one would be cut.
            let why = CString::new(why.replace('\0', " ")).unwrap_or_default();
            unsafe { f(d.ptr(), generation, why.as_ptr()) }
        }));
    }
    if let Some(f) = c.on_upgrade {
        let d = Arc::clone(data);
        hooks.on_upgrade = Some(Box::new(move |old, new| unsafe { f(d.ptr(), old, new) }));
    }
    if let Some(f) = c.command_producer {
        let d = Arc::clone(data);
        hooks.command_producer = Some(Box::new(move |req| -> Result<Pid, HookError> {
            if req.listener_fds.len() != 1 {
                return Err(format!(
                    "the command_producer hook places one listener, and this server has {}: \
                     serve one listener, or start the children without a command producer",
                    req.listener_fds.len()
                )
                .into());
            }
            let pid = unsafe { f(d.ptr(), req.listener_fd, req.lifeline_fd, req.slot) };
            if pid > 0 {
                Ok(pid)
            } else {
                Err(format!("the command_producer hook returned {pid} (no child started)").into())
            }
        }));
    }
    hooks
}

/// Replaces every hook of `p` with those in `*hooks`, a struct of `hooks_size` bytes (copied;
/// members left NULL are unset). C and C++ call it through the `prefork_set_hooks(p, hooks)`
/// macro, which passes `sizeof(prefork_hooks)`; Go, Zig and other FFIs call it with the size
/// of their `prefork_hooks`. The previous hooks' `user_data_free`, if any, is called. Returns
/// PREFORK_ERR_NULL for a NULL argument, PREFORK_ERR_INVALID_ARGUMENT when `hooks_size` is
/// no `prefork_hooks` size or the struct sets a member this library does not know (a newer
/// header than the library), and PREFORK_ERR_STATE while the server is serving; on failure
/// nothing is taken over (the caller still owns `hooks->user_data`). Call it from the thread
/// that owns `p`, before `prefork_listen_and_serve`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_hooks_sized(
    p: *mut prefork,
    hooks: *const prefork_hooks,
    hooks_size: usize,
) -> prefork_result {
    ffi_boundary!({ unsafe { set_hooks(p, hooks, hooks_size) } })
}

/// The 0.1 entry point, which programs built against a 0.1 header call: reads the 0.1
/// members of `*hooks` only. Not in the header, whose `prefork_set_hooks` macro calls
/// `prefork_set_hooks_sized`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_hooks(
    p: *mut prefork,
    hooks: *const prefork_hooks,
) -> prefork_result {
    ffi_boundary!({ unsafe { set_hooks(p, hooks, prefork_hooks::FIRST_SIZE) } })
}

/// # Safety
/// `p` is NULL or a live handle; `hooks` is NULL or points to `size` readable bytes.
unsafe fn set_hooks(
    p: *mut prefork,
    hooks: *const prefork_hooks,
    size: usize,
) -> Result<prefork_result, FfiError> {
    let hooks = unsafe { extensible::read(hooks, size, "hooks") }?;
    unsafe {
        configure(p, |inner| {
            let data = Arc::new(UserData::new(hooks.user_data, hooks.user_data_free));
            *inner.server.hooks_mut() = adapt(&hooks, &data);
            inner.hook_data = Some(data);
            Ok::<(), FfiError>(())
        })
    }
}
