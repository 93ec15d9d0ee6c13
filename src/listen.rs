//! Listener addresses: what a server may listen on (TCP `host:port`, a Unix socket file
//! `unix:/path`, Linux's abstract `unix:@name`, or `systemd` for the sockets systemd passes),
//! the per-listener options, and the text form every API prints them in.

use std::ffi::OsStr;
use std::fmt;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::error::{Error, ErrorKind};

/// The address that serves every socket systemd passes (`LISTEN_FDS`).
pub const SYSTEMD: &str = "systemd";
/// The prefix of Unix-socket addresses.
pub const UNIX_PREFIX: &str = "unix:";
/// sun_path holds 108 bytes; a path needs its NUL, an abstract name does not but starts with
/// one.
const SUN_PATH: usize = 108;

/// The address a listener is bound to, as `Request::local_addr` and `listener_addrs` report
/// it. Its text (`Display`) is the form addresses are written in: `127.0.0.1:8080`,
/// `[::1]:8080`, `unix:/run/app.sock`, `unix:@name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// A TCP socket's address, with the port a port 0 was given.
    Tcp(std::net::SocketAddr),
    /// A Unix socket bound to a file.
    Unix(PathBuf),
    /// A Unix socket in Linux's abstract namespace: the name, without the leading NUL.
    Abstract(Vec<u8>),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "{UNIX_PREFIX}{}", p.display()),
            ListenAddr::Abstract(n) => write!(f, "{UNIX_PREFIX}@{}", String::from_utf8_lossy(n)),
        }
    }
}

impl ListenAddr {
    /// The address a socket is bound to (getsockname), for a socket someone else bound.
    pub(crate) fn of(fd: impl AsFd) -> Option<ListenAddr> {
        let local = socket2::SockRef::from(&fd).local_addr().ok()?;
        if let Some(a) = local.as_socket() {
            return Some(ListenAddr::Tcp(a));
        }
        if let Some(p) = local.as_pathname() {
            return Some(ListenAddr::Unix(p.to_path_buf()));
        }
        local
            .as_abstract_namespace()
            .map(|n| ListenAddr::Abstract(n.to_vec()))
    }

    pub fn is_unix(&self) -> bool {
        !matches!(self, ListenAddr::Tcp(_))
    }
}

/// Options of one listener ([`crate::Prefork::add_listener`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerOptions {
    /// Require a PROXY protocol header on this listener's connections: `None` (default) takes
    /// `HttpConfig::proxy_protocol`, the handle's setting.
    pub proxy_protocol: Option<bool>,
    /// The permission bits of a `unix:/path` socket file (connecting needs write permission),
    /// e.g. `0o660`, set before the socket listens. `None` (default) leaves what the umask
    /// gives. Refused for other addresses.
    pub unix_mode: Option<u32>,
}

/// One listener of the handle: its address text and its options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSpec {
    pub addr: String,
    pub options: ListenerOptions,
}

/// A listener address as written, before anything is resolved or bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// `host:port`, resolved for the network when bound.
    Tcp(String),
    Unix(PathBuf),
    Abstract(Vec<u8>),
    Systemd,
}

impl Target {
    pub(crate) fn parse(addr: &str) -> Result<Target, Error> {
        let bad = |why: &str| {
            Error::new(
                ErrorKind::Bind,
                format!("bad listen address {addr:?}: {why}"),
            )
        };
        if addr == SYSTEMD {
            return Ok(Target::Systemd);
        }
        let Some(rest) = addr.strip_prefix(UNIX_PREFIX) else {
            return Ok(Target::Tcp(addr.to_string()));
        };
        if let Some(name) = rest.strip_prefix('@') {
            if name.is_empty() || name.len() >= SUN_PATH {
                return Err(bad("an abstract name is 1 to 107 bytes (unix:@name)"));
            }
            return Ok(Target::Abstract(name.as_bytes().to_vec()));
        }
        if rest.is_empty() || rest.len() >= SUN_PATH || rest.contains('\0') {
            return Err(bad(
                "a Unix socket path is 1 to 107 bytes without NUL (unix:/run/app.sock)",
            ));
        }
        Ok(Target::Unix(PathBuf::from(OsStr::from_bytes(
            rest.as_bytes(),
        ))))
    }
}

impl ListenerSpec {
    /// Checks the address's form and that the options fit it; nothing is resolved.
    pub(crate) fn check(&self) -> Result<Target, Error> {
        let target = Target::parse(&self.addr)?;
        if let Some(mode) = self.options.unix_mode {
            if !matches!(target, Target::Unix(_)) {
                return Err(Error::invalid(format!(
                    "listener {:?}: unix_mode applies to a unix:/path listener only",
                    self.addr
                )));
            }
            if mode == 0 || mode > 0o777 {
                return Err(Error::invalid(format!(
                    "listener {:?}: unix_mode {mode:#o} is not permission bits (1 to 0777)",
                    self.addr
                )));
            }
        }
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_by_their_prefix() {
        assert_eq!(Target::parse("systemd").unwrap(), Target::Systemd);
        assert_eq!(
            Target::parse("unix:/tmp/a.sock").unwrap(),
            Target::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            Target::parse("unix:@app").unwrap(),
            Target::Abstract(b"app".to_vec())
        );
        assert_eq!(
            Target::parse("[::1]:80").unwrap(),
            Target::Tcp("[::1]:80".into())
        );
        for bad in ["unix:", "unix:@", &format!("unix:/{}", "x".repeat(107))] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unix_mode_fits_only_a_socket_file() {
        let spec = |addr: &str, mode| ListenerSpec {
            addr: addr.into(),
            options: ListenerOptions {
                unix_mode: Some(mode),
                ..Default::default()
            },
        };
        assert!(spec("unix:/tmp/a.sock", 0o660).check().is_ok());
        assert!(spec("unix:@a", 0o660).check().is_err());
        assert!(spec("127.0.0.1:0", 0o660).check().is_err());
        assert!(spec("unix:/tmp/a.sock", 0o1777).check().is_err());
    }

    #[test]
    fn addresses_print_as_written() {
        assert_eq!(
            ListenAddr::Unix("/run/a.sock".into()).to_string(),
            "unix:/run/a.sock"
        );
        assert_eq!(ListenAddr::Abstract(b"n".to_vec()).to_string(), "unix:@n");
        assert_eq!(
            ListenAddr::Tcp("[::1]:8".parse().unwrap()).to_string(),
            "[::1]:8"
        );
    }
}
