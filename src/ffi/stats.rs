//! `prefork_stats_sized` and `prefork_stats_json`: the figures of [`crate::stats`] for C.

use std::ffi::c_char;

use super::error::{FfiError, prefork_result};
use crate::{ChildState, stats};

/// `prefork_child_stats.state`: started, not yet reported "listening".
pub const PREFORK_CHILD_STARTING: u32 = 1;
/// `prefork_child_stats.state`: serving its slot (or, during a reload or a recycle, ready to
/// take it over).
pub const PREFORK_CHILD_SERVING: u32 = 2;
/// `prefork_child_stats.state`: told to stop, draining.
pub const PREFORK_CHILD_RETIRING: u32 = 3;

/// One child, as `prefork_stats` reports it. Extensible as the callback structs, in the other
/// direction: members are only ever added at the end, and the library writes as many bytes of
/// each element as the caller's `sizeof` (which the `prefork_stats` macro passes) holds.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct prefork_child_stats {
    pub pid: i32,
    /// One of PREFORK_CHILD_STARTING, PREFORK_CHILD_SERVING, PREFORK_CHILD_RETIRING.
    pub state: u32,
    /// Its slot, 0-based; during a reload or a recycle two children share one.
    pub slot: u64,
    /// 1 for the first children, one more for each reload.
    pub generation: u64,
    /// When it was started, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Requests it has received (counted by its event loop, published at every turn).
    pub requests: u64,
    /// Connections it has open.
    pub connections: u64,
    /// Replacements of crashed children its slot had before this child was started.
    pub slot_restarts: u64,
}

/// The master's totals, as `prefork_stats` reports them. Extensible as `prefork_child_stats`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct prefork_master_stats {
    pub pid: i32,
    pub _reserved: u32,
    /// The child count it serves with (slots).
    pub children: u64,
    /// The generation serving (1 until the first reload).
    pub generation: u64,
    pub started_unix_ms: u64,
    /// Children started since the start, and children reaped.
    pub spawned: u64,
    pub exited: u64,
    /// Requests received by every child since the start, reaped ones included.
    pub requests: u64,
    /// Connections open in the children now.
    pub connections: u64,
    pub reloads: u64,
    pub reload_failures: u64,
    pub recycles: u64,
    /// Children killed by the hung-child watchdog.
    pub watchdog_kills: u64,
}

/// Smallest element sizes a caller may pass: those of 0.2, the first with these structs.
const CHILD_0_3: usize = size_of::<prefork_child_stats>();
const MASTER_0_3: usize = size_of::<prefork_master_stats>();

/// The figures of the server this process runs, from the memory the master shares with its
/// children, so that the master and each child read the same: `*master` gets the master's
/// totals (NULL to skip them) and `children[0..cap]` one element per child (the serving ones,
/// those starting, and those draining after a reload, a scale-down or a recycle), ordered by
/// slot; `*count` (NULL to skip) gets the number of children, which may exceed `cap` (then
/// only the first `cap` are written: call again with more room). `child_size` and
/// `master_size` are the caller's `sizeof` of each struct: C and C++ call this through the
/// `prefork_stats` macro, whose arguments are (children, cap, master, count) and which passes
/// the sizes; the library writes no more than that many bytes per element.
///
/// Callable from any thread of the master or of a child while `prefork_listen_and_serve` runs
/// (from `handle`, from a hook): it takes a lock, so not from a signal handler. Each number is
/// read atomically and is at most one event-loop turn old; the set is no atomic snapshot.
/// Errors: PREFORK_ERR_STATE when nothing is served (or the shared memory could not be had),
/// PREFORK_ERR_NULL for a NULL `children` with `cap` above 0, PREFORK_ERR_INVALID_ARGUMENT
/// for a size smaller than the structs of 0.2 or not a multiple of 8.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_stats_sized(
    children: *mut prefork_child_stats,
    child_size: usize,
    cap: usize,
    master: *mut prefork_master_stats,
    master_size: usize,
    count: *mut usize,
) -> prefork_result {
    ffi_boundary!({
        if children.is_null() && cap > 0 {
            return Err(FfiError::null("children"));
        }
        for (name, size, min) in [
            ("child_size", child_size, CHILD_0_3),
            ("master_size", master_size, MASTER_0_3),
        ] {
            if size < min || !size.is_multiple_of(8) || size > isize::MAX as usize {
                return Err(FfiError::invalid(format!(
                    "{name}: {size} is not a size of the struct (pass its sizeof)"
                )));
            }
        }
        let s = stats().ok_or_else(|| {
            FfiError::new(
                prefork_result::PREFORK_ERR_STATE,
                "no server with shared memory runs in this process",
            )
        })?;
        for (i, c) in s.children.iter().take(cap).enumerate() {
            let ours = prefork_child_stats {
                pid: c.pid,
                state: match c.state {
                    ChildState::Starting => PREFORK_CHILD_STARTING,
                    ChildState::Serving => PREFORK_CHILD_SERVING,
                    ChildState::Retiring => PREFORK_CHILD_RETIRING,
                },
                slot: c.slot as u64,
                generation: c.generation,
                started_unix_ms: c.started_unix_ms,
                requests: c.requests,
                connections: c.connections,
                slot_restarts: c.slot_restarts,
            };
            // SAFETY: the caller's array holds `cap` elements of `child_size` bytes.
            unsafe { write_prefix(&ours, children.cast::<u8>().add(i * child_size), child_size) };
        }
        if !master.is_null() {
            let m = &s.master;
            let ours = prefork_master_stats {
                pid: m.pid,
                _reserved: 0,
                children: m.children as u64,
                generation: m.generation,
                started_unix_ms: m.started_unix_ms,
                spawned: m.spawned,
                exited: m.exited,
                requests: m.requests,
                connections: m.connections,
                reloads: m.reloads,
                reload_failures: m.reload_failures,
                recycles: m.recycles,
                watchdog_kills: m.watchdog_kills,
            };
            // SAFETY: `master` points to `master_size` writable bytes.
            unsafe { write_prefix(&ours, master.cast::<u8>(), master_size) };
        }
        if !count.is_null() {
            // SAFETY: non-NULL and, by the caller's contract, writable.
            unsafe { *count = s.children.len() };
        }
        Ok(prefork_result::PREFORK_OK)
    })
}

/// Copies as much of `ours` as the caller's `size` holds; a newer caller's members past ours
/// are zeroed (its "unset").
///
/// # Safety
/// `to` points to `size` writable bytes.
unsafe fn write_prefix<T: Copy>(ours: &T, to: *mut u8, size: usize) {
    let n = size.min(size_of::<T>());
    // SAFETY: the caller's contract; `ours` is a plain struct of n readable bytes at least.
    unsafe {
        std::ptr::copy_nonoverlapping((ours as *const T).cast::<u8>(), to, n);
        std::ptr::write_bytes(to.add(n), 0, size - n);
    }
}

/// The same figures as `prefork_stats`, as NUL-terminated JSON in `buf` (`cap` bytes):
/// `{"master":{"pid":..,"children":..,"generation":..,"started_unix_ms":..,"spawned":..,
/// "exited":..,"requests":..,"connections":..,"reloads":..,"reload_failures":..,
/// "recycles":..,"watchdog_kills":..},"children":[{"pid":..,"slot":..,"generation":..,
/// "state":"serving","started_unix_ms":..,"requests":..,"connections":..,
/// "slot_restarts":..},...]}` (members may be added, never removed). About 200 bytes per
/// child; 64 KiB holds 300. Written only when it fits; PREFORK_ERR_INVALID_ARGUMENT when it
/// does not (`prefork_last_error` says how many bytes it needs), PREFORK_ERR_STATE when
/// nothing is served, PREFORK_ERR_NULL for a NULL `buf`. Threads as `prefork_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_stats_json(buf: *mut c_char, cap: usize) -> prefork_result {
    ffi_boundary!({
        if buf.is_null() {
            return Err(FfiError::null("buf"));
        }
        let json = stats()
            .ok_or_else(|| {
                FfiError::new(
                    prefork_result::PREFORK_ERR_STATE,
                    "no server with shared memory runs in this process",
                )
            })?
            .to_json();
        if json.len() >= cap {
            return Err(FfiError::invalid(format!(
                "the stats take {} bytes with the NUL, the buffer has {cap}",
                json.len() + 1
            )));
        }
        // SAFETY: `buf` has `cap` writable bytes, more than the text and its NUL.
        unsafe {
            std::ptr::copy_nonoverlapping(json.as_ptr(), buf.cast::<u8>(), json.len());
            *buf.add(json.len()) = 0;
        }
        Ok(prefork_result::PREFORK_OK)
    })
}
