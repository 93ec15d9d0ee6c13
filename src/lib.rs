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
pub mod listen;
mod log;
mod master;
mod notify;
mod shared;
mod stats;
mod tls;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};

pub use child::{Ready, StopSignal, child_ready};
pub use config::{Cidr, Config, HttpConfig, Network, ProcessConfig};
pub use control::{reload, scale_children, set_children_live, shutdown, stopping, upgrade};
pub use error::{Error, ErrorKind, HookError};
pub use hooks::{
    CHILD_ENV, ChildExit, HookResult, Hooks, LIFELINE_FD, LISTENER_FD, Pid, SpawnRequest,
};
pub use http::{Deferred, Handler, Header, Hijacked, MAX_BATCH, ProxyHeader, Request, Response};
pub use listen::{ListenAddr, ListenerOptions, ListenerSpec};
pub use log::{Level, Logger, StderrLogger};
pub use stats::{ChildState, ChildStats, MasterStats, Stats, stats};

/// True when this process was started by a prefork master (`PREFORK_CHILD=1`).
pub fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some_and(|v| v == "1")
}

static LISTEN_ADDRS: Mutex<Vec<ListenAddr>> = Mutex::new(Vec::new());

/// The addresses this process serves on while `listen_and_serve` runs, in the order of the
/// listeners (the address given to `listen_and_serve` first, then those added, a `systemd`
/// listener standing for every socket systemd passed): in the master from the bind on (so
/// hooks can learn the ports the OS chose for port 0), in a child from its start. Empty before
/// and after.
pub fn listener_addrs() -> Vec<ListenAddr> {
    LISTEN_ADDRS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// The first TCP address of [`listener_addrs`]: for a server with one TCP listener, the
/// address it serves on. `None` before and after serving, and for a server with Unix
/// listeners only.
pub fn local_addr() -> Option<SocketAddr> {
    let addrs = LISTEN_ADDRS.lock().unwrap_or_else(|e| e.into_inner());
    addrs.iter().find_map(|a| match a {
        ListenAddr::Tcp(a) => Some(*a),
        _ => None,
    })
}

pub(crate) fn set_listener_addrs(addrs: Vec<ListenAddr>) {
    *LISTEN_ADDRS.lock().unwrap_or_else(|e| e.into_inner()) = addrs;
}

/// A preforking server: configuration, hooks, logger and the handler. Serves once.
pub struct Prefork {
    config: Config,
    hooks: Hooks,
    handler: Arc<dyn Handler>,
    logger: Arc<dyn Logger>,
    /// Certificates for the TLS entry points, the default first.
    tls: Vec<tls::CertSource>,
    serve: Option<child::Serve>,
    /// The listeners of `add_listener`, after `listen_and_serve`'s address.
    listeners: Vec<ListenerSpec>,
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
            tls: Vec::new(),
            serve: None,
            listeners: Vec::new(),
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
    /// options (`config().http`) do not apply, nor does TLS: the TLS entry points refuse a
    /// server in serve mode. Replaces an earlier `set_serve`.
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

    /// Adds a listener, served by every child with the address given to `listen_and_serve`
    /// (which comes first; it may then be empty) and the listeners added before: TCP
    /// `host:port` (`[::1]:8080` for IPv6; resolved for `ProcessConfig::network`), a Unix
    /// socket file `unix:/path` (a stale file from a crashed run, one nobody answers on, is
    /// replaced; one that answers is an error; this master removes the file when it stops), an
    /// abstract Unix socket `unix:@name`, or `systemd`, every socket systemd passed (socket
    /// activation: `LISTEN_FDS` and `LISTEN_PID`; an error when they are not this process's;
    /// without a `systemd` listener, a passed socket serves the listener of its address
    /// instead of a bind).
    /// Checked at once for its form; bound when serving starts. Reuseport mode binds a TCP
    /// listener once per child slot; Unix sockets and systemd's are shared by every child.
    pub fn add_listener(&mut self, addr: &str, options: ListenerOptions) -> Result<(), Error> {
        let spec = ListenerSpec {
            addr: addr.to_string(),
            options,
        };
        spec.check()?;
        self.listeners.push(spec);
        Ok(())
    }

    /// In the master: binds `addr` (`host:port`; an empty host means all interfaces), starts
    /// the children and supervises them until SIGTERM/SIGINT or [`shutdown`], then stops them
    /// gracefully and returns `Ok(())`. In a child: serves the inherited listener until told to
    /// stop, drains, and returns `Ok(())`; in serve mode it calls the serve function instead
    /// and exits the process when that returns (see [`Prefork::set_serve`]).
    ///
    /// A `Prefork` serves once; a second call is an `InvalidState` error.
    pub fn listen_and_serve(&mut self, addr: &str) -> Result<(), Error> {
        self.start(addr, None)
    }

    /// As [`listen_and_serve`](Self::listen_and_serve), over TLS (1.3 and 1.2, ALPN
    /// `http/1.1`) with the certificate chain in the PEM file `cert_file` (end entity first)
    /// and its private key in `key_file` (PKCS#8, PKCS#1 or SEC1; RSA or ECDSA; unencrypted).
    /// Note the order: certificate, then key (fasthttp's Go `ListenAndServeTLS` takes the key
    /// first; the Go binding keeps that order).
    ///
    /// This certificate is the default; those of [`add_tls_cert`](Self::add_tls_cert) are
    /// chosen by the client's server name (SNI). The master reads and checks every file
    /// before it binds: an unreadable file, no certificate, no key, an encrypted key or a key
    /// that does not match is an [`ErrorKind::Tls`] error naming the file, and no child starts;
    /// an expired certificate is logged as a warning. Children get the certificates, keys and
    /// session-ticket secret from the master over their lifeline and never open the files
    /// (in a child, the paths are not used).
    ///
    /// Serve mode ([`set_serve`](Self::set_serve)) has no TLS: on a server in serve mode this
    /// is an [`ErrorKind::InvalidState`] error and nothing starts.
    pub fn listen_and_serve_tls(
        &mut self,
        addr: &str,
        cert_file: impl AsRef<Path>,
        key_file: impl AsRef<Path>,
    ) -> Result<(), Error> {
        let default = tls::CertSource::Files {
            cert: cert_file.as_ref().to_path_buf(),
            key: key_file.as_ref().to_path_buf(),
        };
        self.start(addr, Some(default))
    }

    /// As [`listen_and_serve_tls`](Self::listen_and_serve_tls) with the PEM text of the chain
    /// and of the key in memory (fasthttp's `ListenAndServeTLSEmbed`).
    pub fn listen_and_serve_tls_pem(
        &mut self,
        addr: &str,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<(), Error> {
        let default = tls::CertSource::Pem {
            cert: cert_pem.to_vec(),
            key: key_pem.to_vec(),
        };
        self.start(addr, Some(default))
    }

    /// Adds a certificate chain and key (PEM files) that the TLS entry points serve to clients
    /// asking for one of its DNS names (subjectAltName; `*.example.com` matches one label), as
    /// fasthttp's `AppendCert`. Checked when serving starts; unused by `listen_and_serve`.
    pub fn add_tls_cert(&mut self, cert_file: impl AsRef<Path>, key_file: impl AsRef<Path>) {
        self.tls.push(tls::CertSource::Files {
            cert: cert_file.as_ref().to_path_buf(),
            key: key_file.as_ref().to_path_buf(),
        });
    }

    /// [`add_tls_cert`](Self::add_tls_cert) with the PEM text in memory (`AppendCertEmbed`).
    pub fn add_tls_cert_pem(&mut self, cert_pem: &[u8], key_pem: &[u8]) {
        self.tls.push(tls::CertSource::Pem {
            cert: cert_pem.to_vec(),
            key: key_pem.to_vec(),
        });
    }

    /// Serves plain HTTP, or TLS with `default` as the default certificate.
    fn start(&mut self, addr: &str, default: Option<tls::CertSource>) -> Result<(), Error> {
        if self.served {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "listen_and_serve was already called on this server; create a new one",
            ));
        }
        if default.is_some() && self.serve.is_some() {
            // TLS lives in the HTTP engine; a serve-mode child runs the application's own
            // server on the raw listener, which the engine's TLS cannot wrap.
            return Err(Error::new(
                ErrorKind::InvalidState,
                "serve mode does not support TLS: call listen_and_serve, or terminate TLS in \
                 the serve function",
            ));
        }
        if self.serve.is_some()
            && (!self.listeners.is_empty() || addr.starts_with(listen::UNIX_PREFIX))
        {
            // The serve function takes one TCP listener (a `TcpListener`, a C `listen_fd`).
            return Err(Error::new(
                ErrorKind::InvalidState,
                "serve mode serves one TCP listener: no Unix socket, no added listeners",
            ));
        }
        self.config.validate()?;
        self.served = true;
        let tls = default.is_some();
        let specs: Vec<ListenerSpec> = (!addr.is_empty())
            .then(|| ListenerSpec {
                addr: addr.to_string(),
                options: ListenerOptions::default(),
            })
            .into_iter()
            .chain(self.listeners.iter().cloned())
            .collect();
        if let Some(default) = default {
            self.tls.insert(0, default);
        }
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
                None => child::run(
                    &self.config,
                    &mut self.hooks,
                    &self.handler,
                    &*self.logger,
                    tls,
                ),
            }
        } else if tls {
            tls::prepare(&self.tls, &*self.logger).and_then(|material| {
                master::run(
                    &specs,
                    &self.config,
                    &mut self.hooks,
                    &*self.logger,
                    Some(&material),
                )
            })
        } else {
            master::run(&specs, &self.config, &mut self.hooks, &*self.logger, None)
        };
        control::reset();
        set_listener_addrs(Vec::new());
        shared::publish(None);
        result
    }
}
