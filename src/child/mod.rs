//! Child bootstrap: check and adopt the inherited descriptors, arm the master-death
//! detection, install signal handlers, run the handler's per-child init, report "listening"
//! to the master, serve (with the HTTP engine, or in serve mode with the application's own
//! server), and run the per-child exit.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::prctl::set_pdeathsig;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::Signal;
use nix::sys::socket::{MsgFlags, send};

use crate::config::Config;
use crate::control::{self, Role, SignalGuard};
use crate::error::{Error, ErrorKind, panic_message};
use crate::hooks::{Hooks, LIFELINE_FD, LISTENER_FD, LISTENERS_ENV};
use crate::http::{self, Handler, Listening, ServeControl};
use crate::lifeline::{self, READY_BYTE};
use crate::log::{Level, Logger};
use crate::shared::{Beat, Region};

mod serve;

pub use serve::{Ready, StopSignal, child_ready};
pub(crate) use serve::{Serve, serve};

/// What every child holds once it adopted the master's descriptors.
struct Adopted {
    listeners: Vec<Listening>,
    /// The child's end of the lifeline, open for the life of the process.
    lifeline: BorrowedFd<'static>,
    /// The read end of the process's stop pipe.
    wake: BorrowedFd<'static>,
    /// The library's signal handlers, when it installs them; dropping it restores the host's.
    _signals: Option<SignalGuard>,
    /// The TLS configuration the master sent, when the engine serves TLS.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// The heartbeat and counters in the memory the master shares, when it shares some.
    beat: Option<Beat>,
}

/// The bootstrap both modes share: check and take the inherited descriptors, arm the
/// master-death backup, take the shared memory, install the signal handlers, receive the TLS
/// material when `tls` (the engine's TLS entry points; serve mode has no TLS), and run the
/// handler's `init_child`.
///
/// The lifeline (fd 4, or the one after the listeners) carries the master's messages in a fixed order, each read exactly to its
/// end: first the 'H' frame with the shared memory (queued by the master before the child
/// starts; `adopt_shared_memory`), then the TLS message (written by the master right after
/// the spawn; `crate::tls::receive`). A stop byte or EOF after them is the lifeline
/// watcher's.
fn adopt(
    config: &Config,
    handler: &Arc<dyn Handler>,
    log: &dyn Logger,
    tls: bool,
) -> Result<Adopted, Error> {
    crate::confine::check_child(&config.process)?;
    let proxy = inherited_proxy_flags(config.http.proxy_protocol)?;
    let lifeline_fd = LISTENER_FD + proxy.len() as RawFd;
    for fd in LISTENER_FD..lifeline_fd {
        check_inherited(fd, libc::SO_ACCEPTCONN, 1, "a listening socket")?;
    }
    check_inherited(
        lifeline_fd,
        libc::SO_DOMAIN,
        libc::AF_UNIX,
        "the lifeline socket",
    )?;
    LIFELINE.store(lifeline_fd, Ordering::Relaxed);
    let listeners: Vec<Listening> = (LISTENER_FD..)
        .zip(proxy)
        .map(|(fd, proxy)| {
            // SAFETY: fd was just checked to be a listening socket; the master handed it to
            // this process to own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            Listening::new(fd, proxy)
        })
        .collect::<Result<_, _>>()?;
    // SAFETY: the lifeline was just checked to be a socket, and nothing in this process closes
    // it: it is the child's end of the lifeline for the life of the process.
    let lifeline = unsafe { BorrowedFd::borrow_raw(lifeline_fd) };
    // The descriptors arrived without close-on-exec; anything this child runs must not
    // inherit them (a grandchild holding the lifeline would hide the master's death).
    for fd in listeners.iter().map(|l| l.fd.as_fd()).chain([lifeline]) {
        let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
    crate::set_listener_addrs(listeners.iter().map(|l| (*l.addr).clone()).collect());
    let beat = adopt_shared_memory(log);
    // The lifeline's EOF is the prompt signal; PDEATHSIG is the backup should the lifeline be
    // lost. SIGTERM (not SIGKILL) so the backup also drains.
    let _ = set_pdeathsig(Signal::SIGTERM);
    raise_fd_limit();

    let wake = control::wake_fd().map_err(|e| Error::io(ErrorKind::Io, "create stop pipe", e))?;
    let signals = if config.process.handle_signals {
        Some(
            SignalGuard::install(Role::Child)
                .map_err(|e| Error::io(ErrorKind::Io, "install signal handlers", e))?,
        )
    } else {
        None
    };

    // Second on the lifeline, after the 'H' frame `adopt_shared_memory` took and ahead of any
    // stop byte: the master writes it right after the spawn.
    let tls = match tls {
        true => Some(crate::tls::receive(
            lifeline_fd,
            Instant::now() + config.process.startup_timeout,
        )?),
        false => None,
    };
    user_code("init_child", || {
        handler.init_child().map_err(|e| e.to_string())
    })?;
    Ok(Adopted {
        listeners,
        lifeline,
        wake,
        _signals: signals,
        tls,
        beat,
    })
}

/// Serves with the HTTP engine (over TLS when `tls`) until told to stop, then runs
/// `exit_child`.
pub(crate) fn run(
    config: &Config,
    hooks: &mut Hooks,
    handler: &Arc<dyn Handler>,
    log: &dyn Logger,
    tls: bool,
) -> Result<(), Error> {
    let Adopted {
        listeners,
        lifeline,
        wake,
        _signals,
        tls,
        beat,
    } = adopt(config, handler, log, tls)?;
    send_ready()?;

    let mut death_seen = false;
    let mut death_hook = hooks.on_master_death.as_deref_mut();
    let mut on_death = || {
        death_seen = true;
        if let Some(hook) = death_hook.as_mut() {
            hook();
        }
    };
    let ctl = ServeControl {
        wake_fd: wake.as_raw_fd(),
        lifeline_fd: Some(lifeline.as_raw_fd()),
        on_master_death: Some(&mut on_death),
        grace_period: config.process.grace_period,
        tls,
        beat: beat.as_ref(),
    };
    let served = http::serve(listeners, handler, &config.http, ctl, log);
    finish(lifeline, !death_seen, hooks, handler, log);
    served
}

/// The end both modes share, once serving is over. `unannounced_stop`: serving ended on a
/// stop request with no master-death event, which may be PDEATHSIG running ahead of the
/// lifeline's EOF (see the lifeline module); the master-death hook is owed in that case too.
fn finish(
    lifeline: BorrowedFd<'_>,
    unannounced_stop: bool,
    hooks: &mut Hooks,
    handler: &Arc<dyn Handler>,
    log: &dyn Logger,
) {
    if unannounced_stop && lifeline::master_gone_after_stop(lifeline, lifeline::PDEATH_SETTLE) {
        log.log(Level::Warn, "the master process is gone");
        if let Some(hook) = hooks.on_master_death.as_mut()
            && let Err(e) = user_code("on_master_death", || {
                hook();
                Ok(())
            })
        {
            log.log(Level::Error, e.message());
        }
    }
    // Serving is over: disarm the backup. The kernel sends PDEATHSIG after the master's
    // descriptors close, so it can land after the lifeline EOF was handled and the signal
    // handlers are restored, and would kill a child that is exiting cleanly (status -15).
    let _ = set_pdeathsig(None);
    if let Err(e) = user_code("exit_child", || {
        handler.exit_child();
        Ok(())
    }) {
        log.log(Level::Error, e.message());
    }
}

/// Fails with a message that points at the cause when `fd` is not what a master passes.
///
/// Raw libc: nix has no SO_DOMAIN option, and its getsockopt wants a BorrowedFd, which a
/// descriptor not yet known to be open cannot be.
fn check_inherited(
    fd: RawFd,
    option: libc::c_int,
    expected: libc::c_int,
    what: &str,
) -> Result<(), Error> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are valid out pointers of the right size; on a number that is not
    // open, getsockopt fails with EBADF and touches nothing.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 || value != expected {
        return Err(Error::new(
            ErrorKind::InvalidState,
            format!(
                "PREFORK_CHILD=1 is set but fd {fd} is not {what} ({}): this process must be \
                 started by a prefork master (or a command producer that passes the listeners \
                 at fds 3.., the lifeline right after them, and PREFORK_LISTENERS)",
                if r != 0 {
                    io::Error::last_os_error().to_string()
                } else {
                    "wrong kind of socket".into()
                }
            ),
        ));
    }
    Ok(())
}

/// Where this child's lifeline is: after its listeners (set by `adopt`).
static LIFELINE: AtomicI32 = AtomicI32::new(LIFELINE_FD);

fn lifeline_fd() -> RawFd {
    LIFELINE.load(Ordering::Relaxed)
}

/// The PROXY protocol setting of each listener the master passed, from `PREFORK_LISTENERS`;
/// without it (a command producer that does not set it) one listener with the handle's.
fn inherited_proxy_flags(handle: bool) -> Result<Vec<bool>, Error> {
    let Ok(words) = std::env::var(LISTENERS_ENV) else {
        return Ok(vec![handle]);
    };
    words
        .split(',')
        .map(|w| match w {
            "proxy" => Ok(true),
            "plain" => Ok(false),
            other => Err(Error::new(
                ErrorKind::InvalidState,
                format!("{LISTENERS_ENV}={words:?}: {other:?} is neither proxy nor plain"),
            )),
        })
        .collect()
}

/// Maps the memory the master shares (see `crate::shared`), from the hello it queued on the
/// lifeline; None without one (the child then serves without heartbeat and counters).
fn adopt_shared_memory(log: &dyn Logger) -> Option<Beat> {
    let hello = lifeline::take_hello(lifeline_fd())?;
    let region = Region::adopt(hello.region)
        .inspect_err(|e| log.log(Level::Warn, &format!("cannot map the shared memory: {e}")))
        .ok()?;
    let period = (hello.period_ms > 0).then(|| Duration::from_millis(hello.period_ms.into()));
    let region = std::sync::Arc::new(region);
    // The master's figures are in it too: the stats calls read them in a child as well.
    crate::shared::publish(Some(region.clone()));
    Beat::new(region, hello.cell as usize, period)
}

pub(crate) fn send_ready() -> Result<(), Error> {
    // MSG_NOSIGNAL keeps a dead master from raising SIGPIPE. A one-byte send on a stream
    // socket either sends the byte or fails.
    send(lifeline_fd(), &[READY_BYTE], MsgFlags::MSG_NOSIGNAL)
        .map(drop)
        .map_err(|e| {
            Error::io(
                ErrorKind::Io,
                "report ready to the master",
                io::Error::from(e),
            )
        })
}

/// Lifts the soft RLIMIT_NOFILE to the hard limit, as the Go runtime does: a server that
/// keeps thousands of connections must not stop at the historical 1024.
fn raise_fd_limit() {
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Runs handler code that is not a request: an error or a panic becomes an `Error`.
pub(crate) fn user_code(name: &str, f: impl FnOnce() -> Result<(), String>) -> Result<(), Error> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::new(
            ErrorKind::Hook,
            format!("handler {name} failed: {e}"),
        )),
        Err(p) => Err(Error::new(
            ErrorKind::Hook,
            format!("handler {name} panicked: {}", panic_message(&*p)),
        )),
    }
}
