//! The memory the master shares with its children: one cache-line cell per child, where the
//! child's event loop publishes a heartbeat and its counters and the master reads them (the
//! hung-child watchdog, the stats).
//!
//! A memfd, not an anonymous shared mapping: children are re-executed, and a mapping does not
//! survive exec, while a descriptor does. The master creates it before the first spawn and
//! hands it to each child over the lifeline (SCM_RIGHTS, in a hello message written before the
//! child exists, so it is waiting when the child starts), with the number of the child's cell.
//! The lifeline rather than a third fixed descriptor: a custom command producer's contract
//! stays "fd 3 and fd 4", and a host's descriptors can never collide with it. The child maps
//! the file and closes the descriptor, so a grandchild cannot inherit it.
//!
//! The heartbeat is a count of the loop's turns, not a time: the master notices when it stops
//! moving, by its own clock, so a turn costs the child three relaxed stores to a cell it
//! resolved once, and no clock arithmetic (a timestamp cost 50 instructions per turn under
//! bench/instructions' callgrind). Measured against a loop that publishes nothing, demo_server
//! at one connection and depth 1 (one request per turn, the worst case): 2,582 -> 2,594
//! instructions per request (+0.5%; finding the cell each turn made it 2,601); at 16 x 16,
//! 1,732 either way.
//!
//! Every field is an atomic written by one side and read by the other with relaxed ordering:
//! each is a value on its own (no field is read as a consequence of another), and the master
//! only needs to see a fresh enough value. The master also writes what it knows of each child
//! into its cell (pid, slot, generation, start, state) and its own totals into a block ahead
//! of the cells, so that the stats (`crate::stats`) read the same figures in the master and in
//! any child, without a lock and at no cost to the children's loops.

use nix::sys::memfd::MFdFlags;
use nix::sys::time::TimeSpec;
use nix::time::{ClockId, clock_gettime};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Cells in the region: room for the most slots (`MAX_CHILDREN`), a successor for each during
/// a reload, and retiring children, with a margin. 256 KiB of address space per process, of
/// which each child touches one page.
pub(crate) const CELLS: usize = 4096;

/// One child's cell, alone on its cache line so that children never share a line.
#[repr(C, align(64))]
#[derive(Default)]
pub(crate) struct Cell {
    /// Written by the child: its event loop's turns so far (the heartbeat).
    pub turns: AtomicU64,
    /// Written by the child: requests it has received.
    pub requests: AtomicU64,
    /// Written by the child: connections it has open.
    pub connections: AtomicU64,
    /// Written by the master: the child's `STATE_*`, 0 while the cell is free.
    pub state: AtomicU32,
    pub pid: AtomicI32,
    pub slot: AtomicU64,
    pub generation: AtomicU64,
    /// Wall clock of its spawn, milliseconds since the Unix epoch.
    pub started_unix_ms: AtomicU64,
    /// Replacements of crashed children its slot had before it.
    pub slot_restarts: AtomicU64,
}

pub(crate) const STATE_STARTING: u32 = 1;
pub(crate) const STATE_SERVING: u32 = 2;
pub(crate) const STATE_RETIRING: u32 = 3;

impl Cell {
    pub(crate) fn clear(&self) {
        self.state.store(0, Ordering::Relaxed);
        self.pid.store(0, Ordering::Relaxed);
        for field in [
            &self.turns,
            &self.requests,
            &self.connections,
            &self.slot,
            &self.generation,
            &self.started_unix_ms,
            &self.slot_restarts,
        ] {
            field.store(0, Ordering::Relaxed);
        }
    }
}

/// The master's totals, ahead of the cells; written by the master only.
#[repr(C, align(64))]
#[derive(Default)]
pub(crate) struct MasterBlock {
    pub pid: AtomicI32,
    pub children: AtomicU64,
    pub generation: AtomicU64,
    pub started_unix_ms: AtomicU64,
    pub spawned: AtomicU64,
    pub exited: AtomicU64,
    /// Requests of children already reaped (the live ones are in their cells).
    pub retired_requests: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    pub recycles: AtomicU64,
    pub watchdog_kills: AtomicU64,
    /// One more than the highest cell ever handed out: readers look no further.
    pub cells_used: AtomicU64,
}

/// Adds one to a master counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The region this process serves with, for the stats calls of any thread.
static PUBLISHED: Mutex<Option<Arc<Region>>> = Mutex::new(None);

pub(crate) fn publish(region: Option<Arc<Region>>) {
    *PUBLISHED.lock().unwrap_or_else(|e| e.into_inner()) = region;
}

pub(crate) fn published() -> Option<Arc<Region>> {
    PUBLISHED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The mapped cells.
pub(crate) struct Region {
    base: NonNull<u8>,
    /// Kept by the master to hand to each child; a child closes it once mapped.
    fd: Option<OwnedFd>,
}

// SAFETY: the cells are atomics, shared between threads (and processes) by design; the pointer
// is valid for the region's life.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

const HEAD: usize = size_of::<MasterBlock>();
const BYTES: usize = HEAD + CELLS * size_of::<Cell>();

impl Region {
    /// Master: a fresh zeroed region.
    pub(crate) fn create() -> io::Result<Region> {
        let fd = nix::sys::memfd::memfd_create(c"prefork-shared", MFdFlags::MFD_CLOEXEC)?;
        nix::unistd::ftruncate(&fd, BYTES as libc::off_t)?;
        let base = map(fd.as_fd())?;
        Ok(Region { base, fd: Some(fd) })
    }

    /// Child: maps the region the master sent, then closes the descriptor.
    pub(crate) fn adopt(fd: OwnedFd) -> io::Result<Region> {
        let base = map(fd.as_fd())?;
        Ok(Region { base, fd: None })
    }

    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|fd| fd.as_fd())
    }

    pub(crate) fn cell(&self, index: usize) -> Option<&Cell> {
        // SAFETY: within the mapping (page-aligned, so the cells after the 64-aligned head
        // are aligned), which lives as long as self; Cell is all atomics, for which any bit
        // pattern (zero from ftruncate included) is valid.
        (index < CELLS).then(|| unsafe { &*self.base.as_ptr().add(HEAD).cast::<Cell>().add(index) })
    }

    pub(crate) fn master(&self) -> &MasterBlock {
        // SAFETY: as `cell`: the head of the mapping, all atomics.
        unsafe { &*self.base.as_ptr().cast::<MasterBlock>() }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of BYTES bytes; no reference into it outlives self.
        unsafe { libc::munmap(self.base.as_ptr().cast(), BYTES) };
    }
}

fn map(fd: BorrowedFd<'_>) -> io::Result<NonNull<u8>> {
    // SAFETY: a shared read-write mapping of BYTES bytes of a file at least that long.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned NULL"))
}

/// A clock's milliseconds (CLOCK_BOOTTIME also counts a system suspend, CLOCK_MONOTONIC not).
pub(crate) fn clock_ms(clock: libc::clockid_t) -> u64 {
    // Both clocks exist on every Linux this runs on; a failure would read as time 0.
    let ts = clock_gettime(ClockId::from_raw(clock)).unwrap_or(TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1000 + ts.tv_nsec() as u64 / 1_000_000
}

/// A child's end: its cell and how often the master wants a heartbeat.
pub(crate) struct Beat {
    region: Arc<Region>,
    cell: usize,
    /// Longest time between two heartbeats; `None` when the watchdog is off (the counters are
    /// still published, at the loop's own pace).
    pub period: Option<Duration>,
}

impl Beat {
    pub(crate) fn new(region: Arc<Region>, cell: usize, period: Option<Duration>) -> Option<Beat> {
        region.cell(cell)?;
        Some(Beat {
            region,
            cell,
            period,
        })
    }

    /// The cell, which the event loop resolves once and keeps: a turn then costs its three
    /// stores and nothing to find them.
    pub(crate) fn cell(&self) -> &Cell {
        self.region.cell(self.cell).expect("checked in new")
    }
}

impl Cell {
    /// The event loop's turn number `turns`, with its open connections and the requests
    /// received so far.
    #[inline]
    pub(crate) fn turn(&self, turns: u64, connections: usize, requests: u64) {
        self.turns.store(turns, Ordering::Relaxed);
        self.connections
            .store(connections as u64, Ordering::Relaxed);
        self.requests.store(requests, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_mapping_sees_the_master_cells() {
        let master = Region::create().unwrap();
        let dup = master.fd().unwrap().try_clone_to_owned().unwrap();
        let child = Region::adopt(dup).unwrap();
        let beat = Beat::new(Arc::new(child), 7, None).unwrap();
        beat.cell().turn(5, 3, 11);
        let cell = master.cell(7).unwrap();
        assert_eq!(cell.turns.load(Ordering::Relaxed), 5);
        assert_eq!(cell.connections.load(Ordering::Relaxed), 3);
        assert_eq!(cell.requests.load(Ordering::Relaxed), 11);
        assert!(master.cell(CELLS).is_none());
        assert_eq!(size_of::<Cell>(), 64);
    }
}
