//! The hung-child watchdog (`child_timeout`): each ready child's event loop counts its turns in
//! its cell of the shared memory (`crate::shared`), and wakes at least every `period` when
//! idle. The master looks every `period` and notes, by its own clock, when it last saw the
//! count move: a child whose count has not moved for the timeout is hung (a handler blocking
//! the loop, a deadlock). It gets SIGABRT, which leaves a core dump or, in a Go host,
//! a goroutine dump, then SIGKILL after `ABORT_GRACE` if it is still there; its exit is then
//! handled as any crash (replaced by the recover policy).
//!
//! A master that did not run for a while (SIGSTOP, a system suspend, a starved machine) would
//! find every heartbeat old, though the children may have been stopped with it and simply not
//! run yet. The master checks at least every `period`, so a gap of more than half the
//! timeout between two of its turns, by CLOCK_MONOTONIC or by CLOCK_BOOTTIME (which also
//! counts a system suspend), means it was away: every child then gets a full timeout again,
//! counted from the master's return.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{Master, signal_all};
use crate::config::ProcessConfig;
use crate::log::Level;
use crate::shared::clock_ms;
use std::sync::atomic::Ordering;

/// Between SIGABRT and SIGKILL: enough for a core dump of a small process.
pub(crate) const ABORT_GRACE: Duration = Duration::from_secs(1);

/// How often children beat and the master checks: four times per timeout. Zero when off.
pub(crate) fn period(cfg: &ProcessConfig) -> Duration {
    cfg.child_timeout / 4
}

/// The watchdog's memory of its own turns.
pub(super) struct Watch {
    last: Instant,
    last_boot_ms: u64,
    /// When the master came back from its last absence: silences are counted from no earlier.
    resumed: Instant,
}

impl Watch {
    pub(super) fn new() -> Watch {
        let now = Instant::now();
        Watch {
            last: now,
            last_boot_ms: clock_ms(libc::CLOCK_BOOTTIME),
            resumed: now,
        }
    }
}

impl Master<'_> {
    /// Aborts the children whose loop stopped turning, and kills those that outlived their
    /// abort.
    pub(super) fn watch_heartbeats(&mut self, now: Instant) {
        let timeout = self.cfg.child_timeout;
        if timeout.is_zero() || self.shared.is_none() {
            return;
        }
        self.notice_absence(now, timeout);
        let resumed = self.watch.resumed;
        let region = self.shared.as_ref().expect("checked above");
        let mut hung = Vec::new();
        let mut stubborn = Vec::new();
        let watched = self
            .slots
            .iter_mut()
            .flat_map(|s| s.child.iter_mut().chain(s.next.iter_mut()));
        for child in watched {
            let (Some(ready), Some(cell)) = (child.ready_at, child.cell) else {
                continue;
            };
            if let Some((at, killed)) = &mut child.aborted {
                if !*killed && now >= *at + ABORT_GRACE {
                    *killed = true;
                    stubborn.push(child.pid);
                }
                continue;
            }
            let turns = region
                .cell(cell)
                .map_or(0, |c| c.turns.load(Ordering::Relaxed));
            // A child that never turned runs no engine loop that could (serve mode: the
            // application's own server), so it is not watched; the engine turns right after it
            // reports ready.
            if turns == 0 {
                continue;
            }
            if turns != child.beat_seen.0 || child.beat_seen.1.is_none() {
                child.beat_seen = (turns, Some(now));
            }
            let since = [child.beat_seen.1.unwrap_or(now), ready, resumed]
                .into_iter()
                .max()
                .unwrap_or(now);
            let silent = now.saturating_duration_since(since);
            if silent > timeout {
                child.aborted = Some((now, false));
                hung.push((child.pid, silent.as_millis()));
            }
        }
        for (pid, silent) in hung {
            self.log.log(
                Level::Error,
                &format!(
                    "child {pid}'s event loop has not turned for {silent} ms (child_timeout \
                     {timeout:?}): SIGABRT, then SIGKILL after {ABORT_GRACE:?}"
                ),
            );
            signal_all(&[pid], Signal::SIGABRT);
            self.count(|m| &m.watchdog_kills);
        }
        if !stubborn.is_empty() {
            self.log.log(
                Level::Warn,
                &format!("children {stubborn:?} outlived their SIGABRT: SIGKILL"),
            );
            signal_all(&stubborn, Signal::SIGKILL);
        }
    }

    /// Detects that the master itself was away since its last turn.
    fn notice_absence(&mut self, now: Instant, timeout: Duration) {
        let boot_ms = clock_ms(libc::CLOCK_BOOTTIME);
        let away = now
            .saturating_duration_since(self.watch.last)
            .max(Duration::from_millis(
                boot_ms.saturating_sub(self.watch.last_boot_ms),
            ));
        self.watch.last = now;
        self.watch.last_boot_ms = boot_ms;
        if away > timeout / 2 {
            self.watch.resumed = now;
            self.log.log(
                Level::Warn,
                &format!(
                    "the master did not run for {away:.1?} (stopped or suspended): every child \
                     gets a full child_timeout again"
                ),
            );
        }
    }

    /// The next watchdog turn: the next check, or an aborted child's SIGKILL.
    pub(super) fn watchdog_deadline(&self) -> Option<Instant> {
        if self.cfg.child_timeout.is_zero() || self.shared.is_none() {
            return None;
        }
        let kills = self
            .slots
            .iter()
            .flat_map(|s| s.child.iter().chain(s.next.iter()))
            .filter_map(|c| match c.aborted {
                Some((at, false)) => Some(at + ABORT_GRACE),
                _ => None,
            });
        kills.chain([self.watch.last + period(self.cfg)]).min()
    }
}
