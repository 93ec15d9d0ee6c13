//! # libprefork
//!
//! A preforking HTTP/1.1 server engine. The master process binds the listening socket(s),
//! re-executes the current program once per core with the listener at fd 3, supervises the
//! children (readiness, respawn within a recover threshold, graceful shutdown) and the
//! children serve HTTP/1.1 with an edge-triggered mio loop, calling the application's
//! [`Handler`].
//!
//! The same program runs as master and as child: call [`Prefork::listen_and_serve`] early in
//! `main`; in the master it supervises until stopped, in a child it serves until stopped.
//!
//! ```no_run
//! use prefork::{Handler, Prefork, Request, Response};
//!
//! struct Hello;
//! impl Handler for Hello {
//!     fn handle(&self, _req: &Request<'_>, resp: &mut Response) {
//!         resp.write(b"Hello, World!");
//!     }
//! }
//!
//! fn main() -> Result<(), prefork::Error> {
//!     Prefork::new(Hello).listen_and_serve("127.0.0.1:8080")
//! }
//! ```
//!
//! Serve mode runs the application's own server in the children instead of the HTTP engine,
//! with the same supervisor around it (fasthttp prefork's `ServeFunc`):
//!
//! ```no_run
//! use std::io::Write;
//! use std::os::fd::AsRawFd;
//!
//! fn main() -> Result<(), prefork::Error> {
//!     let mut server = prefork::Prefork::with_serve(prefork::Ready::OnStart, |listener, stop| {
//!         listener.set_nonblocking(true).unwrap();
//!         while !stop.is_set() {
//!             // A real server polls the listener and stop.as_raw_fd() together.
//!             match listener.accept() {
//!                 Ok((mut conn, _)) => drop(conn.write_all(b"hello\n")),
//!                 Err(_) => drop(stop.wait_timeout(std::time::Duration::from_millis(10))),
//!             }
//!         }
//!         0
//!     });
//!     server.listen_and_serve("127.0.0.1:7000")
//! }
//! ```
//!
//! The C ABI (`include/prefork.h`) is a thin layer over this API.

mod child;
pub mod config;
mod confine;
mod control;
mod error;
pub mod ffi;
mod hooks;
pub mod http;
mod lifeline;
mod log;
mod master;
mod notify;
mod shared;
mod stats;

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

pub use child::{Ready, StopSignal, child_ready};
pub use config::{Cidr, Config, HttpConfig, Network, ProcessConfig};
pub use control::{reload, scale_children, set_children_live, shutdown, upgrade};
pub use error::{Error, ErrorKind, HookError};
pub use hooks::{
    CHILD_ENV, ChildExit, HookResult, Hooks, LIFELINE_FD, LISTENER_FD, Pid, SpawnRequest,
};
pub use http::{Deferred, Handler, Header, Hijacked, ProxyHeader, Request, Response};
pub use log::{Level, Logger, StderrLogger};
pub use stats::{ChildState, ChildStats, MasterStats, Stats, stats};

/// True when this process was started by a prefork master (`PREFORK_CHILD=1`).
pub fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some_and(|v| v == "1")
}

static LOCAL_ADDR: Mutex<Option<SocketAddr>> = Mutex::new(None);

/// The address this process serves on while `listen_and_serve` runs: in the master from the
/// bind on (so hooks can learn the port the OS chose for port 0), in a child from its start.
/// `None` before and after.
pub fn local_addr() -> Option<SocketAddr> {
    *LOCAL_ADDR.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn set_local_addr(addr: Option<SocketAddr>) {
    *LOCAL_ADDR.lock().unwrap_or_else(|e| e.into_inner()) = addr;
}

/// A preforking server: configuration, hooks, logger and the handler. Serves once.
pub struct Prefork {
    config: Config,
    hooks: Hooks,
    handler: Arc<dyn Handler>,
    logger: Arc<dyn Logger>,
    serve: Option<child::Serve>,
    served: bool,
}

/// The handler of a server that only serves in serve mode: the engine never runs, so it is
/// never called.
struct NoHandler;

impl Handler for NoHandler {
    fn handle(&self, _: &Request<'_>, resp: &mut Response) {
        let _ = resp.set_status(500);
    }
}

impl Prefork {
    pub fn new(handler: impl Handler) -> Prefork {
        Prefork::from_arc(Arc::new(handler))
    }

    pub fn from_arc(handler: Arc<dyn Handler>) -> Prefork {
        Prefork {
            config: Config::default(),
            hooks: Hooks::default(),
            handler,
            logger: Arc::new(StderrLogger),
            serve: None,
            served: false,
        }
    }

    /// A server in serve mode (see [`Prefork::set_serve`]) with no `init_child` or
    /// `exit_child`.
    pub fn with_serve(
        ready: Ready,
        serve: impl FnOnce(TcpListener, &StopSignal) -> i32 + Send + 'static,
    ) -> Prefork {
        let mut server = Prefork::new(NoHandler);
        server.set_serve(ready, serve);
        server
    }

    /// Serve mode: each child calls `serve` instead of the HTTP engine, with the listener
    /// inherited from the master (its to own) and its [`StopSignal`], after the handler's
    /// `init_child`. The child reports ready as `ready` says. `serve` must return soon after
    /// the stop signal is set (the master's grace period runs from its SIGTERM, then it kills
    /// the child); a return before it counts as the child's exit, which the master replaces
    /// like a crash. When `serve` returns, the child runs the handler's `exit_child` and exits
    /// the process with `serve`'s value as its status (0 to 255; anything else is 1; a panic
    /// is 101), which the master's `on_child_exit` hook sees: in a serve-mode child,
    /// `listen_and_serve` only returns on a failure before `serve` was called.
    ///
    /// The master's side does not change: binding, readiness, respawn, the recover policy,
    /// graceful stop, master-death detection and every hook work as with the engine. The HTTP
    /// options (`config().http`) do not apply. Replaces an earlier `set_serve`.
    pub fn set_serve(
        &mut self,
        ready: Ready,
        serve: impl FnOnce(TcpListener, &StopSignal) -> i32 + Send + 'static,
    ) {
        self.serve = Some(child::Serve {
            ready,
            run: Box::new(serve),
        });
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    pub fn hooks_mut(&mut self) -> &mut Hooks {
        &mut self.hooks
    }

    pub fn set_logger(&mut self, logger: Arc<dyn Logger>) {
        self.logger = logger;
    }

    /// In the master: binds `addr` (`host:port`; an empty host means all interfaces), starts
    /// the children and supervises them until SIGTERM/SIGINT or [`shutdown`], then stops them
    /// gracefully and returns `Ok(())`. In a child: serves the inherited listener until told to
    /// stop, drains, and returns `Ok(())`; in serve mode it calls the serve function instead
    /// and exits the process when that returns (see [`Prefork::set_serve`]).
    ///
    /// A `Prefork` serves once; a second call is an `InvalidState` error.
    pub fn listen_and_serve(&mut self, addr: &str) -> Result<(), Error> {
        if self.served {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "listen_and_serve was already called on this server; create a new one",
            ));
        }
        self.config.validate()?;
        self.served = true;
        let result = if is_child() {
            match self.serve.take() {
                Some(serve) => child::serve(
                    &self.config,
                    &mut self.hooks,
                    &self.handler,
                    serve,
                    &*self.logger,
                )
                .map(|never| match never {}),
                None => child::run(&self.config, &mut self.hooks, &self.handler, &*self.logger),
            }
        } else {
            master::run(addr, &self.config, &mut self.hooks, &*self.logger)
        };
        control::reset();
        set_local_addr(None);
        shared::publish(None);
        result
    }
}
