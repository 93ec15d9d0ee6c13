//! Starting one child: the lifeline socket pair, the default re-exec or the user's command
//! producer (with its contract checked), and the pidfd that tells the master when it exits.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Instant;

use crate::error::{Error, ErrorKind, HookError};
use crate::hooks::{CHILD_ENV, Pid, SpawnRequest};
use crate::master::bind::above_child_fds;

/// A started child as the master tracks it.
pub(crate) struct Child {
    pub pid: Pid,
    /// Readable once the child exits; `None` on kernels without pidfd_open (then the master
    /// polls with waitpid).
    pub pidfd: Option<OwnedFd>,
    /// The master's end of the lifeline: the child writes its ready byte here, and the
    /// master's death closes it, which the child sees as EOF.
    pub lifeline: Option<OwnedFd>,
    pub ready: bool,
    pub started: Instant,
}

pub(crate) type Producer = dyn FnMut(&SpawnRequest) -> Result<Pid, HookError> + Send;

/// Starts the child of `slot` serving `listener`.
pub(crate) fn spawn(
    listener: RawFd,
    slot: usize,
    producer: Option<&mut Producer>,
) -> Result<Child, Error> {
    let (master_end, child_end) = lifeline_pair()?;
    let request = SpawnRequest {
        listener_fd: listener,
        lifeline_fd: child_end.as_raw_fd(),
        slot,
        program: PathBuf::from("/proc/self/exe"),
        args: std::env::args_os().collect::<Vec<OsString>>(),
    };
    let pid = match producer {
        None => {
            let mut cmd = request.command();
            cmd.stdin(Stdio::null());
            let child = cmd.spawn().map_err(|e| {
                Error::io(ErrorKind::Spawn, "re-execute /proc/self/exe as a child", e)
            })?;
            // The std handle neither kills nor waits on drop; the master reaps by pid.
            child.id() as Pid
        }
        Some(produce) => {
            let pid = crate::master::hook::call_as(ErrorKind::Spawn, "command_producer", || {
                produce(&request)
            })?;
            check_produced(pid)?;
            pid
        }
    };
    // Only the child may hold this end: the master keeps its own end, whose closing at the
    // master's death is what the child waits for.
    drop(child_end);
    Ok(Child {
        pid,
        pidfd: pidfd_open(pid),
        lifeline: Some(master_end),
        ready: false,
        started: Instant::now(),
    })
}

/// The command producer's contract: a started process that is the master's own child and
/// carries the child marker.
fn check_produced(pid: Pid) -> Result<(), Error> {
    let broken = |why: String| Error::new(ErrorKind::Spawn, format!("command producer: {why}"));
    if pid <= 0 {
        return Err(broken(format!(
            "returned pid {pid}: it must start the child and return its pid"
        )));
    }
    let mut status = 0;
    // SAFETY: WNOHANG never blocks; status is a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if r < 0 {
        return Err(broken(format!(
            "returned pid {pid}, which is not a child of this process ({})",
            io::Error::last_os_error()
        )));
    }
    if r == pid {
        return Err(broken(format!(
            "child {pid} exited at once (wait status {status:#x})"
        )));
    }
    // An empty environ means the child is gone or not yet exec'd; the startup timeout and
    // waitpid cover those cases.
    if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
        let marker = format!("{CHILD_ENV}=1");
        if !env.is_empty() && !env.split(|&b| b == 0).any(|kv| kv == marker.as_bytes()) {
            kill_and_reap(pid);
            return Err(broken(format!(
                "child {pid} was started without {marker} in its environment"
            )));
        }
    }
    Ok(())
}

fn lifeline_pair() -> Result<(OwnedFd, OwnedFd), Error> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(Error::io(
            ErrorKind::Spawn,
            "create lifeline socket pair",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    let (master_end, child_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((master_end, above_child_fds(child_end)?))
}

fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a fresh descriptor; pidfds are close-on-exec by definition.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// SIGKILL and a blocking reap: for a child that must not outlive an error path.
pub(crate) fn kill_and_reap(pid: Pid) {
    // SAFETY: plain syscalls on a pid we started and have not reaped.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 && *libc::__errno_location() == libc::EINTR {}
    }
}
