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
//! The C ABI (`include/prefork.h`) is a thin layer over this API.

mod child;
pub mod config;
mod control;
mod error;
pub mod ffi;
mod hooks;
pub mod http;
mod lifeline;
mod log;
mod master;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub use config::{Config, HttpConfig, Network, ProcessConfig};
pub use control::shutdown;
pub use error::{Error, ErrorKind, HookError};
pub use hooks::{
    CHILD_ENV, ChildExit, HookResult, Hooks, LIFELINE_FD, LISTENER_FD, Pid, SpawnRequest,
};
pub use http::{Deferred, Handler, Header, Hijacked, Request, Response};
pub use log::{Level, Logger, StderrLogger};

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
    served: bool,
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
            served: false,
        }
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
    /// stop, drains, and returns `Ok(())`.
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
            child::run(&self.config, &mut self.hooks, &self.handler, &*self.logger)
        } else {
            master::run(addr, &self.config, &mut self.hooks, &*self.logger)
        };
        control::reset();
        set_local_addr(None);
        result
    }
}
