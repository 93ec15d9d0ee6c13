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
mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub use config::{Config, HttpConfig, Network, ProcessConfig};
pub use control::shutdown;
pub use error::{Error, ErrorKind, HookError};
pub use hooks::{
    CHILD_ENV, ChildExit, HookResult, Hooks, LIFELINE_FD, LISTENER_FD, Pid, SpawnRequest,
};
pub use http::{Handler, Header, Request, Response};
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
    /// Certificates for the TLS entry points, the default first.
    tls: Vec<tls::CertSource>,
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
            tls: Vec::new(),
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
        self.serve(addr, None)
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
        self.serve(addr, Some(default))
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
        self.serve(addr, Some(default))
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
    fn serve(&mut self, addr: &str, default: Option<tls::CertSource>) -> Result<(), Error> {
        if self.served {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "listen_and_serve was already called on this server; create a new one",
            ));
        }
        self.config.validate()?;
        self.served = true;
        let tls = default.is_some();
        if let Some(default) = default {
            self.tls.insert(0, default);
        }
        let result = if is_child() {
            child::run(
                &self.config,
                &mut self.hooks,
                &self.handler,
                &*self.logger,
                tls,
            )
        } else if tls {
            tls::prepare(&self.tls, &*self.logger).and_then(|material| {
                master::run(
                    addr,
                    &self.config,
                    &mut self.hooks,
                    &*self.logger,
                    Some(&material),
                )
            })
        } else {
            master::run(addr, &self.config, &mut self.hooks, &*self.logger, None)
        };
        control::reset();
        set_local_addr(None);
        result
    }
}
