//! `prefork_hooks`: the process engine's hooks as C function pointers, adapted to
//! [`crate::Hooks`].

use std::ffi::{c_int, c_void};
use std::sync::Arc;

use super::error::{FfiError, prefork_result};
use super::server::{configure, prefork};
use super::slice::ref_arg;
use crate::{ChildExit, HookError, HookResult, Hooks, Pid};

/// Hooks of the process engine. Every member is optional (NULL = no hook). The master calls
/// them on the thread that called `prefork_listen_and_serve`, one at a time; only
/// `on_master_death` runs in a child. A hook returning nonzero stops the master: it stops and
/// reaps the children, then `prefork_listen_and_serve` returns PREFORK_ERR_HOOK with a
/// message naming the hook and the value it returned. Hooks must not call `prefork_free`,
/// the setters or `prefork_listen_and_serve`.
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
    /// `prefork_listen_and_serve` returns.
    pub on_master_death: Option<unsafe extern "C" fn(user_data: *mut c_void)>,
    /// Master: starts a child instead of the default re-exec of the current program, and
    /// returns its pid, or -1 when it could not (the master then fails with
    /// PREFORK_ERR_SPAWN). The started process must have PREFORK_CHILD=1 in its environment,
    /// `listener_fd` at descriptor 3 and `lifeline_fd` at descriptor 4, and call
    /// `prefork_listen_and_serve`; both descriptors are close-on-exec in the master, so
    /// place them with dup2 in the child (posix_spawn_file_actions_adddup2); descriptors of
    /// the host that lack close-on-exec would reach the child, so close them there too. It
    /// must be a direct child of the master (the master reaps it) and must not be reaped by
    /// the caller. `slot` is the 0-based child slot; a replacement gets its predecessor's slot.
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
}

/// The hooks' `user_data`, shared by every closure; the finalizer runs when the last is gone.
pub(crate) struct HookData(prefork_hooks);

// SAFETY: the library only passes user_data back to the caller's hooks; prefork_hooks'
// documentation makes its use from the master's serving thread the caller's responsibility.
unsafe impl Send for HookData {}
// SAFETY: as above; the hooks run one at a time.
unsafe impl Sync for HookData {}

impl Drop for HookData {
    fn drop(&mut self) {
        if let Some(free) = self.0.user_data_free {
            // SAFETY: the caller's finalizer, called once with its own user_data.
            unsafe { free(self.0.user_data) }
        }
    }
}

fn verdict(hook: &str, code: c_int) -> HookResult {
    match code {
        0 => Ok(()),
        code => Err(format!("the {hook} hook returned {code}").into()),
    }
}

/// The Rust hooks calling the C ones. The closures share `data`, which is returned too, so
/// the handle keeps `user_data` alive even when no hook is set.
fn adapt(data: &Arc<HookData>) -> Hooks {
    let c = data.0;
    let mut hooks = Hooks::default();
    if let Some(f) = c.on_child_spawn {
        let d = Arc::clone(data);
        // SAFETY (all closures below): the caller's hook, with its own user_data.
        hooks.on_child_spawn = Some(Box::new(move |pid| {
            verdict("on_child_spawn", unsafe { f(d.0.user_data, pid) })
        }));
    }
    if let Some(f) = c.on_master_ready {
        let d = Arc::clone(data);
        hooks.on_master_ready = Some(Box::new(move |pids: &[Pid]| {
            verdict("on_master_ready", unsafe {
                f(d.0.user_data, pids.as_ptr(), pids.len())
            })
        }));
    }
    if let Some(f) = c.on_child_recover {
        let d = Arc::clone(data);
        hooks.on_child_recover = Some(Box::new(move |old, new| {
            verdict("on_child_recover", unsafe { f(d.0.user_data, old, new) })
        }));
    }
    if let Some(f) = c.on_child_exit {
        let d = Arc::clone(data);
        hooks.on_child_exit = Some(Box::new(move |pid, exit| {
            let (code, signal) = match exit {
                ChildExit::Code(code) => (code, 0),
                ChildExit::Signal(signal) => (-1, signal),
            };
            unsafe { f(d.0.user_data, pid, code, signal) }
        }));
    }
    if let Some(f) = c.on_master_death {
        let d = Arc::clone(data);
        hooks.on_master_death = Some(Box::new(move || unsafe { f(d.0.user_data) }));
    }
    if let Some(f) = c.command_producer {
        let d = Arc::clone(data);
        hooks.command_producer = Some(Box::new(move |req| -> Result<Pid, HookError> {
            let pid = unsafe { f(d.0.user_data, req.listener_fd, req.lifeline_fd, req.slot) };
            if pid > 0 {
                Ok(pid)
            } else {
                Err(format!("the command_producer hook returned {pid} (no child started)").into())
            }
        }));
    }
    hooks
}

/// Replaces every hook of `p` with those in `*hooks` (copied; members left NULL are unset).
/// The previous hooks' `user_data_free`, if any, is called. Returns PREFORK_ERR_NULL for a
/// NULL argument and PREFORK_ERR_STATE while the server is serving; on failure nothing is
/// taken over (the caller still owns `hooks->user_data`). Call it from the thread that owns
/// `p`, before `prefork_listen_and_serve`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_hooks(
    p: *mut prefork,
    hooks: *const prefork_hooks,
) -> prefork_result {
    ffi_boundary!({
        let hooks = *unsafe { ref_arg(hooks, "hooks") }?;
        unsafe {
            configure(p, |inner| {
                let data = Arc::new(HookData(hooks));
                *inner.server.hooks_mut() = adapt(&data);
                inner.hook_data = Some(data);
                Ok::<(), FfiError>(())
            })
        }
    })
}
