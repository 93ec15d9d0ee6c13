//! The master: bind, spawn, wait for readiness, supervise (respawn within the recover policy),
//! reload, and stop (the shutdown delay, SIGTERM, grace period, SIGKILL, reap).
//!
//! One event loop, as nginx's master cycle: every input is an event of one poll(2) set (the
//! wake pipe that the signal handlers, `shutdown()` and the control calls write to, each
//! child's pidfd, the lifeline of each child not yet ready) or a timer (a respawn, a startup
//! deadline, a retiring child's grace, the end of the shutdown delay, the stop's deadline), and
//! what it does depends on the state the master is in, `State::Running`, `State::Reloading`
//! or `State::Stopping`. A failure while running (the recover policy, a hook, a spawn) is a
//! transition to a graceful stop that remembers the error. Single-threaded. After each turn, a
//! master that orphans are re-parented to (PID 1, a subreaper) reaps those that exited
//! (`orphans`).
//!
//! Children are kept per slot: the one serving it, and while a reload runs its successor of
//! the new generation. A child told to stop while the master goes on (the old generation
//! after a reload) is retiring: it drains within the grace period, and its exit is final.

mod activation;
pub(crate) mod bind;
mod hook;
mod migrate;
mod orphans;
mod recovery;
mod recycle;
mod reload;
mod scale;
mod spawn;
mod systemd;
mod upgrade;
mod watchdog;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
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
use crate::listen::ListenerSpec;
use crate::log::{Level, Logger};
use crate::shared::{self, CELLS, Cell, MasterBlock, Region};
use recovery::{Lived, Recovery};
use spawn::Child;
use watchdog::Watch;

pub(crate) use activation::ENV as ACTIVATION_ENV;

/// Poll period when the kernel has no pidfd_open and exits are found by waitpid sweeps.
const SWEEP_PERIOD: Duration = Duration::from_millis(20);

pub(crate) fn run(
    specs: &[ListenerSpec],
    config: &Config,
    hooks: &mut Hooks,
    log: &dyn Logger,
    tls: Option<&[u8]>,
) -> Result<(), Error> {
    let cfg = &config.process;
    let count = cfg.effective_children();
    // Before anything is bound: a user that does not exist is the caller's error, at once.
    let confinement = Confinement::resolve(cfg)?;
    let proxy = config.http.proxy_protocol;
    let (listeners, ready_pipe, inherited_files) = match upgrade::inherited(proxy, cfg, count)? {
        Some(old) => (old.listeners, old.ready, old.files),
        None => (
            bind::bind_all(specs, proxy, cfg, count, log)?,
            None,
            Vec::new(),
        ),
    };
    for l in &listeners {
        l.migrate_on_close(log);
    }
    crate::set_listener_addrs(listeners.iter().map(|l| l.addr.clone()).collect());
    let wake = control::wake_fd().map_err(|e| Error::io(ErrorKind::Io, "create stop pipe", e))?;
    let adopts_orphans = orphans::adopted();
    let _signals = if cfg.handle_signals {
        let role = Role::Master {
            wake_on_child_exit: adopts_orphans,
        };
        Some(
            SignalGuard::install(role)
                .map_err(|e| Error::io(ErrorKind::Io, "install signal handlers", e))?,
        )
    } else {
        None
    };
    control::set_master_running(true);
    let shared = Region::create()
        .inspect_err(|e| {
            log.log(
                Level::Warn,
                &format!("no memory shared with the children ({e}): no watchdog, no counters"),
            )
        })
        .ok()
        .map(Arc::new);
    if let Some(region) = &shared {
        let m = region.master();
        m.pid.store(std::process::id() as i32, Ordering::Relaxed);
        m.children.store(count as u64, Ordering::Relaxed);
        m.generation.store(1, Ordering::Relaxed);
        m.started_unix_ms
            .store(shared::unix_ms(), Ordering::Relaxed);
        shared::publish(Some(region.clone()));
    }
    let described: Vec<String> = listeners.iter().map(|l| l.describe()).collect();
    log.log(
        Level::Info,
        &format!(
            "master listening on {} with {count} children ({})",
            described.join(", "),
            if cfg.reuseport {
                "one SO_REUSEPORT socket each for TCP"
            } else {
                "shared listeners"
            }
        ),
    );
    if let Some(confined) = confinement.describe() {
        log.log(Level::Info, &confined);
    }
    if adopts_orphans {
        log.log(
            Level::Info,
            "orphans are re-parented to the master (PID 1 or a subreaper): it reaps them",
        );
    }
    let notify = crate::notify::Notifier::from_env()
        .inspect_err(|e| log.log(Level::Warn, &format!("not notifying systemd: {e}")))
        .ok()
        .flatten();
    let mut master = Master {
        cfg,
        hooks,
        log,
        wake,
        slots: (0..count).map(|_| Slot::default()).collect(),
        retiring: Vec::new(),
        listeners,
        confinement,
        tls,
        recovery: Recovery::new(cfg),
        ready_announced: false,
        state: State::Running,
        generation: 1,
        next_generation: 2,
        reload_queued: false,
        scale_to: None,
        shared,
        // Popped from the end: cell 0 first.
        free_cells: (0..CELLS).rev().collect(),
        slot_restarts: vec![0; count],
        watch: Watch::new(),
        notify,
        notify_watchdog_due: None,
        program: upgrade::program_path(),
        upgrade: None,
        upgrade_reaped: false,
        handed_over: false,
        ready_pipe,
        inherited_files,
        recycling: None,
        recycle_retry: None,
        recycle_backoff: recycle::FIRST_RETRY,
        stop_now_seen: false,
        adopts_orphans,
        outcome: Ok(()),
    };
    let result = master.run();
    // The figures end with the master.
    shared::publish(None);
    result
}

#[derive(Default)]
struct Slot {
    /// The child serving this slot.
    child: Option<Child>,
    /// Its successor of the generation a reload is starting; it takes the slot once every
    /// slot's successor is ready.
    next: Option<Child>,
    /// When an exited child's replacement is due, and whom it replaces.
    respawn: Option<(Instant, Pid)>,
}

/// A child told to stop gracefully while the master goes on.
struct Retiring {
    child: Child,
    slot: usize,
    /// The end of its grace period: then it gets SIGKILL (and `killed` is set).
    deadline: Instant,
    killed: bool,
}

/// What the master is doing; each event is handled according to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Keeping every slot's child running: an exit is a crash to recover from.
    Running,
    /// As `Running`, while the children of `generation` start in every slot; an exit or a
    /// startup timeout of one of them fails the reload, not the master.
    Reloading { generation: u64, since: Instant },
    /// The children were told to stop, with SIGTERM or (`forced`) SIGKILL; an exit is final.
    /// At `deadline` the ones left are killed. With a shutdown delay, `drain_at` is when the
    /// SIGTERM comes: until then the children serve on, closing each connection after its
    /// response; `stops` is the stop requests counted when the delay began (one more ends it).
    Stopping {
        deadline: Instant,
        forced: bool,
        drain_at: Option<Instant>,
        stops: u32,
    },
}

/// One input of the loop. Children are named by pid: a handled event may move or remove
/// children, so a position would go stale within the turn.
#[derive(Clone, Copy)]
enum Event {
    /// The wake pipe: a signal, `shutdown()` or a control request.
    Wake,
    /// A child's pidfd: it exited.
    Exit(Pid),
    /// A child's lifeline before it is ready: its ready byte, or EOF.
    Lifeline(Pid),
    /// The waitpid sweep's period ended (children without a pidfd).
    Sweep,
    /// The new master of an upgrade: its ready pipe, its pidfd.
    UpgradeReady,
    UpgradeExit,
}

/// Where a child is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Serving(usize),
    Next(usize),
    Retiring(usize),
}

struct Master<'a> {
    cfg: &'a ProcessConfig,
    hooks: &'a mut Hooks,
    log: &'a dyn Logger,
    wake: BorrowedFd<'static>,
    slots: Vec<Slot>,
    retiring: Vec<Retiring>,
    listeners: Vec<bind::Listener>,
    confinement: Confinement,
    /// The TLS material each child gets on its lifeline (`crate::tls`).
    tls: Option<&'a [u8]>,
    recovery: Recovery,
    ready_announced: bool,
    state: State,
    /// The generation the serving children belong to.
    generation: u64,
    /// The number the next reload takes: a failed generation's number is never reused, so
    /// logs and hooks name one attempt each.
    next_generation: u64,
    /// A reload was asked for while one ran: it starts when that one ends.
    reload_queued: bool,
    /// The child count asked for and not reached yet.
    scale_to: Option<usize>,
    /// The memory shared with the children, and its cells no child holds.
    shared: Option<Arc<Region>>,
    free_cells: Vec<usize>,
    /// Replacements of crashed children per slot, for the stats.
    slot_restarts: Vec<u64>,
    watch: Watch,
    /// The service manager to tell about readiness, reloads and the stop (`NOTIFY_SOCKET`),
    /// and when its next watchdog ping is due.
    notify: Option<crate::notify::Notifier>,
    notify_watchdog_due: Option<Instant>,
    /// The program to start for a binary upgrade, the new master while it starts, whether
    /// that one was reaped already, and whether one took over (this master then stops).
    program: Option<std::path::PathBuf>,
    upgrade: Option<upgrade::Upgrade>,
    upgrade_reaped: bool,
    handed_over: bool,
    /// A new master's: where it tells the old one that it is ready.
    ready_pipe: Option<OwnedFd>,
    /// A new master's: the socket files of its listeners (by position) that the old master
    /// created, which become this master's to remove once it took over.
    inherited_files: Vec<(usize, (std::path::PathBuf, u64))>,
    /// The slot whose child is being recycled: its successor starts in `Slot::next`.
    recycling: Option<usize>,
    /// After a failed recycle, when the next may start, and the delay after another failure.
    recycle_retry: Option<Instant>,
    recycle_backoff: Duration,
    /// A second SIGINT's byte was read from the wake pipe before the stop began.
    stop_now_seen: bool,
    /// Orphans are re-parented to this process (PID 1, or a subreaper): it reaps them.
    adopts_orphans: bool,
    /// What `listen_and_serve` returns: the first failure, or a stop that was asked for.
    outcome: Result<(), Error>,
}

impl Master<'_> {
    fn start(&mut self) -> Result<(), Error> {
        for slot in 0..self.slots.len() {
            if control::stop_requested() {
                return Ok(());
            }
            let child = self.spawn_child(slot, self.generation)?;
            let pid = child.pid;
            self.slots[slot].child = Some(child);
            self.spawned(pid)?;
        }
        Ok(())
    }

    fn spawn_child(&mut self, slot: usize, generation: u64) -> Result<Child, Error> {
        if self.listeners.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "no child is started once the stop closed the listeners",
            ));
        }
        let listeners: Vec<RawFd> = self.listeners.iter().map(|l| l.for_slot(slot)).collect();
        let words: Vec<&str> = self
            .listeners
            .iter()
            .map(|l| if l.proxy { "proxy" } else { "plain" })
            .collect();
        let cell = self.shared.as_ref().and(self.free_cells.pop());
        let hello = match (&self.shared, cell) {
            (Some(region), Some(cell)) => {
                region.cell(cell).expect("a free cell exists").clear();
                region.fd().map(|fd| spawn::Hello {
                    region: fd,
                    cell,
                    period_ms: watchdog::period(self.cfg).as_millis() as u32,
                })
            }
            _ => None,
        };
        let spawned = spawn::spawn(
            &listeners,
            words.join(","),
            slot,
            generation,
            hello,
            self.confinement.for_slot(slot),
            self.hooks.command_producer.as_deref_mut(),
        );
        if let Some(cell) = cell
            && spawned.as_ref().map_or(true, |c| c.cell.is_none())
        {
            self.free_cells.push(cell);
        }
        let mut child = spawned?;
        // Every child (the first ones, replacements, scaled, recycled and reloaded ones) starts
        // here, so each gets the TLS material. The lifeline's order is fixed: the hello
        // `spawn::spawn` queued before the child started comes first, this message second; the
        // child reads them in that order, each to its end, before `init_child`. (A binary
        // upgrade re-executes the program, whose new master reads the certificates itself.)
        if let (Some(msg), Some(fd)) = (self.tls, child.lifeline.as_ref().map(|fd| fd.as_raw_fd()))
            && let Err(e) = crate::tls::send(fd, msg, Instant::now() + self.cfg.startup_timeout)
        {
            let _ = nix::sys::signal::kill(NixPid::from_raw(child.pid), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(NixPid::from_raw(child.pid), None);
            if let Some(cell) = child.cell {
                self.free_cells.push(cell);
            }
            return Err(e);
        }
        child.request_limit = recycle::request_limit(self.cfg);
        let restarts = self.slot_restarts.get(slot).copied().unwrap_or(0);
        if let (Some(region), Some(i)) = (&self.shared, child.cell) {
            let used = &region.master().cells_used;
            used.fetch_max(i as u64 + 1, Ordering::Relaxed);
        }
        if let Some(cell) = self.cell_of(&child) {
            cell.pid.store(child.pid, Ordering::Relaxed);
            cell.slot.store(slot as u64, Ordering::Relaxed);
            cell.generation.store(generation, Ordering::Relaxed);
            cell.started_unix_ms
                .store(shared::unix_ms(), Ordering::Relaxed);
            cell.slot_restarts.store(restarts, Ordering::Relaxed);
            cell.state.store(shared::STATE_STARTING, Ordering::Relaxed);
        }
        self.count(|m| &m.spawned);
        self.log.log(
            Level::Info,
            &format!(
                "started child {} (slot {slot}, generation {generation})",
                child.pid
            ),
        );
        Ok(child)
    }

    /// The shared-memory cell of `child`, if it has one.
    fn cell_of(&self, child: &Child) -> Option<&Cell> {
        self.shared.as_ref()?.cell(child.cell?)
    }

    /// Adds one to a master total of the stats.
    fn count(&self, counter: impl FnOnce(&MasterBlock) -> &std::sync::atomic::AtomicU64) {
        if let Some(region) = &self.shared {
            shared::bump(counter(region.master()));
        }
    }

    fn spawned(&mut self, pid: Pid) -> Result<(), Error> {
        hook::call("on_child_spawn", || match &mut self.hooks.on_child_spawn {
            Some(f) => f(pid),
            None => Ok(()),
        })
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
                State::Running | State::Reloading { .. } => {
                    if let Err(e) = self.run_timers(now) {
                        self.fail(e);
                    }
                }
                State::Stopping {
                    deadline,
                    drain_at,
                    stops,
                    ..
                } => {
                    if self.live_pids().is_empty() {
                        break;
                    }
                    if let Some(at) = drain_at
                        && (now >= at || control::stop_count() != stops)
                    {
                        self.end_shutdown_delay(now < at);
                        continue;
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
            if let Err(e) = self.reap_orphans() {
                self.fail(e);
            }
        }
        let _ = self.reap_orphans();
        std::mem::replace(&mut self.outcome, Ok(()))
    }

    /// Running or reloading: a stop request (raised before the loop or by the wake pipe),
    /// then the retiring children's deadlines, the due respawns, the startup deadlines, the
    /// ready announcement, the reload's progress, the scaling requests and recycling.
    fn run_timers(&mut self, now: Instant) -> Result<(), Error> {
        if control::stop_requested() {
            let forced = self.stop_now_seen || control::drain_wake() == Some(WAKE_STOP_NOW);
            self.begin_stop(forced);
            return Ok(());
        }
        self.kill_overdue_retirees(now);
        self.watch_heartbeats(now);
        self.respawn_due(now)?;
        self.check_startup_deadlines(now)?;
        self.announce_ready()?;
        self.advance_reload(now)?;
        self.apply_scaling()?;
        self.advance_recycling(now)?;
        self.advance_upgrade(now);
        self.ping_systemd(now);
        Ok(())
    }

    fn handle(&mut self, event: Event) -> Result<(), Error> {
        match event {
            Event::Wake => {
                // Running, the next turn reads the requests (see `run_timers`); stopping, a
                // second SIGINT kills at once.
                if control::drain_wake() == Some(WAKE_STOP_NOW) {
                    self.stop_now_seen = true;
                    self.force_stop();
                }
                Ok(())
            }
            Event::Exit(pid) => self.reap(pid, false),
            Event::Lifeline(pid) => {
                self.read_lifeline(pid);
                Ok(())
            }
            Event::UpgradeReady => self.upgrade_ready_event(),
            Event::UpgradeExit => {
                self.upgrade_exit_event();
                Ok(())
            }
            Event::Sweep => {
                for pid in self.live_pids() {
                    if let Err(e) = self.reap(pid, false) {
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
            State::Running | State::Reloading { .. } => {
                self.outcome = Err(e);
                self.begin_stop(false);
            }
            State::Stopping { .. } => self
                .log
                .log(Level::Error, &format!("while stopping: {}", e.message())),
        }
    }

    /// Every child: serving, starting as a successor, retiring.
    fn children(&self) -> impl Iterator<Item = &Child> {
        let slots = self
            .slots
            .iter()
            .flat_map(|s| s.child.iter().chain(s.next.iter()));
        slots.chain(self.retiring.iter().map(|r| &r.child))
    }

    fn locate(&self, pid: Pid) -> Option<Place> {
        let is = |c: &Option<Child>| c.as_ref().is_some_and(|c| c.pid == pid);
        for (i, slot) in self.slots.iter().enumerate() {
            if is(&slot.child) {
                return Some(Place::Serving(i));
            }
            if is(&slot.next) {
                return Some(Place::Next(i));
            }
        }
        let retiring = self.retiring.iter().position(|r| r.child.pid == pid);
        retiring.map(Place::Retiring)
    }

    /// Removes the child at `place`, which was reaped; returns it with its slot.
    fn take(&mut self, place: Place) -> (Child, usize) {
        let taken = match place {
            Place::Serving(slot) => self.slots[slot].child.take().map(|c| (c, slot)),
            Place::Next(slot) => self.slots[slot].next.take().map(|c| (c, slot)),
            Place::Retiring(i) => {
                let r = self.retiring.swap_remove(i);
                Some((r.child, r.slot))
            }
        };
        let (child, slot) = taken.expect("a located child is there");
        if let Some(cell) = self.cell_of(&child) {
            let master = self.shared.as_ref().expect("a cell has a region").master();
            let served = cell.requests.load(Ordering::Relaxed);
            master.retired_requests.fetch_add(served, Ordering::Relaxed);
            shared::bump(&master.exited);
            cell.clear();
        }
        // Only a reaped child gives its cell back: until then it may still write to it.
        if let Some(cell) = child.cell {
            self.free_cells.push(cell);
        }
        (child, slot)
    }

    /// Polls the inputs of the current state until one fires or the next timer is due;
    /// returns what fired.
    fn wait(&self, now: Instant) -> Vec<Event> {
        let starting = !matches!(self.state, State::Stopping { .. });
        // The descriptors are borrowed from the children, so this list lives for one turn.
        let mut fds = vec![pollfd(self.wake)];
        let mut watched = vec![Event::Wake];
        let mut sweep = false;
        for child in self.children() {
            match &child.pidfd {
                Some(fd) => {
                    fds.push(pollfd(fd.as_fd()));
                    watched.push(Event::Exit(child.pid));
                }
                None => sweep = true,
            }
        }
        let unready = self
            .slots
            .iter()
            .flat_map(|s| s.child.iter().chain(s.next.iter()))
            .filter(|c| starting && !c.ready());
        for child in unready {
            if let Some(fd) = &child.lifeline {
                fds.push(pollfd(fd.as_fd()));
                watched.push(Event::Lifeline(child.pid));
            }
        }
        if let Some(u) = &self.upgrade {
            fds.push(pollfd(u.ready.as_fd()));
            watched.push(Event::UpgradeReady);
            if let Some(fd) = &u.pidfd {
                fds.push(pollfd(fd.as_fd()));
                watched.push(Event::UpgradeExit);
            }
        }
        let mut timeout = self
            .next_deadline()
            .map(|d| d.saturating_duration_since(now));
        if sweep {
            timeout = Some(timeout.map_or(SWEEP_PERIOD, |t| t.min(SWEEP_PERIOD)));
        }
        if self.adopts_orphans {
            let period = orphans::SWEEP_PERIOD;
            timeout = Some(timeout.map_or(period, |t| t.min(period)));
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

    /// Reaps the zombies of processes re-parented to the master (see `orphans`); the exit of a
    /// child it tracks goes its own way, with its status, through `reap`.
    fn reap_orphans(&mut self) -> Result<(), Error> {
        if !self.adopts_orphans {
            return Ok(());
        }
        while let Some(pid) = orphans::next_zombie() {
            if self.locate(pid).is_some() {
                self.reap(pid, false)?;
            } else if self.upgrade.as_ref().is_some_and(|u| u.pid == pid) {
                self.upgrade_exit_event();
            } else {
                orphans::reap(pid);
                self.log.log(Level::Debug, &format!("reaped orphan {pid}"));
            }
        }
        Ok(())
    }

    /// Takes the ready byte (or EOF) from a child's lifeline.
    fn read_lifeline(&mut self, pid: Pid) {
        let child = match self.locate(pid) {
            Some(Place::Serving(s)) => self.slots[s].child.as_mut(),
            Some(Place::Next(s)) => self.slots[s].next.as_mut(),
            _ => None,
        };
        let Some(child) = child else { return };
        let Some(fd) = &child.lifeline else { return };
        let mut buf = [0u8; 16];
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT);
        if let Ok(n @ 1..) = n
            && buf[..n].contains(&lifeline::READY_BYTE)
        {
            child.ready_at = Some(Instant::now());
            if let (Some(region), Some(cell)) = (&self.shared, child.cell)
                && let Some(cell) = region.cell(cell)
            {
                cell.state.store(shared::STATE_SERVING, Ordering::Relaxed);
            }
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

    /// Reaps child `pid` if it exited (`block` waits for it), and acts on the exit according
    /// to where it was kept.
    fn reap(&mut self, pid: Pid, block: bool) -> Result<(), Error> {
        let Some(place) = self.locate(pid) else {
            return Ok(());
        };
        let Some(exit) = wait(pid, block) else {
            return Ok(());
        };
        let (child, slot) = self.take(place);
        let lived = Lived {
            total: child.started.elapsed(),
            ready: child.ready_at.map(|t| t.elapsed()),
        };
        let unexpected = !matches!(self.state, State::Stopping { .. })
            && match place {
                Place::Serving(_) => self.ready_announced,
                Place::Next(_) => true,
                Place::Retiring(_) => false,
            };
        self.log.log(
            if unexpected { Level::Warn } else { Level::Info },
            &format!(
                "child {pid} (slot {slot}, generation {}) {} after {:.1?}",
                child.generation,
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
        match place {
            Place::Serving(_) => self.replace_later(slot, pid, lived),
            Place::Next(_) => self.successor_exited(&child, slot, exit),
            Place::Retiring(_) => Ok(()),
        }
    }

    /// A serving child exited: its replacement is due after the recover policy's delay.
    fn replace_later(&mut self, slot: usize, pid: Pid, lived: Lived) -> Result<(), Error> {
        if matches!(self.state, State::Stopping { .. }) {
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
            if let Some(n) = self.slot_restarts.get_mut(slot) {
                *n += 1;
            }
            let child = self.spawn_child(slot, self.generation)?;
            let new = child.pid;
            self.slots[slot].child = Some(child);
            self.log.log(
                Level::Info,
                &format!("replaced child {old} with {new} (slot {slot})"),
            );
            self.spawned(new)?;
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
            if self.startup_overdue(child, now) {
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

    fn startup_overdue(&self, child: &Child, now: Instant) -> bool {
        !child.ready() && now.duration_since(child.started) >= self.cfg.startup_timeout
    }

    /// Fires on_master_ready once, when every slot's child has reported listening.
    fn announce_ready(&mut self) -> Result<(), Error> {
        if self.ready_announced || !self.every_slot_ready() {
            return Ok(());
        }
        self.ready_announced = true;
        if self.ready_pipe.is_some() {
            // A new master: systemd learns whom to follow now.
            self.tell_systemd(&format!("MAINPID={}\nREADY=1", std::process::id()));
            self.report_upgraded();
        } else {
            self.tell_systemd("READY=1");
        }
        let pids = self.serving_pids();
        self.log
            .log(Level::Info, &format!("master ready: children {pids:?}"));
        hook::call("on_master_ready", || {
            match &mut self.hooks.on_master_ready {
                Some(f) => f(&pids),
                None => Ok(()),
            }
        })
    }

    fn every_slot_ready(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.child.as_ref().is_some_and(|c| c.ready()))
    }

    /// The serving children's pids, in slot order.
    fn serving_pids(&self) -> Vec<Pid> {
        self.slots
            .iter()
            .filter_map(|s| s.child.as_ref())
            .map(|c| c.pid)
            .collect()
    }

    fn next_deadline(&self) -> Option<Instant> {
        if let State::Stopping {
            deadline, drain_at, ..
        } = self.state
        {
            return Some(drain_at.map_or(deadline, |at| at.min(deadline)));
        }
        let respawns = self
            .slots
            .iter()
            .filter_map(|s| s.respawn.map(|(due, _)| due));
        let startups = self
            .slots
            .iter()
            .flat_map(|s| s.child.iter().chain(s.next.iter()))
            .filter(|c| !c.ready())
            .map(|c| c.started + self.cfg.startup_timeout);
        let graces = self
            .retiring
            .iter()
            .filter(|r| !r.killed)
            .map(|r| r.deadline);
        let watch = self.watchdog_deadline();
        let recycle = self.recycle_deadline();
        let systemd = self.notify_watchdog_due;
        let upgrade = self.upgrade.as_ref().map(|u| u.deadline);
        respawns
            .chain(systemd)
            .chain(upgrade)
            .chain(startups)
            .chain(graces)
            .chain(watch)
            .chain(recycle)
            .min()
    }

    /// Tells a child to stop gracefully while the master goes on; it drains within the grace
    /// period. Its listener stays open in the master and in the other children, so the
    /// connections in its accept queue that it does not take are taken by them, never reset.
    fn retire(&mut self, child: Child, slot: usize) {
        if let Some(cell) = self.cell_of(&child) {
            cell.state.store(shared::STATE_RETIRING, Ordering::Relaxed);
        }
        if let Some(fd) = &child.lifeline {
            // Tells the child that this SIGTERM is the master's (see child::lifeline).
            lifeline::announce_stop(fd.as_raw_fd());
        }
        signal_all(&[child.pid], Signal::SIGTERM);
        self.retiring.push(Retiring {
            child,
            slot,
            deadline: Instant::now() + self.cfg.grace_period,
            killed: false,
        });
    }

    /// SIGKILL for retiring children past their grace period; they are reaped as they go.
    fn kill_overdue_retirees(&mut self, now: Instant) {
        for r in self.retiring.iter_mut() {
            if !r.killed && now >= r.deadline {
                r.killed = true;
                self.log.log(
                    Level::Warn,
                    &format!(
                        "killing retiring child {} (slot {}) after the {:?} grace period",
                        r.child.pid, r.slot, self.cfg.grace_period
                    ),
                );
                signal_all(&[r.child.pid], Signal::SIGKILL);
            }
        }
    }

    /// Enters `Stopping`: no more respawns nor reload, the listeners closed, SIGTERM to every
    /// child (SIGKILL when `forced`), and the deadline after which the rest are killed. With a
    /// shutdown delay the SIGTERM waits for its end (`end_shutdown_delay`), and the children
    /// are told to close each connection after its response meanwhile.
    fn begin_stop(&mut self, forced: bool) {
        for slot in &mut self.slots {
            slot.respawn = None;
        }
        self.recycling = None;
        if let State::Reloading { generation, .. } = self.state {
            self.log.log(
                Level::Info,
                &format!("the reload to generation {generation} is abandoned: stopping"),
            );
        }
        // While the master holds a listener the kernel completes handshakes on it that no child
        // will take, and resets them when the master finally closes it: closed first, the
        // children's descriptors are the last, and each child takes its queue before closing
        // (http::server's close_listener), after which connecting is refused. The children keep
        // theirs open through a shutdown delay. Dropping a listener removes its socket file, when
        // it is this master's to remove.
        self.listeners.clear();
        if self.upgrade.is_some() {
            self.fail_upgrade_for_stop();
        }
        let delay = self.shutdown_delay(forced);
        let now = Instant::now();
        if delay.is_zero() {
            self.tell_children_to_stop(forced);
        } else {
            self.log.log(
                Level::Info,
                &format!(
                    "stopping: the children serve on for the {delay:?} shutdown delay, closing \
                     every connection after its response, then drain"
                ),
            );
            for fd in self.children().filter_map(|c| c.lifeline.as_ref()) {
                lifeline::announce_closing(fd.as_raw_fd());
            }
        }
        // After the children were told: a client that learns of the stop from systemd (a
        // balancer's health check, say) then finds them stopping.
        if !self.handed_over {
            // After an upgrade the service goes on, in the new master.
            self.tell_systemd("STOPPING=1");
        }
        let grace = if forced {
            Duration::ZERO
        } else {
            self.cfg.grace_period
        };
        self.state = State::Stopping {
            deadline: now + delay + grace,
            forced,
            drain_at: (!delay.is_zero()).then_some(now + delay),
            stops: control::stop_count(),
        };
    }

    /// The shutdown delay of this stop: the configured one for a graceful stop that was asked
    /// for. None after a binary upgrade (the new master serves the same sockets, a balancer
    /// sees no change) or a failure (the stop is the failure's consequence, not a plan).
    fn shutdown_delay(&self, forced: bool) -> Duration {
        if forced || self.handed_over || self.outcome.is_err() || self.live_pids().is_empty() {
            return Duration::ZERO;
        }
        self.cfg.shutdown_delay
    }

    /// The stop's SIGTERM (SIGKILL when `forced`) to every child, the graceful one announced on
    /// the lifelines.
    fn tell_children_to_stop(&mut self, forced: bool) {
        let live = self.live_pids();
        if live.is_empty() {
            return;
        }
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
            for fd in self.children().filter_map(|c| c.lifeline.as_ref()) {
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

    /// The shutdown delay is over (`early`: a second stop request cut it short): the children
    /// drain, within the grace period from now.
    fn end_shutdown_delay(&mut self, early: bool) {
        if early {
            self.log.log(
                Level::Info,
                "a second stop request: the rest of the shutdown delay is skipped",
            );
        }
        self.tell_children_to_stop(false);
        self.state = State::Stopping {
            deadline: Instant::now() + self.cfg.grace_period,
            forced: false,
            drain_at: None,
            stops: control::stop_count(),
        };
    }

    /// A second SIGINT during a graceful stop: SIGKILL now, without waiting for the grace
    /// period.
    fn force_stop(&mut self) {
        if let State::Stopping {
            deadline,
            forced: false,
            stops,
            ..
        } = self.state
        {
            self.state = State::Stopping {
                deadline,
                forced: true,
                drain_at: None,
                stops,
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
        for pid in stubborn {
            let _ = self.reap(pid, true);
        }
    }

    fn live_pids(&self) -> Vec<Pid> {
        self.children().map(|c| c.pid).collect()
    }
}

impl Drop for Master<'_> {
    /// The last line of defence (a panic inside the supervisor itself): no orphan, no zombie.
    fn drop(&mut self) {
        for pid in self.live_pids() {
            spawn::kill_and_reap(pid);
        }
        if let Some(u) = self.upgrade.take()
            && !self.upgrade_reaped
        {
            spawn::kill_and_reap(u.pid);
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
