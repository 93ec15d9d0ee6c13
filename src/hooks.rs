//! User hooks of the process engine and the command producer's contract.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use nix::sys::resource::{Resource, getrlimit};

use crate::confine::ChildConfinement;
use crate::error::HookError;

/// Process ids as the C ABI and the OS see them.
pub type Pid = i32;

/// Outcome of a hook that may veto: an error stops the master (children are stopped and reaped
/// first) and is returned from `listen_and_serve`.
pub type HookResult = Result<(), HookError>;

/// Environment variable that marks a child; its value is `1`.
pub const CHILD_ENV: &str = "PREFORK_CHILD";
/// The variables with which an old master hands its sockets to a new one (binary upgrade):
/// the descriptor of the pipe on which the new master reports ready, and the listeners'.
pub(crate) const UPGRADE_READY_ENV: &str = "PREFORK_UPGRADE_READY_FD";
pub(crate) const UPGRADE_FDS_ENV: &str = "PREFORK_UPGRADE_FDS";
/// What each of those descriptors is (master::upgrade's `Entry`).
pub(crate) const UPGRADE_LISTENERS_ENV: &str = "PREFORK_UPGRADE_LISTENERS";
pub(crate) const UPGRADE_ENV: [&str; 3] =
    [UPGRADE_READY_ENV, UPGRADE_FDS_ENV, UPGRADE_LISTENERS_ENV];
/// The descriptor at which a child finds its (first) listener; the others follow it.
pub const LISTENER_FD: RawFd = 3;
/// The descriptor at which a child of a server with one listener finds its end of the
/// lifeline socket: the lifeline comes right after the listeners (`SpawnRequest::lifeline_at`).
pub const LIFELINE_FD: RawFd = 4;
/// The variable that tells a child of several listeners (or of one with PROXY protocol set
/// per listener) what it got: one word per listener at fds 3.., comma-separated, `proxy` or
/// `plain`. Without it a child has one listener at fd 3, with the handle's PROXY setting.
pub(crate) const LISTENERS_ENV: &str = "PREFORK_LISTENERS";

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildExit {
    /// Exited with this status code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

/// Hooks of the master (and, for `on_master_death`, of each child). All run on the thread that
/// called `listen_and_serve` (except `on_master_death` in serve mode, which runs on a library
/// thread while the serve function runs); a hook that panics counts as a hook error.
#[derive(Default)]
#[allow(clippy::type_complexity)]
pub struct Hooks {
    /// After each child is started, initial or replacement. An error aborts.
    pub on_child_spawn: Option<Box<dyn FnMut(Pid) -> HookResult + Send>>,
    /// Once, when every initial child has reported "listening". An error aborts.
    pub on_master_ready: Option<Box<dyn FnMut(&[Pid]) -> HookResult + Send>>,
    /// After an exited child was replaced (old pid, new pid), following `on_child_spawn`.
    /// An error aborts.
    pub on_child_recover: Option<Box<dyn FnMut(Pid, Pid) -> HookResult + Send>>,
    /// After a child exited and was reaped, before any replacement.
    pub on_child_exit: Option<Box<dyn FnMut(Pid, ChildExit) + Send>>,
    /// In a child, once, when its master is gone; the child then drains and exits (in serve
    /// mode: the stop signal is set right after it).
    pub on_master_death: Option<Box<dyn FnMut() + Send>>,
    /// Starts a child instead of the default re-exec; returns its pid.
    pub command_producer: Option<Box<dyn FnMut(&SpawnRequest) -> Result<Pid, HookError> + Send>>,
    /// After a reload completed: every child of generation `generation` (the first is 1)
    /// reported listening, in slot order, and the previous generation was told to stop
    /// gracefully. An error aborts.
    pub on_reload: Option<Box<dyn FnMut(u64, &[Pid]) -> HookResult + Send>>,
    /// A reload failed (a child of the new generation exited or timed out before the whole
    /// generation was ready, or could not be started): `generation` is the one given up, the
    /// text says why. The previous generation keeps serving.
    pub on_reload_failed: Option<Box<dyn FnMut(u64, &str) + Send>>,
    /// A binary upgrade completed, in the old master (`old_pid`, this process): the new master
    /// `new_pid` has every child ready and serves; this master now stops its own children
    /// gracefully, then `listen_and_serve` returns `Ok`. The place to move a pid file to the
    /// new pid (the new master runs `on_master_ready` for its own children). A panic is
    /// logged and changes nothing else.
    pub on_upgrade: Option<Box<dyn FnMut(Pid, Pid) + Send>>,
}

/// What the command producer is asked to start.
///
/// The contract: the started process must have `PREFORK_CHILD=1` in its environment, the
/// listener at fd 3 and the lifeline at fd 4 (with several listeners: the listeners at fds
/// 3.., the lifeline right after them, and `PREFORK_LISTENERS` as [`SpawnRequest::command`]
/// sets it), and must call `listen_and_serve` (or the TLS
/// entry point the master called: the master writes the TLS material on the lifeline right
/// after the producer returns, and the child reads it from fd 4). Both
/// descriptors are close-on-exec in the master; [`SpawnRequest::command`] builds a
/// `Command` that honours all of this and can be adjusted before `spawn()`.
#[derive(Debug)]
pub struct SpawnRequest {
    /// The (first) listener to place at fd 3.
    pub listener_fd: RawFd,
    /// Every listener, to place at fds 3, 4, ... in this order (the first is `listener_fd`).
    pub listener_fds: Vec<RawFd>,
    /// `PREFORK_LISTENERS`'s value, when the child needs it.
    pub(crate) listeners_env: Option<String>,
    /// The lifeline socket end to place at `lifeline_at()`: fd 4 with one listener.
    pub lifeline_fd: RawFd,
    /// Index of the child slot (0-based); a replacement gets its predecessor's slot.
    pub slot: usize,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    /// The user, groups and CPU the options give this slot's child.
    pub(crate) confinement: ChildConfinement,
}

impl SpawnRequest {
    /// Where the child finds its lifeline: the descriptor after its listeners.
    pub fn lifeline_at(&self) -> RawFd {
        LISTENER_FD + self.listener_fds.len() as RawFd
    }

    /// The default child command: the current executable with the master's argv, the marker
    /// set (replacing any inherited value), both descriptors in place, and the child's user,
    /// groups and CPU (the `user`, `group` and `cpu_affinity` options) set before it runs.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        if let Some(arg0) = self.args.first() {
            cmd.arg0(arg0);
        }
        cmd.args(self.args.iter().skip(1));
        cmd.env(CHILD_ENV, "1");
        // Only the master speaks for the service to systemd, and only a new master adopts
        // an old one's sockets.
        // Nor may anything the child starts take systemd's sockets for its own.
        let inherited = crate::notify::ENV.into_iter().chain(UPGRADE_ENV);
        for var in inherited.chain(crate::master::ACTIVATION_ENV) {
            cmd.env_remove(var);
        }
        match &self.listeners_env {
            Some(words) => cmd.env(LISTENERS_ENV, words),
            None => cmd.env_remove(LISTENERS_ENV),
        };
        let lifeline_at = self.lifeline_at();
        let placements: Vec<(RawFd, RawFd)> = (LISTENER_FD..)
            .zip(&self.listener_fds)
            .map(|(to, &from)| (from, to))
            .chain([(self.lifeline_fd, lifeline_at)])
            .collect();
        let confinement = self.confinement.clone();
        // SAFETY: the closure only makes async-signal-safe syscalls (dup2, close_range,
        // getrlimit, fcntl, and ChildConfinement::apply's) and allocates nothing (`placements`
        // was built before). The sources are above the last target (the master lifts them
        // there: `bind::lift`), so placing one never clobbers another. dup2 is raw libc: nix's
        // dup2 wants the target as an OwnedFd, and its dup2_raw returns one that would close
        // the placed descriptor when dropped.
        unsafe {
            cmd.pre_exec(move || {
                for &(from, to) in &placements {
                    if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                cloexec_fds_above(lifeline_at);
                confinement.apply()
            });
        }
        cmd
    }
}

/// Marks every descriptor above `last` close-on-exec: a C host's descriptors opened without it
/// must not reach the children. Marking rather than closing keeps the pipe through which std
/// reports a failed exec. Runs between fork and exec, so only system calls, no allocation.
pub(crate) fn cloexec_fds_above(last: RawFd) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    let first = (last + 1) as libc::c_uint;
    // SAFETY: close_range takes plain integers and only sets descriptor flags; nix 0.32 has
    // no wrapper for it.
    let marked = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if marked {
        return;
    }
    // Kernels before 5.11: one by one up to the descriptor limit.
    let max =
        getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft.min(1 << 20) as RawFd);
    for fd in first as RawFd..max {
        // SAFETY: F_SETFD on a number that is not open fails with EBADF and changes nothing.
        // Raw libc because nix's fcntl takes a BorrowedFd, which a number that may not be open
        // cannot be.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}
