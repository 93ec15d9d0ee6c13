//! Recycling (`max_requests` with `max_requests_jitter`, `max_child_age`): a child past its
//! limit is replaced the way a reload replaces a generation, one slot at a time. Its successor
//! starts in the slot's `next` place; once it reports listening it takes the slot and the old
//! child retires (drains gracefully), so the slot never stops serving and capacity never
//! drops. The two share the slot's listener, which stays open, so nothing queued is reset.
//!
//! Only one slot recycles at a time, and not during a reload or a scaling step (each waits
//! for the other: both take milliseconds). A successor that exits or misses the startup
//! timeout leaves the old child serving; the next try waits, doubling from `FIRST_RETRY` to
//! `MAX_RETRY`, so a program that can no longer start does not spin. The request counts come
//! from the children's cells in the shared memory, read every `REQUEST_CHECK`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Master, State};
use crate::config::ProcessConfig;
use crate::error::Error;
use crate::log::Level;

pub(super) const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// How often the request counts are read when `max_requests` is on: a child may serve this
/// long past its limit.
const REQUEST_CHECK: Duration = Duration::from_millis(200);

/// A new child's request limit: `max_requests` plus a random share of the jitter.
pub(super) fn request_limit(cfg: &ProcessConfig) -> Option<u64> {
    if cfg.max_requests == 0 {
        return None;
    }
    let jitter = match cfg.max_requests_jitter {
        0 => 0,
        j => random() % (j.saturating_add(1)).max(1),
    };
    Some(cfg.max_requests.saturating_add(jitter))
}

/// Spread, not secrecy: splitmix64 of the clock and the pid.
fn random() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos ^ (u64::from(std::process::id()) << 32);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Master<'_> {
    /// Starts a due recycle, or moves the running one on.
    pub(super) fn advance_recycling(&mut self, now: Instant) -> Result<(), Error> {
        if self.state != State::Running || !self.ready_announced {
            return Ok(());
        }
        if let Some(slot) = self.recycling {
            self.check_recycle(slot, now);
        }
        // At once after a recycle ended, too: a slot that fell due meanwhile has no timer.
        if self.recycling.is_none() {
            self.start_recycle(now)?;
        }
        Ok(())
    }

    fn start_recycle(&mut self, now: Instant) -> Result<(), Error> {
        if self.scale_to.is_some()
            || self.upgrade.is_some()
            || self.recycle_retry.is_some_and(|t| now < t)
        {
            return Ok(());
        }
        let Some((slot, old, why)) = self.due_for_recycling(now) else {
            return Ok(());
        };
        let child = match self.spawn_child(slot, self.generation) {
            Ok(child) => child,
            Err(e) => {
                self.recycle_failed(slot, &format!("could not be started: {}", e.message()));
                return Ok(());
            }
        };
        let new = child.pid;
        self.log.log(
            Level::Info,
            &format!("recycling child {old} (slot {slot}): {why}; child {new} starts first"),
        );
        self.slots[slot].next = Some(child);
        self.recycling = Some(slot);
        self.spawned(new)
    }

    /// The first ready child past a limit: (slot, pid, why).
    fn due_for_recycling(&self, now: Instant) -> Option<(usize, i32, String)> {
        let age = self.cfg.max_child_age;
        self.slots.iter().enumerate().find_map(|(slot, s)| {
            let c = s.child.as_ref()?;
            let ready = c.ready_at?;
            if c.aborted.is_some() {
                return None;
            }
            if let (Some(limit), Some(cell)) = (c.request_limit, c.cell) {
                let region = self.shared.as_ref()?;
                let n = region.cell(cell)?.requests.load(Ordering::Relaxed);
                if n >= limit {
                    return Some((slot, c.pid, format!("{n} requests, its limit {limit}")));
                }
            }
            let served = now.saturating_duration_since(ready);
            (!age.is_zero() && served >= age).then(|| {
                let why = format!("ready for {served:.1?}, max_child_age {age:?}");
                (slot, c.pid, why)
            })
        })
    }

    fn check_recycle(&mut self, slot: usize, now: Instant) {
        let Some(next) = &self.slots[slot].next else {
            self.recycling = None;
            return;
        };
        if self.startup_overdue(next, now) {
            let why = format!(
                "it did not report listening within {:?}",
                self.cfg.startup_timeout
            );
            return self.recycle_failed(slot, &why);
        }
        if !next.ready() {
            return;
        }
        let new = self.slots[slot].next.take().expect("checked above");
        let pid = new.pid;
        self.slots[slot].respawn = None;
        let old = self.slots[slot].child.replace(new);
        self.recycling = None;
        self.recycle_retry = None;
        self.recycle_backoff = FIRST_RETRY;
        self.count(|m| &m.recycles);
        if let Some(old) = old {
            self.log.log(
                Level::Info,
                &format!("recycled slot {slot}: child {pid} replaces {}", old.pid),
            );
            self.retire(old, slot);
        }
    }

    /// The successor of `slot` failed (`why`): it retires if still there, and the old child
    /// serves on until the next try.
    pub(super) fn recycle_failed(&mut self, slot: usize, why: &str) {
        if let Some(next) = self.slots[slot].next.take() {
            self.retire(next, slot);
        }
        self.recycling = None;
        let delay = self.recycle_backoff;
        self.recycle_retry = Some(Instant::now() + delay);
        self.recycle_backoff = (delay * 2).min(MAX_RETRY);
        self.log.log(
            Level::Error,
            &format!(
                "recycling slot {slot} failed: its new child {why}; the old child serves on, \
                 next try in {delay:?}"
            ),
        );
    }

    /// When recycling needs the loop to look again. Only future instants: a due child whose
    /// recycle waits (for another slot's, a retry, a scaling step) is looked at again when
    /// that ends, which is an event of its own.
    pub(super) fn recycle_deadline(&self) -> Option<Instant> {
        if self.state != State::Running || self.recycling.is_some() {
            return None;
        }
        let now = Instant::now();
        let counts = (self.cfg.max_requests > 0).then(|| now + REQUEST_CHECK);
        let age = self.cfg.max_child_age;
        let ages = self
            .slots
            .iter()
            .filter_map(|s| s.child.as_ref()?.ready_at)
            .filter(|_| !age.is_zero())
            .map(|ready| ready + age);
        let retry = self.recycle_retry;
        let future = |t: &Instant| *t > now;
        counts
            .into_iter()
            .chain(ages.filter(future))
            .chain(retry.filter(future))
            .min()
    }
}
