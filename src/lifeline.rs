//! The lifeline: a Unix stream socket pair between the master and one child (the child's end
//! is fd 4). What crosses it:
//! - child → master: `READY_BYTE`, once, when the child is about to accept connections;
//! - master → child: `STOP_BYTE`, just before the master's SIGTERM of a graceful stop;
//! - EOF: the other side is gone. The master's end is close-on-exec and held by the master
//!   alone, so the kernel closes it the instant the master dies, however it dies.
//!
//! The stop byte exists because a SIGTERM alone is ambiguous. PR_SET_PDEATHSIG, the backup for
//! the EOF, fires when the master's forking *thread* exits; in a multi-threaded master (a Go
//! host) killed with SIGKILL, that can happen before the last thread closes the descriptors, so
//! the child sees a SIGTERM first and the EOF a moment later. A stop the master did not
//! announce therefore waits briefly for the EOF before it is taken as a plain stop.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{MsgFlags, recv, send};

pub(crate) const READY_BYTE: u8 = b'R';
pub(crate) const STOP_BYTE: u8 = b'S';

/// How long an unannounced stop waits for the lifeline's EOF before it is taken as a stop
/// by someone other than a dying master.
pub(crate) const PDEATH_SETTLE: Duration = Duration::from_millis(100);

static STOP_ANNOUNCED: AtomicBool = AtomicBool::new(false);

/// What the lifeline says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// The master is there (a stop announcement, if any, was recorded).
    Open,
    /// EOF or an error: the master is gone.
    Gone,
}

/// Reads whatever is pending without blocking.
pub(crate) fn read(fd: RawFd) -> State {
    let mut buf = [0u8; 64];
    loop {
        // MSG_DONTWAIT leaves the descriptor's mode alone.
        let n = match recv(fd, &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return State::Gone,
            Ok(n) => n,
            Err(Errno::EAGAIN) => return State::Open,
            Err(Errno::EINTR) => continue,
            Err(_) => return State::Gone,
        };
        if buf[..n].contains(&STOP_BYTE) {
            STOP_ANNOUNCED.store(true, Ordering::Release);
        }
    }
}

/// True once the master announced a graceful stop.
pub(crate) fn stop_announced() -> bool {
    STOP_ANNOUNCED.load(Ordering::Acquire)
}

/// After serving ended without a master-death event: was the master gone all the same?
/// Answers at once when the lifeline tells (EOF, or the master's stop byte); otherwise waits
/// up to `settle` for an EOF.
pub(crate) fn master_gone_after_stop(fd: BorrowedFd<'_>, settle: Duration) -> bool {
    let deadline = Instant::now() + settle;
    loop {
        if read(fd.as_raw_fd()) == State::Gone {
            return true;
        }
        if stop_announced() {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ms = PollTimeout::try_from(left.as_millis().max(1)).unwrap_or(PollTimeout::MAX);
        let _ = nix::poll::poll(&mut [PollFd::new(fd, PollFlags::POLLIN)], ms);
    }
}

/// Master side: announces a graceful stop to a child.
pub(crate) fn announce_stop(fd: RawFd) {
    // A full or closed socket just drops it (MSG_NOSIGNAL: a dead child must not raise SIGPIPE
    // in the master).
    let _ = send(
        fd,
        &[STOP_BYTE],
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
    );
}
