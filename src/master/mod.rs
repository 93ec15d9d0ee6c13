//! The master: bind, spawn, wait for readiness, supervise (respawn within the recover policy),
//! and stop (SIGTERM, grace period, SIGKILL, reap).
//!
//! One event loop, as nginx's master cycle: every input is an event of one poll(2) set (the
//! stop pipe that the signal handlers and `shutdown()` write to, each child's pidfd, the
//! lifeline of each child not yet ready) or a timer (a respawn, a startup deadline, the stop's
//! deadline), and what it does depends on the state the master is in, `State::Running` or
//! `State::Stopping`. A failure while running (the recover policy, a hook, a spawn) is a
//! transition to a graceful stop that remembers the error. Single-threaded.

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
use crate::confine::Confinement;
use crate::control::{self, Role, SignalGuard, WAKE_STOP_NOW};
use crate::error::{Error, ErrorKind};
use crate::hooks::{ChildExit, Hooks, Pid};
use crate::lifeline;
use crate::log::{Level, Logger};
use recovery::{Lived, Recovery};
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
    // Before anything is bound: a user that does not exist is the caller's error, at once.
    let confinement = Confinement::resolve(cfg)?;
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
    if let Some(confined) = confinement.describe() {
        log.log(Level::Info, &confined);
    }
    let mut master = Master {
        cfg,
        hooks,
        log,
        wake,
        slots: (0..count).map(|_| Slot::default()).collect(),
        listeners,
        confinement,
        tls,
        recovery: Recovery::new(cfg),
        ready_announced: false,
        state: State::Running,
        outcome: Ok(()),
    };
    master.run()
}

#[derive(Default)]
struct Slot {
    child: Option<Child>,
    /// When an exited child's replacement is due, and whom it replaces.
    respawn: Option<(Instant, Pid)>,
}

/// What the master is doing; each event is handled according to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Keeping every slot's child running: an exit is a crash to recover from.
    Running,
    /// The children were told to stop, with SIGTERM or (`forced`) SIGKILL; an exit is final.
    /// At `deadline` the ones left are killed.
    Stopping { deadline: Instant, forced: bool },
}

/// One input of the loop.
#[derive(Clone, Copy)]
enum Event {
    /// The stop pipe: a signal or `shutdown()`.
    Wake,
    /// A child's pidfd: it exited.
    Exit(usize),
    /// A child's lifeline before it is ready: its ready byte, or EOF.
    Lifeline(usize),
    /// The waitpid sweep's period ended (children without a pidfd).
    Sweep,
}

struct Master<'a> {
    cfg: &'a ProcessConfig,
    hooks: &'a mut Hooks,
    log: &'a dyn Logger,
    wake: BorrowedFd<'static>,
    slots: Vec<Slot>,
    listeners: Vec<OwnedFd>,
    confinement: Confinement,
    /// The TLS material each child gets on its lifeline (`crate::tls`).
    tls: Option<&'a [u8]>,
    recovery: Recovery,
    ready_announced: bool,
    state: State,
    /// What `listen_and_serve` returns: the first failure, or a stop that was asked for.
    outcome: Result<(), Error>,
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
        let Some(listener) = self.listeners.get(slot % self.listeners.len().max(1)) else {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "no child is started once the stop closed the listeners",
            ));
        };
        let listener = listener.as_raw_fd();
        let child = spawn::spawn(
            listener,
            slot,
            self.confinement.for_slot(slot),
            self.hooks.command_producer.as_deref_mut(),
        )?;
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

    /// The master's cycle: starts the children, then handles timers and events until the stop
    /// has reaped the last child.
    fn run(&mut self) -> Result<(), Error> {
        if let Err(e) = self.start() {
            self.fail(e);
        }
        loop {
            let now = Instant::now();
            let before = self.state;
            match self.state {
                State::Running => {
                    if let Err(e) = self.run_timers(now) {
                        self.fail(e);
                    }
                }
                State::Stopping { deadline, .. } => {
                    if self.live_pids().is_empty() {
                        break;
                    }
                    if now >= deadline {
                        self.kill_stubborn();
                        break;
                    }
                }
            }
            if self.state != before {
                // A new state has its own timers and poll set.
                continue;
            }
            for event in self.wait(now) {
                if let Err(e) = self.handle(event) {
                    self.fail(e);
                }
            }
        }
        std::mem::replace(&mut self.outcome, Ok(()))
    }

    /// Running: a stop request (raised before the loop or by the stop pipe), then the due
    /// respawns, the startup deadlines and the ready announcement.
    fn run_timers(&mut self, now: Instant) -> Result<(), Error> {
        if control::stop_requested() {
            let forced = control::drain_wake() == Some(WAKE_STOP_NOW);
            self.begin_stop(forced);
            return Ok(());
        }
        self.respawn_due(now)?;
        self.check_startup_deadlines(now)?;
        self.announce_ready()
    }

    fn handle(&mut self, event: Event) -> Result<(), Error> {
        match (event, self.state) {
            // Running, the next turn reads the request (see `run_timers`).
            (Event::Wake, State::Running) => Ok(()),
            (Event::Wake, State::Stopping { .. }) => {
                if control::drain_wake() == Some(WAKE_STOP_NOW) {
                    self.force_stop();
                }
                Ok(())
            }
            (Event::Exit(slot), _) => self.reap(slot, false),
            (Event::Lifeline(slot), _) => {
                self.read_lifeline(slot);
                Ok(())
            }
            (Event::Sweep, _) => {
                for slot in 0..self.slots.len() {
                    if let Err(e) = self.reap(slot, false) {
                        self.fail(e);
                    }
                }
                Ok(())
            }
        }
    }

    /// A failure: while running, it becomes the outcome and the children are stopped
    /// gracefully; while stopping, nothing must keep the stop from finishing, so it is logged.
    fn fail(&mut self, e: Error) {
        match self.state {
            State::Running => {
                self.outcome = Err(e);
                self.begin_stop(false);
            }
            State::Stopping { .. } => self
                .log
                .log(Level::Error, &format!("while stopping: {}", e.message())),
        }
    }

    /// Polls the inputs of the current state until one fires or the next timer is due;
    /// returns what fired.
    fn wait(&self, now: Instant) -> Vec<Event> {
        let running = self.state == State::Running;
        // The descriptors are borrowed from the slots, so this list lives for one turn.
        let mut fds = vec![pollfd(self.wake)];
        let mut watched = vec![Event::Wake];
        let mut sweep = false;
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(child) = &slot.child else { continue };
            match &child.pidfd {
                Some(fd) => {
                    fds.push(pollfd(fd.as_fd()));
                    watched.push(Event::Exit(i));
                }
                None => sweep = true,
            }
            if let (true, false, Some(fd)) = (running, child.ready(), &child.lifeline) {
                fds.push(pollfd(fd.as_fd()));
                watched.push(Event::Lifeline(i));
            }
        }
        let mut timeout = self
            .next_deadline()
            .map(|d| d.saturating_duration_since(now));
        if sweep {
            timeout = Some(timeout.map_or(SWEEP_PERIOD, |t| t.min(SWEEP_PERIOD)));
        }
        poll(&mut fds, timeout);
        let mut events: Vec<Event> = watched
            .into_iter()
            .zip(&fds)
            .filter(|(_, fd)| fired(fd))
            .map(|(event, _)| event)
            .collect();
        if sweep {
            events.push(Event::Sweep);
        }
        events
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
            child.ready_at = Some(Instant::now());
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
        let lived = Lived {
            total: child.started.elapsed(),
            ready: child.ready_at.map(|t| t.elapsed()),
        };
        self.log.log(
            if self.ready_announced && self.state == State::Running {
                Level::Warn
            } else {
                Level::Info
            },
            &format!(
                "child {pid} (slot {slot}) {} after {:.1?}",
                describe(exit),
                lived.total
            ),
        );
        hook::call("on_child_exit", || {
            if let Some(f) = &mut self.hooks.on_child_exit {
                f(pid, exit);
            }
            Ok(())
        })?;
        if self.state != State::Running {
            return Ok(());
        }
        let delay = self
            .recovery
            .on_exit(slot, lived)
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
            if !child.ready() && now.duration_since(child.started) >= self.cfg.startup_timeout {
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
                .all(|s| s.child.as_ref().is_some_and(|c| c.ready()))
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
        if let State::Stopping { deadline, .. } = self.state {
            return Some(deadline);
        }
        let respawns = self
            .slots
            .iter()
            .filter_map(|s| s.respawn.map(|(due, _)| due));
        let startups = self
            .slots
            .iter()
            .filter_map(|s| s.child.as_ref())
            .filter(|c| !c.ready())
            .map(|c| c.started + self.cfg.startup_timeout);
        respawns.chain(startups).min()
    }

    /// Enters `Stopping`: no more respawns, the listeners closed, SIGTERM to every child
    /// (SIGKILL when `forced`), and the deadline after which the rest are killed.
    fn begin_stop(&mut self, forced: bool) {
        for slot in &mut self.slots {
            slot.respawn = None;
        }
        // While the master holds a listener the kernel completes handshakes on it that no child
        // will take, and resets them when the master finally closes it: closed first, the
        // children's descriptors are the last, and each child takes its queue before closing
        // (http::server's close_listener), after which connecting is refused.
        self.listeners.clear();
        let live = self.live_pids();
        if !live.is_empty() {
            self.log.log(
                Level::Info,
                &format!(
                    "stopping {} children{}",
                    live.len(),
                    if forced { " at once" } else { " gracefully" }
                ),
            );
            if !forced {
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
                if forced {
                    Signal::SIGKILL
                } else {
                    Signal::SIGTERM
                },
            );
        }
        let grace = if forced {
            Duration::ZERO
        } else {
            self.cfg.grace_period
        };
        self.state = State::Stopping {
            deadline: Instant::now() + grace,
            forced,
        };
    }

    /// A second SIGINT during a graceful stop: SIGKILL now, without waiting for the grace
    /// period.
    fn force_stop(&mut self) {
        if let State::Stopping {
            deadline,
            forced: false,
        } = self.state
        {
            self.state = State::Stopping {
                deadline,
                forced: true,
            };
            signal_all(&self.live_pids(), Signal::SIGKILL);
        }
    }

    /// The stop's deadline passed: SIGKILL and a blocking reap for every child left, so that
    /// nothing outlives the master.
    fn kill_stubborn(&mut self) {
        let stubborn = self.live_pids();
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
