//! Starting one child: the lifeline socket pair, the default re-exec or the user's command
//! producer (with its contract checked), and the pidfd that tells the master when it exits.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::wait::waitpid;
use nix::unistd::Pid as NixPid;

use crate::confine::ChildConfinement;
use crate::error::{Error, ErrorKind, HookError};
use crate::hooks::{CHILD_ENV, LISTENER_FD, Pid, SpawnRequest};
use crate::lifeline;
use crate::master::bind::{above_child_fds, lift};

/// A started child as the master tracks it.
pub(crate) struct Child {
    pub pid: Pid,
    /// Readable once the child exits; `None` on kernels without pidfd_open (then the master
    /// polls with waitpid).
    pub pidfd: Option<OwnedFd>,
    /// The master's end of the lifeline: the child writes its ready byte here, and the
    /// master's death closes it, which the child sees as EOF.
    pub lifeline: Option<OwnedFd>,
    /// When it reported "listening".
    pub ready_at: Option<Instant>,
    pub started: Instant,
    /// Its generation: 1 for the first children, one more for each reload.
    pub generation: u64,
    /// Its cell in the shared memory, if it has one.
    pub cell: Option<usize>,
    /// When the watchdog sent it SIGABRT, and whether SIGKILL followed.
    pub aborted: Option<(Instant, bool)>,
    /// The heartbeat the watchdog last saw (the loop's turn count) and when it saw it move.
    pub beat_seen: (u64, Option<Instant>),
    /// Requests after which it is recycled (`max_requests` plus its jitter).
    pub request_limit: Option<u64>,
}

impl Child {
    pub fn ready(&self) -> bool {
        self.ready_at.is_some()
    }
}

pub(crate) type Producer = dyn FnMut(&SpawnRequest) -> Result<Pid, HookError> + Send;

/// What a child finds in its lifeline's hello: the shared memory, its cell there, and the
/// heartbeat period in milliseconds (0: no watchdog).
pub(crate) struct Hello<'a> {
    pub region: BorrowedFd<'a>,
    pub cell: usize,
    pub period_ms: u32,
}

/// Starts the child of `slot` and `generation` serving `listeners` (`words`: what
/// `PREFORK_LISTENERS` says of them).
pub(crate) fn spawn(
    listeners: &[RawFd],
    words: String,
    slot: usize,
    generation: u64,
    hello: Option<Hello<'_>>,
    confinement: ChildConfinement,
    producer: Option<&mut Producer>,
) -> Result<Child, Error> {
    let (master_end, child_end) = lifeline_pair()?;
    // Queued before the child exists, so it is there when the child looks. Without it the
    // child runs without heartbeat and counters.
    let cell = hello.and_then(|h| {
        lifeline::send_hello(master_end.as_raw_fd(), h.region, h.cell as u32, h.period_ms)
            .ok()
            .map(|()| h.cell)
    });
    // Every source above every target: placing one never clobbers another.
    let last = LISTENER_FD + listeners.len() as RawFd;
    let mut sources = listeners.to_vec();
    sources.push(child_end.as_raw_fd());
    let (sources, _lifted) = lift(&sources, last)?;
    let (lifeline_fd, listener_fds) = sources.split_last().expect("the lifeline is there");
    let request = SpawnRequest {
        listener_fd: listener_fds[0],
        listener_fds: listener_fds.to_vec(),
        listeners_env: Some(words),
        lifeline_fd: *lifeline_fd,
        slot,
        program: PathBuf::from("/proc/self/exe"),
        args: std::env::args_os().collect::<Vec<OsString>>(),
        confinement,
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
        ready_at: None,
        started: Instant::now(),
        generation,
        cell,
        aborted: None,
        beat_seen: (0, None),
        request_limit: None,
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
    // Raw libc, not nix's waitpid: the raw status goes into the message, and nix would report
    // a child killed at once by a real-time signal as an EINVAL (see master::wait).
    // SAFETY: WNOHANG never blocks; status is a valid out pointer for the duration of the call.
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
    let (master_end, child_end) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| {
        Error::io(
            ErrorKind::Spawn,
            "create lifeline socket pair",
            io::Error::from(e),
        )
    })?;
    Ok((master_end, above_child_fds(child_end)?))
}

/// nix 0.32 has no pidfd_open, so the raw system call.
pub(crate) fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; a
    // descriptor it returns is fresh, so the OwnedFd is its only owner (pidfds are
    // close-on-exec by definition).
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        (fd >= 0).then(|| OwnedFd::from_raw_fd(fd as RawFd))
    }
}

/// SIGKILL and a blocking reap: for a child that must not outlive an error path. The pid is
/// ours and not reaped yet, so it cannot have been recycled.
pub(crate) fn kill_and_reap(pid: Pid) {
    let pid = NixPid::from_raw(pid);
    let _ = kill(pid, Signal::SIGKILL);
    // Only EINTR is retried: any other error (EINVAL from a status nix cannot decode included)
    // comes after the reap or means there is nothing left to reap.
    while waitpid(pid, None) == Err(Errno::EINTR) {}
}
