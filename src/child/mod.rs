//! Child bootstrap: check and adopt the inherited descriptors, arm the master-death
//! detection, install signal handlers, run the handler's per-child init, report "listening"
//! to the master, serve, and run the per-child exit.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::prctl::set_pdeathsig;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::Signal;
use nix::sys::socket::{MsgFlags, send};

use crate::config::Config;
use crate::control::{self, Role, SignalGuard};
use crate::error::{Error, ErrorKind, panic_message};
use crate::hooks::{Hooks, LIFELINE_FD, LISTENER_FD};
use crate::http::{self, Handler, ServeControl};
use crate::lifeline::{self, READY_BYTE};
use crate::log::{Level, Logger};

pub(crate) fn run(
    config: &Config,
    hooks: &mut Hooks,
    handler: &Arc<dyn Handler>,
    log: &dyn Logger,
    tls: bool,
) -> Result<(), Error> {
    check_inherited(LISTENER_FD, libc::SO_ACCEPTCONN, 1, "the listening socket")?;
    check_inherited(
        LIFELINE_FD,
        libc::SO_DOMAIN,
        libc::AF_UNIX,
        "the lifeline socket",
    )?;
    // SAFETY: fd 3 was just checked to be a listening socket; the master handed it to this
    // process to own.
    let listener = unsafe { TcpListener::from_raw_fd(LISTENER_FD) };
    // SAFETY: fd 4 was just checked to be a socket, and nothing in this process closes it: it
    // is the child's end of the lifeline for the life of the process.
    let lifeline_fd = unsafe { BorrowedFd::borrow_raw(LIFELINE_FD) };
    // The descriptors arrived without close-on-exec; anything this child runs must not
    // inherit them (a grandchild holding the lifeline would hide the master's death).
    for fd in [listener.as_fd(), lifeline_fd] {
        let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
    crate::set_local_addr(listener.local_addr().ok());
    // The lifeline's EOF is the prompt signal; PDEATHSIG is the backup should the lifeline be
    // lost. SIGTERM (not SIGKILL) so the backup also drains.
    let _ = set_pdeathsig(Signal::SIGTERM);
    raise_fd_limit();

    let wake_fd =
        control::wake_fd().map_err(|e| Error::io(ErrorKind::Io, "create stop pipe", e))?;
    let _signals = if config.process.handle_signals {
        Some(
            SignalGuard::install(Role::Child)
                .map_err(|e| Error::io(ErrorKind::Io, "install signal handlers", e))?,
        )
    } else {
        None
    };

    // First on the lifeline, ahead of any stop byte: the master writes it right after the spawn.
    let tls = match tls {
        true => Some(crate::tls::receive(
            LIFELINE_FD,
            Instant::now() + config.process.startup_timeout,
        )?),
        false => None,
    };
    user_code("init_child", || {
        handler.init_child().map_err(|e| e.to_string())
    })?;
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
        wake_fd: wake_fd.as_raw_fd(),
        lifeline_fd: Some(LIFELINE_FD),
        on_master_death: Some(&mut on_death),
        grace_period: config.process.grace_period,
        tls,
    };
    let served = http::serve(listener, handler, &config.http, ctl, log);
    // A stop the master did not announce may be PDEATHSIG running ahead of the lifeline's EOF
    // (see the lifeline module): the master-death hook is owed in that case too.
    if !death_seen && lifeline::master_gone_after_stop(lifeline_fd, lifeline::PDEATH_SETTLE) {
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
    served
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
                 started by a prefork master (or a command producer that passes the listener at \
                 fd 3 and the lifeline at fd 4)",
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

fn send_ready() -> Result<(), Error> {
    // MSG_NOSIGNAL keeps a dead master from raising SIGPIPE. A one-byte send on a stream
    // socket either sends the byte or fails.
    send(LIFELINE_FD, &[READY_BYTE], MsgFlags::MSG_NOSIGNAL)
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
fn user_code(name: &str, f: impl FnOnce() -> Result<(), String>) -> Result<(), Error> {
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
