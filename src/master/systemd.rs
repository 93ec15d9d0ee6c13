//! The master's notifications to systemd (`crate::notify`), when `NOTIFY_SOCKET` is set:
//! `READY=1` once every first child listens and after each reload (failed or not),
//! `RELOADING=1` with `MONOTONIC_USEC=` when a reload starts, `STOPPING=1` when the stop
//! begins, a `STATUS=` with the child count on each of these and after scaling, and
//! `WATCHDOG=1` every half `WATCHDOG_USEC`, but only while every slot has a ready child: a
//! master whose children cannot start is not healthy, and systemd should restart the service.
//! A failed send is logged once and otherwise ignored: serving does not depend on it.

use std::time::Instant;

use super::{Master, State};
use crate::log::Level;

impl Master<'_> {
    /// Sends `state` (lines of KEY=VALUE, possibly none) with the current STATUS= line.
    pub(super) fn tell_systemd(&mut self, state: &str) {
        let Some(notifier) = &self.notify else {
            return;
        };
        let status = match self.state {
            State::Stopping { .. } => "stopping".to_string(),
            State::Reloading { generation, .. } => {
                format!("reloading to generation {generation}")
            }
            State::Running => format!(
                "serving with {} children, generation {}",
                self.slots.len(),
                self.generation
            ),
        };
        let message = if state.is_empty() {
            format!("STATUS={status}")
        } else {
            format!("{state}\nSTATUS={status}")
        };
        if let Err(e) = notifier.send(&message) {
            self.log.log(
                Level::Warn,
                &format!("systemd notification failed ({e}); not notifying any more"),
            );
            self.notify = None;
            self.notify_watchdog_due = None;
        }
    }

    /// The watchdog ping, when due and healthy.
    pub(super) fn ping_systemd(&mut self, now: Instant) {
        let Some(interval) = self.notify.as_ref().and_then(|n| n.watchdog_interval()) else {
            return;
        };
        if self.notify_watchdog_due.is_some_and(|due| now < due) {
            return;
        }
        self.notify_watchdog_due = Some(now + interval);
        if self.ready_announced && self.every_slot_ready() {
            self.tell_systemd("WATCHDOG=1");
        }
    }
}
