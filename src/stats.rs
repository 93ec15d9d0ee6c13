//! Stats: what the master knows of its children and their counters, read from the memory it
//! shares with them (`crate::shared`), so that the master and every child see the same
//! figures, without a lock and without asking anyone. Each field is read atomically; the set
//! is a snapshot only in that sense (a child may be counted while it starts or exits).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::hooks::Pid;
use crate::shared::{self, CELLS, STATE_RETIRING, STATE_SERVING, STATE_STARTING};

/// What a child is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildState {
    /// Started, not yet reported listening.
    Starting,
    /// Serving its slot (or, during a reload or a recycle, ready to take it over).
    Serving,
    /// Told to stop; draining.
    Retiring,
}

impl ChildState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChildState::Starting => "starting",
            ChildState::Serving => "serving",
            ChildState::Retiring => "retiring",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ChildStats {
    pub pid: Pid,
    pub slot: usize,
    pub generation: u64,
    pub state: ChildState,
    /// When it was started, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Requests it has received.
    pub requests: u64,
    /// Connections it has open.
    pub connections: u64,
    /// Replacements of crashed children its slot had before it was started.
    pub slot_restarts: u64,
}

#[derive(Clone, Debug, Default)]
pub struct MasterStats {
    pub pid: Pid,
    /// Slots: the child count the master serves with.
    pub children: usize,
    /// The generation serving (1 until the first reload).
    pub generation: u64,
    pub started_unix_ms: u64,
    /// Children started and children reaped, since the start.
    pub spawned: u64,
    pub exited: u64,
    /// Requests received by every child since the start, reaped ones included.
    pub requests: u64,
    /// Connections open in the children now.
    pub connections: u64,
    pub reloads: u64,
    pub reload_failures: u64,
    pub recycles: u64,
    /// Children the watchdog aborted.
    pub watchdog_kills: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub master: MasterStats,
    /// Ordered by slot, then state.
    pub children: Vec<ChildStats>,
}

/// The figures, in the master or in a child while `listen_and_serve` runs; `None` otherwise
/// (or when the shared memory could not be created).
pub fn stats() -> Option<Stats> {
    let region = shared::published()?;
    let m = region.master();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut children = Vec::new();
    let used = (load(&m.cells_used) as usize).min(CELLS);
    for i in 0..used {
        let cell = region.cell(i).expect("within the cells");
        let state = match cell.state.load(Ordering::Relaxed) {
            STATE_STARTING => ChildState::Starting,
            STATE_SERVING => ChildState::Serving,
            STATE_RETIRING => ChildState::Retiring,
            _ => continue,
        };
        children.push(ChildStats {
            pid: cell.pid.load(Ordering::Relaxed),
            slot: load(&cell.slot) as usize,
            generation: load(&cell.generation),
            state,
            started_unix_ms: load(&cell.started_unix_ms),
            requests: load(&cell.requests),
            connections: load(&cell.connections),
            slot_restarts: load(&cell.slot_restarts),
        });
    }
    children.sort_by_key(|c| (c.slot, c.state as u8, c.pid));
    let live: u64 = children.iter().map(|c| c.requests).sum();
    let master = MasterStats {
        pid: m.pid.load(Ordering::Relaxed),
        children: load(&m.children) as usize,
        generation: load(&m.generation),
        started_unix_ms: load(&m.started_unix_ms),
        spawned: load(&m.spawned),
        exited: load(&m.exited),
        requests: load(&m.retired_requests) + live,
        connections: children.iter().map(|c| c.connections).sum(),
        reloads: load(&m.reloads),
        reload_failures: load(&m.reload_failures),
        recycles: load(&m.recycles),
        watchdog_kills: load(&m.watchdog_kills),
    };
    Some(Stats { master, children })
}

impl Stats {
    /// `{"master":{...},"children":[{...},...]}`, the field names as in the structs.
    pub fn to_json(&self) -> String {
        let m = &self.master;
        let mut out = format!(
            "{{\"master\":{{\"pid\":{},\"children\":{},\"generation\":{},\"started_unix_ms\":{},\
             \"spawned\":{},\"exited\":{},\"requests\":{},\"connections\":{},\"reloads\":{},\
             \"reload_failures\":{},\"recycles\":{},\"watchdog_kills\":{}}},\"children\":[",
            m.pid,
            m.children,
            m.generation,
            m.started_unix_ms,
            m.spawned,
            m.exited,
            m.requests,
            m.connections,
            m.reloads,
            m.reload_failures,
            m.recycles,
            m.watchdog_kills
        );
        for (i, c) in self.children.iter().enumerate() {
            let _ = write!(
                out,
                "{}{{\"pid\":{},\"slot\":{},\"generation\":{},\"state\":\"{}\",\
                 \"started_unix_ms\":{},\"requests\":{},\"connections\":{},\"slot_restarts\":{}}}",
                if i == 0 { "" } else { "," },
                c.pid,
                c.slot,
                c.generation,
                c.state.as_str(),
                c.started_unix_ms,
                c.requests,
                c.connections,
                c.slot_restarts
            );
        }
        out.push_str("]}");
        out
    }
}
