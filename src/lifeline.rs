//! The lifeline: a Unix stream socket pair between the master and one child (the child's end
//! is fd 4). What crosses it:
//! - child → master: `READY_BYTE`, once, when the child is about to accept connections;
//! - master → child: a hello first, written before the child starts: `HELLO_BYTE`, the
//!   child's cell in the shared memory and the heartbeat period (little-endian u32 each),
//!   with the shared memory's descriptor attached (see `crate::shared`);
//! - master → child, when serving TLS: the TLS material (`crate::tls::wire`), second, written
//!   right after the spawn; the child takes the hello, then reads this message to its end
//!   (`crate::tls::receive`), both before `init_child`;
//! - master → child: `CLOSING_BYTE` when a stop begins with a shutdown delay: keep serving,
//!   but answer every response with `Connection: close` (the SIGTERM follows after the delay);
//! - master → child: `STOP_BYTE`, just before the master's SIGTERM of a graceful stop;
//! - EOF: the other side is gone. The master's end is close-on-exec and held by the master
//!   alone, so the kernel closes it the instant the master dies, however it dies.
//!
//! The stop byte exists because a SIGTERM alone is ambiguous. PR_SET_PDEATHSIG, the backup for
//! the EOF, fires when the master's forking *thread* exits; in a multi-threaded master (a Go
//! host) killed with SIGKILL, that can happen before the last thread closes the descriptors, so
//! the child sees a SIGTERM first and the EOF a moment later. A stop the master did not
//! announce therefore waits briefly for the EOF before it is taken as a plain stop.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, recv, recvmsg, send, sendmsg,
};

pub(crate) const READY_BYTE: u8 = b'R';
pub(crate) const STOP_BYTE: u8 = b'S';
pub(crate) const HELLO_BYTE: u8 = b'H';
pub(crate) const CLOSING_BYTE: u8 = b'C';
const HELLO_LEN: usize = 9;

/// What the master tells a child before it starts.
pub(crate) struct Hello {
    /// The shared memory.
    pub region: OwnedFd,
    pub cell: u32,
    /// Milliseconds between heartbeats the watchdog needs; 0 = off.
    pub period_ms: u32,
}

/// How long an unannounced stop waits for the lifeline's EOF before it is taken as a stop
/// by someone other than a dying master. 100 ms was too short on a loaded machine: a Go
/// master's last threads took longer than that to die after the forking one (a test run of
/// the Go binding, 2 CPUs busy with the suite, saw a child exit without the master-death
/// hook). It only delays the exit of a child that someone other than its master stopped.
pub(crate) const PDEATH_SETTLE: Duration = Duration::from_millis(500);

static STOP_ANNOUNCED: AtomicBool = AtomicBool::new(false);
static CLOSING_ANNOUNCED: AtomicBool = AtomicBool::new(false);

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
        record(&buf[..n]);
    }
}

/// Remembers the announcements among bytes read from the lifeline.
fn record(bytes: &[u8]) {
    if bytes.contains(&STOP_BYTE) {
        STOP_ANNOUNCED.store(true, Ordering::Release);
    }
    if bytes.contains(&CLOSING_BYTE) {
        CLOSING_ANNOUNCED.store(true, Ordering::Release);
    }
}

/// True once the master announced a stop with a shutdown delay (or a graceful stop): the
/// child serves on, but every response closes its connection.
pub(crate) fn closing_announced() -> bool {
    CLOSING_ANNOUNCED.load(Ordering::Acquire)
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
    announce(fd, STOP_BYTE);
}

/// Master side: announces the shutdown delay to a child.
pub(crate) fn announce_closing(fd: RawFd) {
    announce(fd, CLOSING_BYTE);
}

fn announce(fd: RawFd, byte: u8) {
    // A full or closed socket just drops it (MSG_NOSIGNAL: a dead child must not raise SIGPIPE
    // in the master).
    let _ = send(fd, &[byte], MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT);
}

/// Master side, on a fresh lifeline: queues the hello for the child.
pub(crate) fn send_hello(
    fd: RawFd,
    region: BorrowedFd<'_>,
    cell: u32,
    period_ms: u32,
) -> nix::Result<()> {
    let mut msg = [0u8; HELLO_LEN];
    msg[0] = HELLO_BYTE;
    msg[1..5].copy_from_slice(&cell.to_le_bytes());
    msg[5..9].copy_from_slice(&period_ms.to_le_bytes());
    let fds = [region.as_raw_fd()];
    let sent = sendmsg::<()>(
        fd,
        &[IoSlice::new(&msg)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        None,
    )?;
    if sent != HELLO_LEN {
        return Err(nix::errno::Errno::EMSGSIZE);
    }
    Ok(())
}

/// Child side, before anything else is read from the lifeline: the master's hello, if it sent
/// one (it is queued before the child starts, so it is there or was never sent). Reads the
/// hello's bytes only, so that a stop byte behind it stays for `read`.
pub(crate) fn take_hello(fd: RawFd) -> Option<Hello> {
    // Peek first: with no hello, what is queued is the next message (the TLS material), or a
    // stop byte, and must stay for its own reader.
    let mut first = [0u8; 1];
    match recv(fd, &mut first, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_PEEK) {
        Ok(1) if first[0] == HELLO_BYTE => {}
        _ => return None,
    }
    let mut msg = [0u8; HELLO_LEN];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut msg)];
    let got = recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let mut region = None;
    for cmsg in got.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for raw in fds {
                // SAFETY: SCM_RIGHTS installed this descriptor in this process just now.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                region.get_or_insert(owned);
            }
        }
    }
    let n = got.bytes;
    if n != HELLO_LEN || msg[0] != HELLO_BYTE {
        record(&msg[..n]);
        return None;
    }
    Some(Hello {
        region: region?,
        cell: u32::from_le_bytes(msg[1..5].try_into().expect("4 bytes")),
        period_ms: u32::from_le_bytes(msg[5..9].try_into().expect("4 bytes")),
    })
}
