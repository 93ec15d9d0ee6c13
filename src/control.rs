//! Process-wide stop requests: the self-pipe that wakes the master's or the child's loop, the
//! library's signal handlers, and `shutdown()`, which a host may call from any thread or from
//! its own signal handler.
//!
//! The pipe is created once per process and never closed, so a `shutdown()` racing with the
//! end of `listen_and_serve` can never write into a recycled descriptor. Both ends are
//! close-on-exec and non-blocking: a full pipe already holds a wake-up, so a failed write
//! loses nothing.

use std::io;
use std::os::fd::RawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};

/// What a byte in the pipe asks for.
pub(crate) const WAKE_STOP: u8 = b'T';
/// A second SIGINT in the master: stop without a grace period.
pub(crate) const WAKE_STOP_NOW: u8 = b'K';

static WAKE_READ: AtomicI32 = AtomicI32::new(-1);
static WAKE_WRITE: AtomicI32 = AtomicI32::new(-1);
/// Set by every stop request and checked by the loops when they start, so a request that
/// arrives while `listen_and_serve` is still setting up is not lost.
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);
static SIGINT_COUNT: AtomicU32 = AtomicU32::new(0);
static INIT: Mutex<()> = Mutex::new(());

/// Returns the read end of the process's wake pipe, creating the pipe on first use.
pub(crate) fn wake_fd() -> io::Result<RawFd> {
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    let fd = WAKE_READ.load(Ordering::Acquire);
    if fd >= 0 {
        return Ok(fd);
    }
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    WAKE_WRITE.store(fds[1], Ordering::Release);
    WAKE_READ.store(fds[0], Ordering::Release);
    Ok(fds[0])
}

/// Requests a graceful stop of whatever this process is serving. Async-signal-safe: only
/// atomics and write(2). Returns false when no server has started in this process yet (the
/// request is remembered and stops the next one at once).
pub fn shutdown() -> bool {
    wake(WAKE_STOP)
}

fn wake(byte: u8) -> bool {
    STOP_REQUESTED.store(true, Ordering::Release);
    let fd = WAKE_WRITE.load(Ordering::Acquire);
    if fd < 0 {
        return false;
    }
    // SAFETY: writing one byte from a valid buffer; errno is saved by the signal handler.
    unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    true
}

pub(crate) fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::Acquire)
}

/// Reads every pending byte; returns the most urgent request seen, if any.
pub(crate) fn drain_wake() -> Option<u8> {
    let fd = WAKE_READ.load(Ordering::Acquire);
    let mut seen = None;
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reading into a valid buffer of the given length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return seen;
        }
        for &b in &buf[..n as usize] {
            if seen != Some(WAKE_STOP_NOW) {
                seen = Some(b);
            }
        }
    }
}

/// Forgets stop requests once a serve has ended, so the next one starts clean.
pub(crate) fn reset() {
    drain_wake();
    STOP_REQUESTED.store(false, Ordering::Release);
    SIGINT_COUNT.store(0, Ordering::Release);
}

extern "C" fn on_signal(sig: libc::c_int) {
    // SAFETY: errno is thread-local; saving and restoring it keeps the interrupted code intact.
    let saved = unsafe { *libc::__errno_location() };
    let byte = if sig == libc::SIGINT && SIGINT_COUNT.fetch_add(1, Ordering::AcqRel) >= 1 {
        WAKE_STOP_NOW
    } else {
        WAKE_STOP
    };
    wake(byte);
    unsafe { *libc::__errno_location() = saved };
}

/// Which signals the library takes over.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// SIGTERM and SIGINT stop gracefully; a second SIGINT stops at once.
    Master,
    /// SIGTERM drains; SIGINT is ignored, because a terminal's Ctrl-C reaches the whole
    /// process group and the master, not each child, decides how the group stops.
    Child,
}

/// Installed signal handlers; dropping it restores the host's previous dispositions.
pub(crate) struct SignalGuard {
    saved: Vec<(libc::c_int, libc::sigaction)>,
}

impl SignalGuard {
    pub(crate) fn install(role: Role) -> io::Result<SignalGuard> {
        wake_fd()?;
        let mut guard = SignalGuard { saved: Vec::new() };
        guard.set(libc::SIGTERM, on_signal as *const () as libc::sighandler_t)?;
        let int_action = match role {
            Role::Master => on_signal as *const () as libc::sighandler_t,
            Role::Child => libc::SIG_IGN,
        };
        guard.set(libc::SIGINT, int_action)?;
        Ok(guard)
    }

    fn set(&mut self, sig: libc::c_int, handler: libc::sighandler_t) -> io::Result<()> {
        // SAFETY: sigaction structs are plain data; zeroed is a valid empty mask.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler;
            // SA_ONSTACK: Go hosts run signal handlers on the alternate stack; SA_RESTART keeps
            // the host's blocking calls from failing with EINTR.
            action.sa_flags = libc::SA_ONSTACK | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
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
