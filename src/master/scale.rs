//! Scaling while serving: SIGTTIN and SIGTTOU add and remove one child, `set_children_live`
//! and `scale_children` ask for a count. Requests are taken only while the master runs with
//! its generation settled (after the first is ready, not during a reload): one that comes
//! during a reload waits in its atomics until the reload ends.
//!
//! A slot is added at the end (in reuseport mode with its own new SO_REUSEPORT socket on the
//! same port) and removed from the end, so slot numbers stay 0..n. A removed slot's child
//! retires: it drains within the grace period. In reuseport mode the master closes the slot's
//! socket before it tells the child to stop, so the child holds the last descriptor and, as in
//! a stop, takes its accept queue before closing it: nothing queued there is reset, and from
//! then on the kernel sends the port's connections to the other slots' sockets (one that
//! lands on the closing socket after the last accept moves to them: see `migrate`). A slot whose
//! child is not ready yet is removed once it is: until then nobody would take what the kernel
//! already queued on its socket.

use super::{Master, Slot, State};
use crate::config::MAX_CHILDREN;
use crate::control;
use crate::error::Error;
use crate::log::Level;
use std::sync::atomic::Ordering;

impl Master<'_> {
    /// Takes the pending scaling requests and moves the count towards the target, if the
    /// master can now.
    pub(super) fn apply_scaling(&mut self) -> Result<(), Error> {
        if self.state != State::Running
            || !self.ready_announced
            || self.recycling.is_some()
            || self.upgrade.is_some()
        {
            return Ok(());
        }
        let current = self.scale_to.unwrap_or(self.slots.len());
        if let Some(wanted) = control::take_scale(current) {
            self.set_target(wanted);
        }
        let Some(target) = self.scale_to else {
            return Ok(());
        };
        while self.slots.len() < target {
            if !self.add_slot()? {
                self.scale_to = None;
                return Ok(());
            }
        }
        while self.slots.len() > target && self.last_slot_ready() {
            self.remove_slot();
        }
        if let Some(region) = &self.shared {
            let children = &region.master().children;
            children.store(self.slots.len() as u64, Ordering::Relaxed);
        }
        if self.scale_to == Some(self.slots.len()) {
            self.tell_systemd("");
        }
        if self.slots.len() == target {
            self.scale_to = None;
        }
        Ok(())
    }

    fn set_target(&mut self, wanted: i64) {
        let target = wanted.clamp(1, MAX_CHILDREN as i64) as usize;
        if wanted != target as i64 {
            self.log.log(
                Level::Warn,
                &format!("asked for {wanted} children: keeping {target} (1 to {MAX_CHILDREN})"),
            );
        }
        if target != self.slots.len() {
            self.log.log(
                Level::Info,
                &format!("scaling from {} to {target} children", self.slots.len()),
            );
        }
        self.scale_to = Some(target);
    }

    fn last_slot_ready(&self) -> bool {
        let last = self.slots.last();
        last.is_some_and(|s| s.child.as_ref().is_some_and(|c| c.ready()))
    }

    /// Adds a slot and starts its child; false (logged) when its socket or its child could not
    /// be had, which leaves the master serving with the slots it has.
    fn add_slot(&mut self) -> Result<bool, Error> {
        let slot = self.slots.len();
        let (network, backlog) = (self.cfg.network, self.cfg.backlog);
        let opened = self
            .listeners
            .iter_mut()
            .try_for_each(|l| l.add_slot(network, backlog));
        if let Err(e) = opened {
            for l in &mut self.listeners {
                l.truncate_slots(slot);
            }
            self.log.log(
                Level::Error,
                &format!("cannot add child slot {slot}: {}", e.message()),
            );
            return Ok(false);
        }
        self.slots.push(Slot::default());
        self.slot_restarts.resize(slot, 0);
        self.slot_restarts.push(0);
        self.recovery.new_slot(slot);
        match self.spawn_child(slot, self.generation) {
            Ok(child) => {
                let pid = child.pid;
                self.slots[slot].child = Some(child);
                self.spawned(pid)?;
                Ok(true)
            }
            Err(e) => {
                self.log.log(
                    Level::Error,
                    &format!("cannot add child slot {slot}: {}", e.message()),
                );
                self.slots.pop();
                for l in &mut self.listeners {
                    l.truncate_slots(slot);
                }
                Ok(false)
            }
        }
    }

    /// Removes the last slot; its child (ready) retires.
    fn remove_slot(&mut self) {
        let slot = self.slots.len() - 1;
        let removed = self.slots.pop().expect("at least two slots");
        self.slot_restarts.truncate(slot);
        // Before the SIGTERM: the child's descriptors must be its sockets' last.
        for l in &mut self.listeners {
            l.truncate_slots(slot);
        }
        for child in removed.child.into_iter().chain(removed.next) {
            self.retire(child, slot);
        }
    }
}
