//! Reaping the processes re-parented to the master.
//!
//! A process whose parent dies is re-parented to the nearest child subreaper above it, else to
//! PID 1 of its PID namespace. A master that is PID 1 (a container's entry point, `unshare
//! --pid`) or a subreaper (the host's `PR_SET_CHILD_SUBREAPER`) therefore inherits every
//! grandchild a child leaves behind (a handler's `system("cmd &")`, a double fork), and each
//! becomes a zombie when it exits unless the master waits for it: pids and process-table slots
//! leak for the life of the container, as with any init that does not reap (tini and
//! dumb-init exist for this). The library does not make the master a subreaper itself: that
//! would move orphans away from the init or service manager that expects them.
//!
//! The children the master tracks must keep their exit status for their own path (the hooks,
//! the recover policy), so the sweep never reaps blindly with `waitpid(-1)`: it looks at the
//! next zombie with `waitid(P_ALL, WNOWAIT)`, which leaves it waitable, and hands a tracked
//! one to the master's own reap; only a process it does not know is reaped here.

use std::time::Duration;

use nix::errno::Errno;

use crate::hooks::Pid;

/// Longest time an orphan's zombie waits for its reaper when no SIGCHLD wakes the master (the
/// host handles signals itself, or a signal was merged): the master's poll never sleeps longer.
pub(crate) const SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// True when orphans are re-parented to this process: it is PID 1 of its namespace, or a
/// child subreaper.
pub(crate) fn adopted() -> bool {
    if std::process::id() == 1 {
        return true;
    }
    let mut flag: libc::c_int = 0;
    // SAFETY: PR_GET_CHILD_SUBREAPER writes one int through the pointer, valid for the call.
    let r = unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut flag as *mut libc::c_int) };
    r == 0 && flag != 0
}

/// The pid of an exited child of this process that is still waitable, without reaping it.
pub(crate) fn next_zombie() -> Option<Pid> {
    loop {
        // SAFETY: siginfo_t is plain data, all-zero is valid, and waitid writes it for the call.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid out pointer; WNOHANG never blocks and WNOWAIT leaves the zombie.
        let r = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if r < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        // ECHILD: no child at all. With WNOHANG and no zombie, si_pid stays 0.
        // SAFETY: waitid filled the struct (or left it zeroed); si_pid reads its pid field.
        let pid = if r == 0 { unsafe { info.si_pid() } } else { 0 };
        return (pid > 0).then_some(pid);
    }
}

/// Reaps `pid`, a zombie that `next_zombie` found and the master does not track.
pub(crate) fn reap(pid: Pid) {
    let mut status = 0;
    // SAFETY: a valid out pointer; the zombie is there, so this does not block.
    while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } < 0
        && Errno::last() == Errno::EINTR
    {}
}
