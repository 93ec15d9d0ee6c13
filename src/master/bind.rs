//! Listener creation: address resolution per network, one shared listener (inherit mode) or
//! one SO_REUSEPORT socket per child slot, all bound here so that a bind failure is an error
//! returned at once rather than a crash loop of children.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{FromRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, fcntl};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Network;
use crate::error::{Error, ErrorKind};
use crate::hooks::LIFELINE_FD;

/// Resolves `host:port` for the network. An empty host (`:8080`) means every interface.
pub(crate) fn resolve(addr: &str, network: Network) -> Result<SocketAddr, Error> {
    let bad = |why: String| {
        Error::new(
            ErrorKind::Bind,
            format!("bad listen address {addr:?}: {why}"),
        )
    };
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| bad("expected HOST:PORT, e.g. 127.0.0.1:8080 or :8080".into()))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad(format!("port {port:?} is not 0..=65535")))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        let any = match network {
            Network::Tcp4 => "0.0.0.0",
            Network::Tcp6 | Network::Tcp => "::",
        };
        return Ok(SocketAddr::new(any.parse().expect("literal address"), port));
    }
    let candidates = (host, port)
        .to_socket_addrs()
        .map_err(|e| bad(format!("cannot resolve host {host:?}: {e}")))?;
    let wanted = |a: &SocketAddr| match network {
        Network::Tcp4 => a.is_ipv4(),
        Network::Tcp6 => a.is_ipv6(),
        Network::Tcp => true,
    };
    candidates.into_iter().find(wanted).ok_or_else(|| {
        bad(format!(
            "host {host:?} has no {} address",
            network_name(network)
        ))
    })
}

fn network_name(network: Network) -> &'static str {
    match network {
        Network::Tcp4 => "IPv4 (network tcp4)",
        Network::Tcp6 => "IPv6 (network tcp6)",
        Network::Tcp => "IP",
    }
}

/// Binds and listens; returns the sockets and the bound address. With `reuseport`, `count`
/// sockets sharing the port (a port 0 is resolved by the first bind and reused by the others);
/// otherwise one. Every descriptor returned is
/// close-on-exec and numbered above the fds children receive, so placing it at fd 3 in a child
/// never clobbers the lifeline.
pub(crate) fn listeners(
    addr: SocketAddr,
    network: Network,
    backlog: i32,
    reuseport: bool,
    count: usize,
) -> Result<(Vec<OwnedFd>, SocketAddr), Error> {
    let mut target = addr;
    let n = if reuseport { count } else { 1 };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = bind_one(target, network, backlog, reuseport)?;
        if target.port() == 0 {
            let local = socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or_else(|| Error::new(ErrorKind::Bind, "cannot read the bound port"))?;
            target.set_port(local.port());
        }
        out.push(above_child_fds(OwnedFd::from(socket))?);
    }
    Ok((out, target))
}

/// A new master's listeners from the old one (binary upgrade): the bound address, and as many
/// sockets as the options ask for (in reuseport mode one per slot, the missing ones bound
/// anew on the same port).
pub(crate) fn adopt(
    mut fds: Vec<OwnedFd>,
    network: Network,
    backlog: i32,
    reuseport: bool,
    count: usize,
) -> Result<(Vec<OwnedFd>, SocketAddr), Error> {
    let addr = fds
        .first()
        .and_then(|fd| socket2::SockRef::from(fd).local_addr().ok())
        .and_then(|a| a.as_socket())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Bind,
                "cannot read the inherited socket's address",
            )
        })?;
    let want = if reuseport { count } else { 1 };
    while fds.len() < want {
        fds.push(reuseport_socket(addr, network, backlog)?);
    }
    fds.truncate(want);
    Ok((fds, addr))
}

/// One more SO_REUSEPORT socket on `addr` (whose port is the one the others have), for a slot
/// added while serving.
pub(crate) fn reuseport_socket(
    addr: SocketAddr,
    network: Network,
    backlog: i32,
) -> Result<OwnedFd, Error> {
    above_child_fds(OwnedFd::from(bind_one(addr, network, backlog, true)?))
}

fn bind_one(
    addr: SocketAddr,
    network: Network,
    backlog: i32,
    reuseport: bool,
) -> Result<Socket, Error> {
    let fail = |what: &str, e: std::io::Error| {
        Error::io(
            ErrorKind::Bind,
            format_args!("{what} {addr} ({})", network_name(network)),
            e,
        )
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| fail("socket for", e))?;
    if addr.is_ipv6() {
        socket
            .set_only_v6(network == Network::Tcp6)
            .map_err(|e| fail("IPV6_V6ONLY on", e))?;
    }
    socket
        .set_reuse_address(true)
        .map_err(|e| fail("SO_REUSEADDR on", e))?;
    if reuseport {
        socket
            .set_reuse_port(true)
            .map_err(|e| fail("SO_REUSEPORT on", e))?;
    }
    socket.bind(&addr.into()).map_err(|e| fail("bind", e))?;
    socket.listen(backlog).map_err(|e| fail("listen on", e))?;
    Ok(socket)
}

/// Moves `fd` above the descriptor numbers children receive (see the module docs).
pub(crate) fn above_child_fds(fd: OwnedFd) -> Result<OwnedFd, Error> {
    let dup = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(LIFELINE_FD + 1)).map_err(|e| {
        Error::io(
            ErrorKind::Io,
            "duplicate descriptor",
            std::io::Error::from(e),
        )
    })?;
    // SAFETY: F_DUPFD_CLOEXEC returned a fresh descriptor, owned by nobody else (nix's fcntl
    // returns it as a plain number).
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}
