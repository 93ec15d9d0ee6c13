//! Process-wide requests: the self-pipe that wakes the master's or the child's loop, the
//! library's signal handlers, `shutdown()` and the master's control requests (`reload()`,
//! `set_children_live()`, `scale_children()`), which a host may call from any thread or from its own signal handler.
//!
//! A request is an atomic (a flag or a count) plus one byte in the pipe to wake the loop, which
//! reads the atomics: bytes may be lost to a full pipe or merged, atomics are not.
//!
//! The pipe is created once per process and never closed, so a `shutdown()` racing with the
//! end of `listen_and_serve` can never write into a recycled descriptor. Both ends are
//! close-on-exec and non-blocking: a full pipe already holds a wake-up, so a failed write
//! loses nothing.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize, Ordering};

use nix::errno::Errno;
use nix::fcntl::OFlag;

/// What a byte in the pipe asks for.
pub(crate) const WAKE_STOP: u8 = b'T';
/// A second SIGINT in the master: stop without a grace period.
pub(crate) const WAKE_STOP_NOW: u8 = b'K';
/// A control request of the master (reload, scale): read the atomics below.
pub(crate) const WAKE_CONTROL: u8 = b'C';
/// SIGCHLD in a master that reaps orphans: look for zombies.
pub(crate) const WAKE_CHILD: u8 = b'Z';

/// The pipe's (read, write) ends. A static is never dropped, which is what keeps the pipe open
/// for the life of the process. `OnceLock::get` is one atomic load that never waits (it returns
/// `None` while another thread is still creating the pipe), so the signal handler may call it.
static WAKE: OnceLock<(OwnedFd, OwnedFd)> = OnceLock::new();
/// Set by every stop request and checked by the loops when they start, so a request that
/// arrives while `listen_and_serve` is still setting up is not lost.
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);
static SIGINT_COUNT: AtomicU32 = AtomicU32::new(0);
/// Stop requests so far: a second one during the master's shutdown delay ends the delay.
static STOP_COUNT: AtomicU32 = AtomicU32::new(0);
/// A child learned that its master is gone, and drains.
static MASTER_GONE: AtomicBool = AtomicBool::new(false);
/// True while a master runs in this process: control requests are only taken then.
static MASTER_RUNNING: AtomicBool = AtomicBool::new(false);
static RELOAD_REQUESTED: AtomicBool = AtomicBool::new(false);
static UPGRADE_REQUESTED: AtomicBool = AtomicBool::new(false);
/// Children to add (SIGTTIN) or remove (SIGTTOU) since the master last looked.
static SCALE_DELTA: AtomicI64 = AtomicI64::new(0);
/// A child count asked for with `set_children_live`; 0 = none pending.
static SCALE_TARGET: AtomicUsize = AtomicUsize::new(0);

/// Returns the read end of the process's wake pipe, creating the pipe on first use.
pub(crate) fn wake_fd() -> io::Result<BorrowedFd<'static>> {
    if let Some((read, _)) = WAKE.get() {
        return Ok(read.as_fd());
    }
    let pipe = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(io::Error::from)?;
    // Should a racing first call have won, its pipe is the one; this one, never published,
    // is closed.
    let (read, _) = WAKE.get_or_init(|| pipe);
    Ok(read.as_fd())
}

/// Requests a graceful stop of whatever this process is serving. Async-signal-safe: only
/// atomics and write(2). Returns false when no server has started in this process yet (the
/// request is remembered and stops the next one at once).
pub fn shutdown() -> bool {
    wake(WAKE_STOP)
}

fn wake(byte: u8) -> bool {
    STOP_REQUESTED.store(true, Ordering::Release);
    STOP_COUNT.fetch_add(1, Ordering::AcqRel);
    poke(byte)
}

/// True once this process is stopping: a stop was requested (SIGTERM, `shutdown()`), the
/// master announced its shutdown delay, or the master is gone. A handler's health check
/// answers "not ready" from then on, so that a balancer takes the instance out while it still
/// serves. Async-signal-safe (atomic loads).
pub fn stopping() -> bool {
    STOP_REQUESTED.load(Ordering::Acquire)
        || MASTER_GONE.load(Ordering::Acquire)
        || crate::lifeline::closing_announced()
}

/// How many stop requests this process has had.
pub(crate) fn stop_count() -> u32 {
    STOP_COUNT.load(Ordering::Acquire)
}

/// A child saw its master's death.
pub(crate) fn master_gone() {
    MASTER_GONE.store(true, Ordering::Release);
}

/// Writes one wake-up byte; false when no pipe exists yet.
fn poke(byte: u8) -> bool {
    let Some((_, write)) = WAKE.get() else {
        return false;
    };
    // A full pipe already holds a wake-up; errno is saved by the signal handler.
    let _ = nix::unistd::write(write, &[byte]);
    true
}

/// Requests a graceful reload of the master running in this process: a new generation of
/// children, then the old one's graceful stop. Async-signal-safe (atomics and write(2)).
/// Returns false, and forgets the request, when no master runs in this process.
pub fn reload() -> bool {
    if !MASTER_RUNNING.load(Ordering::Acquire) {
        return false;
    }
    RELOAD_REQUESTED.store(true, Ordering::Release);
    poke(WAKE_CONTROL)
}

/// Asks the running master for `delta` children more (or fewer, when negative), counted from
/// the count it has or was last asked for; it keeps at least one. Async-signal-safe. False
/// when no master runs in this process.
pub fn scale_children(delta: i64) -> bool {
    if !MASTER_RUNNING.load(Ordering::Acquire) {
        return false;
    }
    SCALE_DELTA.fetch_add(delta, Ordering::AcqRel);
    poke(WAKE_CONTROL)
}

/// Asks the running master for `children` children (at least 1); a later request replaces one
/// not yet applied, and `scale_children` requests after it count from it. Async-signal-safe.
/// False when no master runs in this process or `children` is 0.
pub fn set_children_live(children: usize) -> bool {
    if children == 0 || !MASTER_RUNNING.load(Ordering::Acquire) {
        return false;
    }
    SCALE_DELTA.store(0, Ordering::Release);
    SCALE_TARGET.store(children, Ordering::Release);
    poke(WAKE_CONTROL)
}

/// Requests a binary upgrade of the master running in this process: it starts the program
/// from disk as a new master with its listening sockets, and stops its own children once the
/// new master is ready. Async-signal-safe. False when no master runs in this process.
pub fn upgrade() -> bool {
    if !MASTER_RUNNING.load(Ordering::Acquire) {
        return false;
    }
    UPGRADE_REQUESTED.store(true, Ordering::Release);
    poke(WAKE_CONTROL)
}

/// Master: takes a pending upgrade request.
pub(crate) fn take_upgrade() -> bool {
    UPGRADE_REQUESTED.swap(false, Ordering::AcqRel)
}

/// Master: takes a pending reload request.
pub(crate) fn take_reload() -> bool {
    RELOAD_REQUESTED.swap(false, Ordering::AcqRel)
}

/// Master: takes pending scaling requests, applied to the current child count `current`;
/// None when there are none.
pub(crate) fn take_scale(current: usize) -> Option<i64> {
    let target = SCALE_TARGET.swap(0, Ordering::AcqRel);
    let delta = SCALE_DELTA.swap(0, Ordering::AcqRel);
    if target == 0 && delta == 0 {
        return None;
    }
    let base = if target == 0 { current } else { target };
    Some(base as i64 + delta)
}

/// Marks the master as running (control requests are taken) or not.
pub(crate) fn set_master_running(running: bool) {
    MASTER_RUNNING.store(running, Ordering::Release);
}

pub(crate) fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::Acquire)
}

/// Reads every pending byte of the process's wake pipe; returns the most urgent request seen.
pub(crate) fn drain_wake() -> Option<u8> {
    drain(WAKE.get()?.0.as_fd())
}

/// Reads every pending byte of a non-blocking stop pipe; returns the most urgent request seen.
pub(crate) fn drain(fd: BorrowedFd<'_>) -> Option<u8> {
    let mut seen = None;
    let mut buf = [0u8; 64];
    loop {
        let n = match nix::unistd::read(fd, &mut buf) {
            Ok(0) | Err(_) => return seen,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if seen != Some(WAKE_STOP_NOW) {
                seen = Some(b);
            }
        }
    }
}

/// Forgets stop requests once a serve has ended, so the next one starts clean.
pub(crate) fn reset() {
    set_master_running(false);
    drain_wake();
    STOP_REQUESTED.store(false, Ordering::Release);
    MASTER_GONE.store(false, Ordering::Release);
    SIGINT_COUNT.store(0, Ordering::Release);
    RELOAD_REQUESTED.store(false, Ordering::Release);
    UPGRADE_REQUESTED.store(false, Ordering::Release);
    SCALE_DELTA.store(0, Ordering::Release);
    SCALE_TARGET.store(0, Ordering::Release);
}

extern "C" fn on_signal(sig: libc::c_int) {
    // errno is thread-local: restoring it keeps the interrupted code's value intact.
    let saved = Errno::last_raw();
    match sig {
        libc::SIGHUP => {
            reload();
        }
        libc::SIGUSR2 => {
            upgrade();
        }
        libc::SIGTTIN => {
            scale_children(1);
        }
        libc::SIGTTOU => {
            scale_children(-1);
        }
        libc::SIGCHLD => {
            poke(WAKE_CHILD);
        }
        _ => {
            let byte = if sig == libc::SIGINT && SIGINT_COUNT.fetch_add(1, Ordering::AcqRel) >= 1 {
                WAKE_STOP_NOW
            } else {
                WAKE_STOP
            };
            wake(byte);
        }
    }
    Errno::set_raw(saved);
}

/// Which signals the library takes over.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// SIGTERM and SIGINT stop gracefully; a second SIGINT stops at once. SIGHUP reloads,
    /// SIGUSR2 upgrades the binary,
    /// SIGTTIN and SIGTTOU add and remove a child. With `wake_on_child_exit` (a master that
    /// reaps orphans), SIGCHLD wakes the loop too.
    Master { wake_on_child_exit: bool },
    /// SIGTERM drains; SIGINT, SIGHUP and SIGUSR2 are ignored, because a terminal's Ctrl-C or
    /// hangup (or a signal sent to the group) reaches the whole process group and the master,
    /// not each child, decides what follows.
    Child,
}

/// Installed signal handlers; dropping it restores the host's previous dispositions.
///
/// Raw `libc::sigaction` on purpose: nix 0.32's `SigAction::new` leaves the struct's
/// `sa_restorer` uninitialised and then calls `assume_init`, which is undefined behaviour in
/// Rust however glibc treats the field; a zeroed struct has no such hole.
pub(crate) struct SignalGuard {
    saved: Vec<(libc::c_int, libc::sigaction)>,
}

impl SignalGuard {
    pub(crate) fn install(role: Role) -> io::Result<SignalGuard> {
        wake_fd()?;
        let mut guard = SignalGuard { saved: Vec::new() };
        let on_signal = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        guard.set(libc::SIGTERM, on_signal)?;
        let int_action = match role {
            Role::Master { .. } => on_signal,
            Role::Child => libc::SIG_IGN,
        };
        guard.set(libc::SIGINT, int_action)?;
        guard.set(libc::SIGHUP, int_action)?;
        guard.set(libc::SIGUSR2, int_action)?;
        if let Role::Master { wake_on_child_exit } = role {
            guard.set(libc::SIGTTIN, on_signal)?;
            guard.set(libc::SIGTTOU, on_signal)?;
            if wake_on_child_exit {
                guard.set(libc::SIGCHLD, on_signal)?;
            }
        }
        Ok(guard)
    }

    fn set(&mut self, sig: libc::c_int, handler: libc::sighandler_t) -> io::Result<()> {
        // SAFETY: sigaction structs are plain data and all-zero is a valid one (an empty mask,
        // no flags); on_signal is async-signal-safe (atomics, a lock-free OnceLock::get and
        // write(2), errno saved and restored), and SIG_IGN needs nothing.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler;
            // SA_ONSTACK: Go hosts run signal handlers on the alternate stack; SA_RESTART
            // keeps the host's blocking calls from failing with EINTR.
            action.sa_flags = libc::SA_ONSTACK | libc::SA_RESTART;
            if sig == libc::SIGCHLD {
                // Exits only: a child stopped or continued leaves nothing to reap.
                action.sa_flags |= libc::SA_NOCLDSTOP;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, &action, &mut old) != 0 {
                return Err(io::Error::last_os_error());
            }
            self.saved.push((sig, old));
        }
        Ok(())
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for (sig, old) in self.saved.drain(..).rev() {
            // SAFETY: restoring a disposition that sigaction itself returned.
            unsafe { libc::sigaction(sig, &old, std::ptr::null_mut()) };
        }
    }
}
