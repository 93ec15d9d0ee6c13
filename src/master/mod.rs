//! The master: bind, spawn, wait for readiness, supervise (respawn within the recover policy),
//! and stop (SIGTERM, grace period, SIGKILL, reap). Single-threaded: one poll(2) loop over the
//! stop pipe, each child's pidfd and, until it is ready, its lifeline.

mod bind;
mod hook;
mod recovery;
mod spawn;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::socket::{MsgFlags, recv};
use nix::unistd::Pid as NixPid;

use crate::config::{Config, ProcessConfig};
use crate::control::{self, Role, SignalGuard, WAKE_STOP_NOW};
use crate::error::{Error, ErrorKind};
use crate::hooks::{ChildExit, Hooks, Pid};
use crate::lifeline;
use crate::log::{Level, Logger};
use recovery::Recovery;
use spawn::Child;

/// Poll period when the kernel has no pidfd_open and exits are found by waitpid sweeps.
const SWEEP_PERIOD: Duration = Duration::from_millis(20);

pub(crate) fn run(
    addr: &str,
    config: &Config,
    hooks: &mut Hooks,
    log: &dyn Logger,
    tls: Option<&[u8]>,
) -> Result<(), Error> {
    let cfg = &config.process;
    let count = cfg.effective_children();
    let sockaddr = bind::resolve(addr, cfg.network)?;
    let (listeners, sockaddr) =
        bind::listeners(sockaddr, cfg.network, cfg.backlog, cfg.reuseport, count)?;
    crate::set_local_addr(Some(sockaddr));
    let wake = control::wake_fd().map_err(|e| Error::io(ErrorKind::Io, "create stop pipe", e))?;
    let _signals = if cfg.handle_signals {
        Some(
            SignalGuard::install(Role::Master)
                .map_err(|e| Error::io(ErrorKind::Io, "install signal handlers", e))?,
        )
    } else {
        None
    };
    log.log(
        Level::Info,
        &format!(
            "master listening on {sockaddr} with {count} children ({})",
            if cfg.reuseport {
                "one SO_REUSEPORT socket each"
            } else {
                "shared listener"
            }
        ),
    );
    let mut master = Master {
        cfg,
        hooks,
        log,
        wake,
        slots: (0..count).map(|_| Slot::default()).collect(),
        listeners,
        tls,
        recovery: Recovery::new(cfg),
        ready_announced: false,
        stopping: false,
    };
    let outcome = master.start().and_then(|()| master.supervise());
    let stop_now = matches!(outcome, Ok(Stop::Now));
    master.stop(stop_now);
    outcome.map(|_| ())
}

#[derive(Default)]
struct Slot {
    child: Option<Child>,
    /// When an exited child's replacement is due, and whom it replaces.
    respawn: Option<(Instant, Pid)>,
}

/// How a stop was requested.
enum Stop {
    Graceful,
    Now,
}

struct Master<'a> {
    cfg: &'a ProcessConfig,
    hooks: &'a mut Hooks,
    log: &'a dyn Logger,
    wake: BorrowedFd<'static>,
    slots: Vec<Slot>,
    listeners: Vec<OwnedFd>,
    /// The TLS material each child gets on its lifeline (`crate::tls`).
    tls: Option<&'a [u8]>,
    recovery: Recovery,
    ready_announced: bool,
    /// Set once stopping: exits are then final, not crashes to recover from.
    stopping: bool,
}

impl Master<'_> {
    fn start(&mut self) -> Result<(), Error> {
        for slot in 0..self.slots.len() {
            if control::stop_requested() {
                return Ok(());
            }
            let pid = self.spawn_into(slot)?;
            hook::call("on_child_spawn", || match &mut self.hooks.on_child_spawn {
                Some(f) => f(pid),
                None => Ok(()),
            })?;
        }
        Ok(())
    }

    fn spawn_into(&mut self, slot: usize) -> Result<Pid, Error> {
        let listener = self.listeners[slot % self.listeners.len()].as_raw_fd();
        let child = spawn::spawn(listener, slot, self.hooks.command_producer.as_deref_mut())?;
        let pid = child.pid;
        self.log
            .log(Level::Info, &format!("started child {pid} (slot {slot})"));
        let lifeline = child.lifeline.as_ref().map(|fd| fd.as_raw_fd());
        self.slots[slot].child = Some(child);
        if let (Some(msg), Some(fd)) = (self.tls, lifeline) {
            crate::tls::send(fd, msg, Instant::now() + self.cfg.startup_timeout)?;
        }
        Ok(pid)
    }

    /// Runs until a stop is requested (Ok) or the recover policy, a hook or a spawn fails.
    fn supervise(&mut self) -> Result<Stop, Error> {
        let mut owners: Vec<(usize, Watch)> = Vec::new();
        loop {
            if control::stop_requested() {
                return Ok(match control::drain_wake() {
                    Some(WAKE_STOP_NOW) => Stop::Now,
                    _ => Stop::Graceful,
                });
            }
            let now = Instant::now();
            self.respawn_due(now)?;
            self.check_startup_deadlines(now)?;
            self.announce_ready()?;

            owners.clear();
            // The descriptors are borrowed from the slots, so this list lives for one turn.
            let mut fds = vec![pollfd(self.wake)];
            let mut sweep = false;
            for (i, slot) in self.slots.iter().enumerate() {
                let Some(child) = &slot.child else { continue };
                match &child.pidfd {
                    Some(fd) => {
                        fds.push(pollfd(fd.as_fd()));
                        owners.push((i, Watch::Exit));
                    }
                    None => sweep = true,
                }
                if let (false, Some(fd)) = (child.ready, &child.lifeline) {
                    fds.push(pollfd(fd.as_fd()));
                    owners.push((i, Watch::Lifeline));
                }
            }
            let mut timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(now));
            if sweep {
                timeout = Some(timeout.map_or(SWEEP_PERIOD, |t| t.min(SWEEP_PERIOD)));
            }
            poll(&mut fds, timeout);
            let mut polled = fds[1..].iter();
            owners.retain(|_| polled.next().is_some_and(fired));
            drop(fds);

            for &(slot, watch) in &owners {
                match watch {
                    Watch::Lifeline => self.read_lifeline(slot),
                    Watch::Exit => self.reap(slot, false)?,
                }
            }
            if sweep {
                for slot in 0..self.slots.len() {
                    self.reap(slot, false)?;
                }
            }
        }
    }

    /// Takes the ready byte (or EOF) from a child's lifeline.
    fn read_lifeline(&mut self, slot: usize) {
        let Some(child) = self.slots[slot].child.as_mut() else {
            return;
        };
        let Some(fd) = &child.lifeline else { return };
        let mut buf = [0u8; 16];
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT);
        if let Ok(n @ 1..) = n
            && buf[..n].contains(&lifeline::READY_BYTE)
        {
            child.ready = true;
            let ms = child.started.elapsed().as_secs_f64() * 1000.0;
            self.log.log(
                Level::Debug,
                &format!("child {} ready after {ms:.1} ms", child.pid),
            );
        } else if n == Ok(0) {
            // The child closed its lifeline before reporting ready: it is exiting, and its
            // pidfd (or the sweep) will say so. Stop polling a descriptor stuck at EOF.
            child.lifeline = None;
        }
    }

    /// Reaps the slot's child if it exited; `block` waits for it.
    fn reap(&mut self, slot: usize, block: bool) -> Result<(), Error> {
        let Some(child) = &self.slots[slot].child else {
            return Ok(());
        };
        let pid = child.pid;
        let Some(exit) = wait(pid, block) else {
            return Ok(());
        };
        let child = self.slots[slot].child.take().expect("child checked above");
        let lived = child.started.elapsed();
        self.log.log(
            if self.ready_announced && !self.stopping {
                Level::Warn
            } else {
                Level::Info
            },
            &format!(
                "child {pid} (slot {slot}) {} after {lived:.1?}",
                describe(exit)
            ),
        );
        hook::call("on_child_exit", || {
            if let Some(f) = &mut self.hooks.on_child_exit {
                f(pid, exit);
            }
            Ok(())
        })?;
        if self.stopping {
            return Ok(());
        }
        let delay = self
            .recovery
            .on_exit(slot, lived, child.ready)
            .inspect_err(|e| self.log.log(Level::Error, e.message()))?;
        self.slots[slot].respawn = Some((Instant::now() + delay, pid));
        Ok(())
    }

    fn respawn_due(&mut self, now: Instant) -> Result<(), Error> {
        for slot in 0..self.slots.len() {
            let Some((due, old)) = self.slots[slot].respawn else {
                continue;
            };
            if due > now {
                continue;
            }
            self.slots[slot].respawn = None;
            let new = self.spawn_into(slot)?;
            self.log.log(
                Level::Info,
                &format!("replaced child {old} with {new} (slot {slot})"),
            );
            hook::call("on_child_spawn", || match &mut self.hooks.on_child_spawn {
                Some(f) => f(new),
                None => Ok(()),
            })?;
            hook::call("on_child_recover", || {
                match &mut self.hooks.on_child_recover {
                    Some(f) => f(old, new),
                    None => Ok(()),
                }
            })?;
        }
        Ok(())
    }

    fn check_startup_deadlines(&self, now: Instant) -> Result<(), Error> {
        for child in self.slots.iter().filter_map(|s| s.child.as_ref()) {
            if !child.ready && now.duration_since(child.started) >= self.cfg.startup_timeout {
                let msg = format!(
                    "child {} did not report listening within {:?} (startup timeout); a custom \
                     command producer must pass the lifeline at fd 4",
                    child.pid, self.cfg.startup_timeout
                );
                self.log.log(Level::Error, &msg);
                return Err(Error::new(ErrorKind::StartupTimeout, msg));
            }
        }
        Ok(())
    }

    /// Fires on_master_ready once, when every slot's child has reported listening.
    fn announce_ready(&mut self) -> Result<(), Error> {
        if self.ready_announced
            || !self
                .slots
                .iter()
                .all(|s| s.child.as_ref().is_some_and(|c| c.ready))
        {
            return Ok(());
        }
        self.ready_announced = true;
        let pids: Vec<Pid> = self
            .slots
            .iter()
            .filter_map(|s| s.child.as_ref())
            .map(|c| c.pid)
            .collect();
        self.log
            .log(Level::Info, &format!("master ready: children {pids:?}"));
        hook::call("on_master_ready", || {
            match &mut self.hooks.on_master_ready {
                Some(f) => f(&pids),
                None => Ok(()),
            }
        })
    }

    fn next_deadline(&self) -> Option<Instant> {
        let respawns = self
            .slots
            .iter()
            .filter_map(|s| s.respawn.map(|(due, _)| due));
        let startups = self
            .slots
            .iter()
            .filter_map(|s| s.child.as_ref())
            .filter(|c| !c.ready)
            .map(|c| c.started + self.cfg.startup_timeout);
        respawns.chain(startups).min()
    }

    /// Stops every child: SIGTERM and up to the grace period (SIGKILL at once when `now`, or
    /// when a second SIGINT arrives meanwhile), then SIGKILL and reap the rest. Never fails:
    /// it runs on every exit path, and nothing may outlive it.
    fn stop(&mut self, mut now: bool) {
        self.stopping = true;
        for slot in &mut self.slots {
            slot.respawn = None;
        }
        let live = self.live_pids();
        if live.is_empty() {
            return;
        }
        self.log.log(
            Level::Info,
            &format!(
                "stopping {} children{}",
                live.len(),
                if now { " at once" } else { " gracefully" }
            ),
        );
        if !now {
            // Tells each child that this SIGTERM is the master's (see child::lifeline).
            for fd in self
                .slots
                .iter()
                .filter_map(|s| s.child.as_ref()?.lifeline.as_ref())
            {
                lifeline::announce_stop(fd.as_raw_fd());
            }
        }
        signal_all(
            &live,
            if now {
                Signal::SIGKILL
            } else {
                Signal::SIGTERM
            },
        );
        let deadline = Instant::now()
            + if now {
                Duration::ZERO
            } else {
                self.cfg.grace_period
            };
        loop {
            for slot in 0..self.slots.len() {
                if let Err(e) = self.reap(slot, false) {
                    self.log
                        .log(Level::Error, &format!("while stopping: {}", e.message()));
                }
            }
            let live = self.live_pids();
            let left = deadline.saturating_duration_since(Instant::now());
            if live.is_empty() || left.is_zero() {
                break;
            }
            let mut fds = vec![pollfd(self.wake)];
            for child in self.slots.iter().filter_map(|s| s.child.as_ref()) {
                if let Some(fd) = &child.pidfd {
                    fds.push(pollfd(fd.as_fd()));
                }
            }
            poll(&mut fds, Some(left.min(SWEEP_PERIOD)));
            if fired(&fds[0]) && control::drain_wake() == Some(WAKE_STOP_NOW) && !now {
                now = true;
                signal_all(&live, Signal::SIGKILL);
            }
        }
        let stubborn = self.live_pids();
        if !stubborn.is_empty() {
            self.log.log(
                Level::Warn,
                &format!(
                    "killing children {stubborn:?} after the {:?} grace period",
                    self.cfg.grace_period
                ),
            );
            signal_all(&stubborn, Signal::SIGKILL);
            for slot in 0..self.slots.len() {
                let _ = self.reap(slot, true);
            }
        }
    }

    fn live_pids(&self) -> Vec<Pid> {
        self.slots
            .iter()
            .filter_map(|s| s.child.as_ref())
            .map(|c| c.pid)
            .collect()
    }
}

impl Drop for Master<'_> {
    /// The last line of defence (a panic inside the supervisor itself): no orphan, no zombie.
    fn drop(&mut self) {
        for child in self.slots.iter_mut().filter_map(|s| s.child.take()) {
            spawn::kill_and_reap(child.pid);
        }
    }
}

#[derive(Clone, Copy)]
enum Watch {
    Exit,
    Lifeline,
}

fn pollfd(fd: BorrowedFd<'_>) -> PollFd<'_> {
    PollFd::new(fd, PollFlags::POLLIN)
}

/// True when poll reported anything for `fd`. Bits nix has no name for (`revents()` is then
/// `None`) are events all the same.
fn fired(fd: &PollFd<'_>) -> bool {
    fd.any().unwrap_or(true)
}

fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) {
    let timeout = timeout.map_or(PollTimeout::NONE, |t| {
        let ms = t.as_millis().min(i32::MAX as u128) as i32
            + i32::from(t.subsec_nanos() % 1_000_000 != 0);
        PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
    });
    // EINTR just means a signal came in; the loop re-checks everything.
    let _ = nix::poll::poll(fds, timeout);
}

/// waitpid for one child: its exit, or None while it runs.
///
/// Raw libc, not nix's `waitpid`: nix decodes the status into its `Signal` enum, which has no
/// real-time signals, so for a child killed by one it reaps the child and then returns EINVAL,
/// and the status is lost. Without WUNTRACED or WCONTINUED (and with no child traced by this
/// process) a status is an exit or a death by signal.
fn wait(pid: Pid, block: bool) -> Option<ChildExit> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out pointer for the duration of the call.
        let r = unsafe { libc::waitpid(pid, &mut status, if block { 0 } else { libc::WNOHANG }) };
        if r == pid {
            break;
        }
        if r < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        if r < 0 {
            // ECHILD: someone else (a host's SIGCHLD handler) reaped it; it is gone all the same.
            return Some(ChildExit::Code(-1));
        }
        return None;
    }
    Some(if libc::WIFSIGNALED(status) {
        ChildExit::Signal(libc::WTERMSIG(status))
    } else {
        ChildExit::Code(libc::WEXITSTATUS(status))
    })
}

fn describe(exit: ChildExit) -> String {
    match exit {
        ChildExit::Code(0) => "exited cleanly".into(),
        ChildExit::Code(-1) => "was reaped by someone else".into(),
        ChildExit::Code(c) => format!("exited with status {c}"),
        ChildExit::Signal(s) => format!("was killed by signal {s}"),
    }
}

/// Signals children we have not reaped, so no pid can have been recycled.
fn signal_all(pids: &[Pid], sig: Signal) {
    for &pid in pids {
        let _ = nix::sys::signal::kill(NixPid::from_raw(pid), sig);
    }
}
