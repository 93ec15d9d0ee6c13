//! Graceful reload, a transition of the master's loop: `Running` → `Reloading(g)` → `Running`.
//!
//! A reload starts generation g in every slot next to the serving child (a re-exec, so the
//! program reads its configuration and certificates again), waits until each reported
//! listening, then gives each slot to its new child and retires the old one, which drains
//! gracefully. The old and new children of a slot share its listener (the one shared listener,
//! or the slot's SO_REUSEPORT socket), which the master keeps open throughout: the old child
//! takes what its accept queue holds before closing its copy, and whatever arrives after is
//! queued for the new one, so no connection is accepted and then reset.
//!
//! If a child of generation g exits or misses its startup timeout before the whole generation
//! is ready, or cannot be started, the reload fails: the children of g retire (those already
//! ready drain what they took) and the old generation, never stopped, keeps serving. The
//! failure is logged and reported to `on_reload_failed`; it does not count against the
//! recover threshold, since the serving generation is healthy. A reload asked for while one
//! runs is queued (several coalesce into one) and starts when it ends, however it ends: it
//! may carry the fix for what failed. A reload asked for before the first generation is ready
//! waits for it; during a stop it is dropped.

use std::time::Instant;

use super::hook;
use super::spawn::Child;
use super::{Master, State};
use crate::control;
use crate::error::Error;
use crate::hooks::{ChildExit, Pid};
use crate::log::Level;
use crate::shared;
use std::sync::atomic::Ordering;

impl Master<'_> {
    /// Starts a requested reload, or moves the running one on: its startup deadlines and its
    /// completion.
    pub(super) fn advance_reload(&mut self, now: Instant) -> Result<(), Error> {
        match self.state {
            State::Running => {
                // A recycle in progress ends first (it takes milliseconds): one successor
                // per slot at a time.
                if self.ready_announced
                    && self.recycling.is_none()
                    && self.upgrade.is_none()
                    && (self.reload_queued || control::take_reload())
                {
                    self.reload_queued = false;
                    self.begin_reload(now)?;
                }
                Ok(())
            }
            State::Reloading { generation, since } => {
                if control::take_reload() && !self.reload_queued {
                    self.reload_queued = true;
                    self.log.log(
                        Level::Info,
                        &format!("reload requested while generation {generation} starts: queued"),
                    );
                }
                if let Some(late) = self.overdue_successor(now) {
                    let why = format!(
                        "child {} (slot {}) did not report listening within {:?} (startup \
                         timeout)",
                        late.0, late.1, self.cfg.startup_timeout
                    );
                    return self.fail_reload(generation, why);
                }
                if self
                    .slots
                    .iter()
                    .all(|s| s.next.as_ref().is_some_and(Child::ready))
                {
                    return self.finish_reload(generation, since);
                }
                Ok(())
            }
            State::Stopping { .. } => Ok(()),
        }
    }

    fn begin_reload(&mut self, now: Instant) -> Result<(), Error> {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.log.log(
            Level::Info,
            &format!(
                "reloading: starting generation {generation} ({} children) next to generation \
                 {}",
                self.slots.len(),
                self.generation
            ),
        );
        self.state = State::Reloading {
            generation,
            since: now,
        };
        let reloading = format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            crate::notify::monotonic_usec()
        );
        self.tell_systemd(&reloading);
        for slot in 0..self.slots.len() {
            let child = match self.spawn_child(slot, generation) {
                Ok(child) => child,
                Err(e) => return self.fail_reload(generation, e.message().to_string()),
            };
            let pid = child.pid;
            self.slots[slot].next = Some(child);
            self.spawned(pid)?;
        }
        Ok(())
    }

    /// A successor not ready within the startup timeout: (pid, slot).
    fn overdue_successor(&self, now: Instant) -> Option<(Pid, usize)> {
        self.slots.iter().enumerate().find_map(|(slot, s)| {
            let c = s.next.as_ref()?;
            self.startup_overdue(c, now).then_some((c.pid, slot))
        })
    }

    /// A successor exited before it took over: while reloading, the reload fails; while
    /// recycling, the recycle.
    pub(super) fn successor_exited(
        &mut self,
        child: &Child,
        slot: usize,
        exit: ChildExit,
    ) -> Result<(), Error> {
        if self.recycling == Some(slot) {
            self.recycle_failed(slot, &format!("it {}", super::describe(exit)));
            return Ok(());
        }
        let State::Reloading { generation, .. } = self.state else {
            return Ok(());
        };
        let why = format!(
            "child {} (slot {slot}) {} before generation {generation} was ready",
            child.pid,
            super::describe(exit)
        );
        self.fail_reload(generation, why)
    }

    /// Every successor is ready: each takes its slot, and the children they replace retire.
    fn finish_reload(&mut self, generation: u64, since: Instant) -> Result<(), Error> {
        for slot in 0..self.slots.len() {
            let new = self.slots[slot]
                .next
                .take()
                .expect("every successor is ready");
            // The replacement of a child that exited meanwhile is this one.
            self.slots[slot].respawn = None;
            if let Some(old) = self.slots[slot].child.replace(new) {
                self.retire(old, slot);
            }
        }
        let previous = std::mem::replace(&mut self.generation, generation);
        self.state = State::Running;
        if let Some(region) = &self.shared {
            let m = region.master();
            m.generation.store(generation, Ordering::Relaxed);
            shared::bump(&m.reloads);
        }
        let pids = self.serving_pids();
        self.tell_systemd("READY=1");
        self.log.log(
            Level::Info,
            &format!(
                "reloaded: generation {generation} serves with children {pids:?} after {:.1?}; \
                 generation {previous} stops gracefully",
                since.elapsed()
            ),
        );
        hook::call("on_reload", || match &mut self.hooks.on_reload {
            Some(f) => f(generation, &pids),
            None => Ok(()),
        })
    }

    /// Gives generation `generation` up: its children retire and the serving ones go on.
    fn fail_reload(&mut self, generation: u64, why: String) -> Result<(), Error> {
        for slot in 0..self.slots.len() {
            if let Some(child) = self.slots[slot].next.take() {
                self.retire(child, slot);
            }
        }
        self.state = State::Running;
        self.count(|m| &m.reload_failures);
        // Serving as before: the manager's reload is over, if not as it hoped.
        self.tell_systemd("READY=1");
        self.log.log(
            Level::Error,
            &format!(
                "reload to generation {generation} failed: {why}; generation {} keeps serving",
                self.generation
            ),
        );
        hook::call("on_reload_failed", || {
            if let Some(f) = &mut self.hooks.on_reload_failed {
                f(generation, &why);
            }
            Ok(())
        })
    }
}
