//! Serve mode: the child hands its listener to the application's own server (a C event loop,
//! a Go `net/http` server) instead of the HTTP engine, the way fasthttp prefork's `ServeFunc`
//! does. Everything around it stays the library's: readiness, the lifeline, signals, the
//! per-child init and exit.
//!
//! Every reason to stop (the master's SIGTERM, `shutdown()`, the master's death) reaches the
//! application as one descriptor that becomes readable, because that is what any event loop
//! can wait on. A watcher thread turns the library's own sources (the stop pipe, the lifeline)
//! into it: the application runs on the serving thread and cannot be asked to poll them.

use std::convert::Infallible;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::{Adopted, adopt, finish, send_ready};
use crate::config::Config;
use crate::control;
use crate::error::{Error, ErrorKind, panic_message};
use crate::hooks::Hooks;
use crate::http::Handler;
use crate::lifeline;
use crate::log::{Level, Logger};

/// When a serve-mode child tells the master it is ready (the master's `on_master_ready` waits
/// for every child, and the startup timeout runs until then).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ready {
    /// Just before the serve function is called: the listener was bound by the master and
    /// queues connections already, so a server that accepts as soon as it runs needs nothing
    /// more.
    #[default]
    OnStart,
    /// When the serve function calls [`child_ready`]: for a server that must set itself up
    /// (load data, start threads) before its first connection. A serve function that returns
    /// without calling it is a child that failed to start.
    Explicit,
}

/// The application's server: called once in each child with the listener (its to own and
/// close) and the child's stop signal; returns the child's exit status (see [`exit_status`]).
pub(crate) type ServeFn = dyn FnOnce(TcpListener, &StopSignal) -> i32 + Send;

/// Serve mode as configured on a `Prefork`.
pub(crate) struct Serve {
    pub(crate) ready: Ready,
    pub(crate) run: Box<ServeFn>,
}

/// A serve-mode child's stop signal: its descriptor becomes readable, once and for good, when
/// the child must stop (SIGTERM from the master, the master's death, [`crate::shutdown`]).
///
/// Poll it (POLLIN; it also reports POLLHUP) beside the server's own descriptors; do not read
/// or close it. It is valid until the serve function returns.
#[derive(Debug)]
pub struct StopSignal {
    read: OwnedFd,
}

impl StopSignal {
    /// True once the child must stop.
    pub fn is_set(&self) -> bool {
        self.wait_timeout(Duration::ZERO)
    }

    /// Blocks until the child must stop.
    pub fn wait(&self) {
        while !self.wait_for(PollTimeout::NONE) {}
    }

    /// Blocks until the child must stop or `timeout` has passed; true when it must stop.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
                .unwrap_or(PollTimeout::MAX);
            if self.wait_for(ms) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }

    fn wait_for(&self, timeout: PollTimeout) -> bool {
        let mut fds = [PollFd::new(self.read.as_fd(), PollFlags::POLLIN)];
        matches!(nix::poll::poll(&mut fds, timeout), Ok(n) if n > 0)
    }
}

impl AsFd for StopSignal {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

impl AsRawFd for StopSignal {
    fn as_raw_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}

/// The write end of a stop signal: firing it makes the read end readable for good (a byte
/// for POLLIN, then the close for EOF and POLLHUP, so even a reader that took the byte sees it).
struct Trigger(Option<OwnedFd>);

impl Trigger {
    fn fire(&mut self) {
        if let Some(fd) = self.0.take() {
            let _ = nix::unistd::write(&fd, b"S");
        }
    }
}

fn stop_signal() -> Result<(StopSignal, Trigger), Error> {
    let (read, write) = pipe("create the stop descriptor")?;
    Ok((StopSignal { read }, Trigger(Some(write))))
}

fn pipe(what: &str) -> Result<(OwnedFd, OwnedFd), Error> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| Error::io(ErrorKind::Io, what, e.into()))
}

/// Whether `child_ready` may report: no serve function runs, one awaits its call, or the child
/// already reported.
static READINESS: AtomicU8 = AtomicU8::new(NOT_SERVING);
const NOT_SERVING: u8 = 0;
const AWAITED: u8 = 1;
const REPORTED: u8 = 2;

/// Reports this serve-mode child ready to its master, for a serve function set up with
/// [`Ready::Explicit`]; any thread of the child may call it while the serve function runs.
/// Reporting twice, or under [`Ready::OnStart`], does nothing. Fails with `InvalidState`
/// when no serve function is running in this process, and with `Io` when the master is gone.
pub fn child_ready() -> Result<(), Error> {
    match READINESS.compare_exchange(AWAITED, REPORTED, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => send_ready(),
        Err(REPORTED) => Ok(()),
        Err(_) => Err(Error::new(
            ErrorKind::InvalidState,
            "no serve function is running in this process (child_ready is for a serve-mode \
             child, while its serve function runs)",
        )),
    }
}

/// The exit status of a child whose serve function returned `ret`: 0 to 255 as they are (0 is
/// a clean stop), anything else 1, since exit(3) keeps only the low 8 bits and -1 would read
/// as 255.
pub(crate) fn exit_status(ret: i32) -> i32 {
    if (0..=255).contains(&ret) { ret } else { 1 }
}

/// Serve mode hands the application one TCP listener (`lib.rs` refuses other listeners).
fn one_tcp_listener(listeners: Vec<crate::http::Listening>) -> Result<TcpListener, Error> {
    match <[_; 1]>::try_from(listeners) {
        Ok([l]) if !l.addr.is_unix() => Ok(TcpListener::from(l.fd)),
        _ => Err(Error::new(
            ErrorKind::InvalidState,
            "serve mode serves one TCP listener; this child got others",
        )),
    }
}

/// The status of a serve function that panicked: Rust's own for a panicking `main`.
const PANIC_STATUS: i32 = 101;

/// Runs a serve-mode child: the shared bootstrap, then the serve function with the listener
/// and the stop signal, then `exit_child`, and exits the process with the serve function's
/// status. Returns only when something fails before the serve function is called.
pub(crate) fn serve(
    config: &Config,
    hooks: &mut Hooks,
    handler: &Arc<dyn Handler>,
    serve: Serve,
    log: &dyn Logger,
) -> Result<Infallible, Error> {
    // No heartbeat: the serve function's own loop cannot beat, so the watchdog leaves a
    // serve-mode child alone (it never beats; see master::watchdog).
    let Adopted {
        listeners,
        lifeline,
        wake,
        _signals,
        tls: _,
        beat: _,
    } = adopt(config, handler, log, false)?;
    let listener = one_tcp_listener(listeners)?;
    let (stop, trigger) = stop_signal()?;
    let (quit, quit_trigger) = pipe("create the stop watcher's pipe")?;
    match serve.ready {
        Ready::OnStart => {
            send_ready()?;
            READINESS.store(REPORTED, Ordering::Release);
        }
        Ready::Explicit => READINESS.store(AWAITED, Ordering::Release),
    }

    let (status, seen) = std::thread::scope(|scope| {
        let watcher = Watcher {
            wake,
            lifeline: Some(lifeline),
            quit,
            trigger,
            on_master_death: hooks.on_master_death.as_mut(),
            log,
        };
        let watching = std::thread::Builder::new()
            .name("prefork-stop".into())
            .spawn_scoped(scope, move || watcher.run())
            .map_err(|e| Error::io(ErrorKind::Io, "start the stop watcher thread", e));
        let watching = match watching {
            Ok(w) => w,
            Err(e) => {
                READINESS.store(NOT_SERVING, Ordering::Release);
                return Err(e);
            }
        };
        let status = call(serve.run, listener, &stop, log);
        READINESS.store(NOT_SERVING, Ordering::Release);
        drop(quit_trigger);
        let seen = watching.join().unwrap_or_default();
        Ok((status, seen))
    })?;
    drop(stop);
    finish(
        lifeline,
        seen.stop_requested && !seen.master_death,
        hooks,
        handler,
        log,
    );
    log.log(
        Level::Debug,
        &format!("the serve function returned {status}; exiting"),
    );
    std::process::exit(exit_status(status))
}

fn call(run: Box<ServeFn>, listener: TcpListener, stop: &StopSignal, log: &dyn Logger) -> i32 {
    match catch_unwind(AssertUnwindSafe(|| run(listener, stop))) {
        Ok(status) => status,
        Err(p) => {
            log.log(
                Level::Error,
                &format!("the serve function panicked: {}", panic_message(&*p)),
            );
            PANIC_STATUS
        }
    }
}

/// What the watcher saw while the serve function ran.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    /// A stop request (a signal or `shutdown()`) came through the stop pipe.
    stop_requested: bool,
    /// The lifeline reported the master's death (and the hook ran).
    master_death: bool,
}

/// The thread that turns the library's stop sources into the application's stop signal.
struct Watcher<'a> {
    wake: BorrowedFd<'a>,
    lifeline: Option<BorrowedFd<'a>>,
    /// Readable (EOF) when the serve function returned and the watcher must end.
    quit: OwnedFd,
    trigger: Trigger,
    on_master_death: Option<&'a mut MasterDeathHook>,
    log: &'a dyn Logger,
}

type MasterDeathHook = Box<dyn FnMut() + Send>;

impl Watcher<'_> {
    fn run(mut self) -> Seen {
        let mut seen = Seen::default();
        // A request made while the child was starting is in the flag, maybe not in the pipe.
        if control::stop_requested() {
            seen.stop_requested = true;
            self.trigger.fire();
        }
        loop {
            let (quit, wake, death) = self.poll();
            if quit {
                return seen;
            }
            if wake && control::drain(self.wake).is_some() {
                seen.stop_requested = true;
                self.trigger.fire();
            }
            if death {
                control::master_gone();
                seen.master_death = true;
                self.on_master_death();
                self.trigger.fire();
            }
        }
    }

    /// Waits for an event: (the watcher must end, a stop request may be pending, the master
    /// is gone).
    fn poll(&mut self) -> (bool, bool, bool) {
        let mut fds = vec![
            PollFd::new(self.quit.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.wake, PollFlags::POLLIN),
        ];
        if let Some(fd) = self.lifeline {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => return (false, false, false),
            // Nothing to wait on can fail but a broken descriptor: stop watching, so the
            // application is told to stop rather than left without a signal.
            Err(e) => {
                self.log.log(
                    Level::Error,
                    &format!("the stop watcher cannot poll ({e}); stopping the child"),
                );
                self.trigger.fire();
                return (true, false, false);
            }
        }
        let fired = |fd: &PollFd<'_>| fd.any().unwrap_or(true);
        let quit = fired(&fds[0]);
        let wake = fired(&fds[1]);
        let lifeline_event = fds.get(2).is_some_and(fired);
        drop(fds);
        let death = lifeline_event
            && self
                .lifeline
                .is_some_and(|fd| lifeline::read(fd.as_raw_fd()) == lifeline::State::Gone);
        if death {
            self.lifeline = None;
        }
        (quit, wake, death)
    }

    fn on_master_death(&mut self) {
        self.log
            .log(Level::Warn, "the master process is gone; stopping");
        if let Some(hook) = self.on_master_death.take()
            && let Err(p) = catch_unwind(AssertUnwindSafe(hook))
        {
            self.log.log(
                Level::Error,
                &format!("the master-death hook panicked: {}", panic_message(&*p)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);

    impl Logger for Lines {
        fn log(&self, _: Level, message: &str) {
            self.0.lock().unwrap().push(message.to_string());
        }
    }

    /// A watcher over test-owned descriptors: (stop pipe's write end, the master's lifeline
    /// end, what ends the watcher, the stop signal, the watcher's thread).
    struct Rig {
        wake_write: OwnedFd,
        master_end: Option<UnixStream>,
        quit: Option<OwnedFd>,
        stop: StopSignal,
    }

    fn rig(
        death_hook: &'static (dyn Fn() + Sync),
    ) -> (Rig, std::thread::JoinHandle<Seen>, &'static Lines) {
        let (wake_read, wake_write) = pipe("test wake").unwrap();
        let (child_end, master_end) = UnixStream::pair().unwrap();
        let (quit_read, quit_write) = pipe("test quit").unwrap();
        let (stop, trigger) = stop_signal().unwrap();
        let log: &'static Lines = Box::leak(Box::default());
        let thread = std::thread::spawn(move || {
            let mut hook: MasterDeathHook = Box::new(death_hook);
            let watcher = Watcher {
                wake: wake_read.as_fd(),
                lifeline: Some(child_end.as_fd()),
                quit: quit_read,
                trigger,
                on_master_death: Some(&mut hook),
                log,
            };
            watcher.run()
        });
        let rig = Rig {
            wake_write,
            master_end: Some(master_end),
            quit: Some(quit_write),
            stop,
        };
        (rig, thread, log)
    }

    fn quit(mut rig: Rig, thread: std::thread::JoinHandle<Seen>) -> (Seen, StopSignal) {
        rig.quit.take();
        (thread.join().unwrap(), rig.stop)
    }

    #[test]
    fn a_stop_request_makes_the_signal_readable_for_good() {
        let (rig, thread, _) = rig(&|| panic!("no master death here"));
        assert!(!rig.stop.wait_timeout(Duration::from_millis(50)));
        nix::unistd::write(&rig.wake_write, &[control::WAKE_STOP]).unwrap();
        assert!(rig.stop.wait_timeout(Duration::from_secs(5)));
        // A reader that took the byte still sees the end of the pipe (the close follows the
        // byte at once).
        let mut buf = [0u8; 8];
        assert_eq!(nix::unistd::read(rig.stop.as_fd(), &mut buf), Ok(1));
        assert!(rig.stop.wait_timeout(Duration::from_secs(5)));
        assert_eq!(nix::unistd::read(rig.stop.as_fd(), &mut buf), Ok(0));
        let (seen, stop) = quit(rig, thread);
        assert_eq!(
            seen,
            Seen {
                stop_requested: true,
                master_death: false
            }
        );
        assert!(stop.is_set());
    }

    #[test]
    fn the_masters_death_runs_the_hook_then_signals() {
        static DEATHS: AtomicU8 = AtomicU8::new(0);
        let (mut rig, thread, log) = rig(&|| {
            DEATHS.fetch_add(1, Ordering::SeqCst);
        });
        // The master's stop announcement alone is no death.
        let master_end = rig.master_end.as_ref().unwrap().as_raw_fd();
        lifeline::announce_stop(master_end);
        assert!(!rig.stop.wait_timeout(Duration::from_millis(50)));
        rig.master_end.take();
        assert!(rig.stop.wait_timeout(Duration::from_secs(5)));
        let (seen, _) = quit(rig, thread);
        assert_eq!(
            seen,
            Seen {
                stop_requested: false,
                master_death: true
            }
        );
        assert_eq!(DEATHS.load(Ordering::SeqCst), 1);
        assert!(
            log.0
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("master process is gone")),
            "{:?}",
            log.0.lock().unwrap()
        );
    }

    #[test]
    fn the_watcher_ends_when_serving_ends_without_a_stop() {
        let (rig, thread, _) = rig(&|| panic!("no master death here"));
        assert!(!rig.stop.is_set());
        let (seen, _) = quit(rig, thread);
        assert_eq!(seen, Seen::default());
    }

    #[test]
    fn exit_statuses_keep_what_exit_can_carry() {
        for (ret, status) in [(0, 0), (3, 3), (255, 255), (256, 1), (-1, 1), (i32::MIN, 1)] {
            assert_eq!(exit_status(ret), status, "{ret}");
        }
    }

    #[test]
    fn child_ready_outside_a_serve_function_is_a_state_error() {
        let err = child_ready().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidState);
    }
}
