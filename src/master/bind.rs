//! Listener creation: address resolution per network, TCP sockets (one shared by every child,
//! or one SO_REUSEPORT socket per child slot), Unix sockets (a file, replacing a stale one
//! only when nobody answers on it, or an abstract name) and the sockets systemd passes, all
//! bound here so that a bind failure is an error returned at once rather than a crash loop of
//! children.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, fcntl};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::activation;
use super::migrate;
use crate::config::{Network, ProcessConfig};
use crate::error::{Error, ErrorKind};
use crate::hooks::LIFELINE_FD;
use crate::listen::{ListenAddr, ListenerSpec, Target};
use crate::log::{Level, Logger};

/// One listener of the master: the address it is bound to and the sockets the children get.
pub(crate) struct Listener {
    pub addr: ListenAddr,
    /// Its connections start with a PROXY protocol header.
    pub proxy: bool,
    /// One socket every child shares, or (`per_slot`) one per child slot.
    pub fds: Vec<OwnedFd>,
    /// A TCP listener bound by this master in reuseport mode: a slot added later gets its own
    /// socket on the same port.
    pub per_slot: bool,
    /// The socket file this master removes when the listener goes, with its inode (a file
    /// that is no longer that socket is left alone). `None` for a file this master did not
    /// create, or handed to the master of an upgrade.
    pub unlink: Option<(PathBuf, u64)>,
    /// Its name in `LISTEN_FDNAMES`, for sockets systemd passed.
    pub name: Option<String>,
}

impl Listener {
    fn new(addr: ListenAddr, proxy: bool, fds: Vec<OwnedFd>) -> Listener {
        Listener {
            addr,
            proxy,
            fds,
            per_slot: false,
            unlink: None,
            name: None,
        }
    }

    /// A listener an old master passed (binary upgrade); its sockets follow.
    pub fn adopted(addr: ListenAddr, proxy: bool, per_slot: bool) -> Listener {
        let mut l = Listener::new(addr, proxy, Vec::new());
        l.per_slot = per_slot;
        l
    }

    /// A socket the service manager passed (shared by every child, never unlinked).
    fn passed(p: activation::Passed, proxy: bool) -> Listener {
        let mut l = Listener::new(p.addr, proxy, vec![p.fd]);
        l.name = Some(p.name);
        l
    }

    /// The socket the child of `slot` gets.
    pub fn for_slot(&self, slot: usize) -> RawFd {
        self.fds[slot % self.fds.len()].as_raw_fd()
    }

    /// Opens the socket of slot `fds.len()` (reuseport mode).
    pub fn add_slot(&mut self, network: Network, backlog: i32) -> Result<(), Error> {
        if let (true, ListenAddr::Tcp(addr)) = (self.per_slot, &self.addr) {
            self.fds.push(reuseport_socket(*addr, network, backlog)?);
        }
        Ok(())
    }

    /// In reuseport mode, has the kernel move what a slot's socket holds when it closes to
    /// the other slots' sockets (see `migrate`), and logs why when it cannot. Sockets added
    /// later join the group and share its program.
    pub fn migrate_on_close(&self, log: &dyn Logger) {
        let (true, Some(fd)) = (self.per_slot, self.fds.first()) else {
            return;
        };
        if let Err(e) = migrate::enable(fd.as_fd()) {
            log.log(
                Level::Info,
                &format!(
                    "reuseport on {}: a removed slot's socket cannot hand its connections to \
                     the others ({e}; loading the BPF program takes CAP_BPF): a connection \
                     that reaches it as it closes is reset, unless net.ipv4.tcp_migrate_req \
                     is 1",
                    self.addr
                ),
            );
        }
    }

    /// Closes the sockets of the slots past `slots` (reuseport mode).
    pub fn truncate_slots(&mut self, slots: usize) {
        if self.per_slot {
            self.fds.truncate(slots.max(1));
        }
    }

    /// How the log names it.
    pub fn describe(&self) -> String {
        let mut text = self.addr.to_string();
        if let Some(name) = &self.name {
            text.push_str(&format!(" (systemd {name:?})"));
        }
        if self.proxy {
            text.push_str(" with PROXY protocol");
        }
        text
    }
}

impl Drop for Listener {
    /// A clean stop leaves no socket file behind (nor does an error path after the bind).
    fn drop(&mut self) {
        if let Some((path, ino)) = self.unlink.take()
            && std::fs::symlink_metadata(&path).is_ok_and(|m| m.ino() == ino)
        {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Binds every listener: `first` (the address given to `listen_and_serve`, if any) and then
/// `specs` in order. `count` is the number of child slots (reuseport mode binds a TCP socket
/// per slot); `proxy` is the handle's PROXY protocol setting, the listeners' default.
pub(crate) fn bind_all(
    specs: &[ListenerSpec],
    proxy: bool,
    cfg: &ProcessConfig,
    count: usize,
    log: &dyn Logger,
) -> Result<Vec<Listener>, Error> {
    if specs.is_empty() {
        return Err(Error::new(
            ErrorKind::Bind,
            "no address to listen on: pass one to listen_and_serve or add a listener",
        ));
    }
    let mut out: Vec<Listener> = Vec::new();
    let mut systemd_seen = false;
    // `systemd` takes every passed socket; without it they go to the listeners of their
    // address (see `activation`).
    let mut offered = match specs.iter().any(|s| s.addr == crate::listen::SYSTEMD) {
        true => Vec::new(),
        false => activation::offered(log),
    };
    for spec in specs {
        let proxy = spec.options.proxy_protocol.unwrap_or(proxy);
        // What to listen on, resolved; `None` for `systemd`.
        let wanted = match spec.check()? {
            Target::Tcp(text) => Some(ListenAddr::Tcp(resolve(&text, cfg.network)?)),
            Target::Unix(path) => Some(ListenAddr::Unix(path)),
            Target::Abstract(name) => Some(ListenAddr::Abstract(name)),
            Target::Systemd => None,
        };
        if let Some(passed) = wanted
            .as_ref()
            .and_then(|a| activation::take_for(&mut offered, a))
        {
            out.push(Listener::passed(passed, proxy));
            continue;
        }
        let mode = spec.options.unix_mode;
        out.extend(bind_addr(
            wanted,
            mode,
            proxy,
            cfg,
            count,
            &mut systemd_seen,
        )?);
    }
    for unused in offered {
        log.log(
            Level::Warn,
            &format!(
                "socket activation: the passed socket {} ({:?}) matches no listener; closed",
                unused.addr, unused.name
            ),
        );
    }
    Ok(out)
}

/// Binds one listener address (`None`: every socket systemd passed, once only).
fn bind_addr(
    wanted: Option<ListenAddr>,
    unix_mode: Option<u32>,
    proxy: bool,
    cfg: &ProcessConfig,
    count: usize,
    systemd_seen: &mut bool,
) -> Result<Vec<Listener>, Error> {
    let l = match wanted {
        Some(ListenAddr::Tcp(addr)) => {
            let (fds, at) = listeners(addr, cfg.network, cfg.backlog, cfg.reuseport, count)?;
            let mut l = Listener::new(ListenAddr::Tcp(at), proxy, fds);
            l.per_slot = cfg.reuseport;
            l
        }
        Some(ListenAddr::Unix(path)) => {
            let (fd, ino) = bind_unix_file(&path, unix_mode, cfg.backlog)?;
            let mut l = Listener::new(ListenAddr::Unix(path.clone()), proxy, vec![fd]);
            l.unlink = Some((path, ino));
            l
        }
        Some(ListenAddr::Abstract(name)) => {
            let fd = bind_abstract(&name, cfg.backlog)?;
            Listener::new(ListenAddr::Abstract(name), proxy, vec![fd])
        }
        None => {
            if std::mem::replace(systemd_seen, true) {
                return Err(Error::invalid(
                    "the address systemd is given twice: it already serves every socket \
                     systemd passes",
                ));
            }
            let passed = activation::take()?;
            return Ok(passed
                .into_iter()
                .map(|p| Listener::passed(p, proxy))
                .collect());
        }
    };
    Ok(vec![l])
}

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

/// Binds and listens on TCP; returns the sockets and the bound address. With `reuseport`, `count`
/// sockets sharing the port (a port 0 is resolved by the first bind and reused by the others);
/// otherwise one. Every descriptor returned is
/// close-on-exec and numbered above the fds children receive, so placing it at fd 3 in a child
/// never clobbers the lifeline.
fn listeners(
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

/// One more SO_REUSEPORT socket on `addr` (whose port is the one the others have), for a slot
/// added while serving.
fn reuseport_socket(addr: SocketAddr, network: Network, backlog: i32) -> Result<OwnedFd, Error> {
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

/// Binds a Unix socket file and listens; returns the socket and the file's inode.
///
/// A file already at `path` is replaced only when it is a socket nobody listens on (a crashed
/// run's): connecting tells, as nginx and gunicorn leave it to the operator but systemd's
/// `RemoveOnStop=` would not cover a crash. A socket that answers is another server's, and
/// anything else is not ours to remove: both are errors.
fn bind_unix_file(path: &Path, mode: Option<u32>, backlog: i32) -> Result<(OwnedFd, u64), Error> {
    let fail = |what: &str, e: std::io::Error| {
        Error::io(
            ErrorKind::Bind,
            format_args!("{what} unix:{}", path.display()),
            e,
        )
    };
    let addr = SockAddr::unix(path).map_err(|e| fail("address", e))?;
    remove_stale(path, &addr)?;
    let socket = unix_socket().map_err(|e| fail("socket for", e))?;
    socket.bind(&addr).map_err(|e| fail("bind", e))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| fail("stat", e))?;
    // From here on the file is ours: an error removes it with the listener.
    let mut listener = Listener::new(ListenAddr::Unix(path.into()), false, Vec::new());
    listener.unlink = Some((path.into(), meta.ino()));
    // Before listen: until then a client that connects is refused, so none gets in through
    // the umask's bits.
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| fail(&format!("chmod {mode:o}"), e))?;
    }
    socket.listen(backlog).map_err(|e| fail("listen on", e))?;
    let fd = above_child_fds(OwnedFd::from(socket))?;
    listener.unlink = None;
    Ok((fd, meta.ino()))
}

fn remove_stale(path: &Path, addr: &SockAddr) -> Result<(), Error> {
    let fail = |why: String| {
        Error::new(
            ErrorKind::Bind,
            format!("cannot listen on unix:{}: {why}", path.display()),
        )
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(fail(format!("cannot look at the existing file ({e})"))),
    };
    if !meta.file_type().is_socket() {
        return Err(fail(
            "the file exists and is not a socket; it is left alone".into(),
        ));
    }
    let probe = unix_socket().map_err(|e| fail(format!("no socket to probe it ({e})")))?;
    // Non-blocking: a live server whose queue is full answers EAGAIN instead of a wait.
    let _ = probe.set_nonblocking(true);
    match probe.connect(addr) {
        Ok(()) => Err(fail("another process is listening on it".into())),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Err(fail(
            "another process is listening on it (its accept queue is full)".into(),
        )),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => std::fs::remove_file(path)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
            .map_err(|e| fail(format!("cannot remove the stale socket file ({e})"))),
        Err(e) => Err(fail(format!(
            "cannot tell whether the existing socket is in use ({e}); it is left alone"
        ))),
    }
}

/// Binds a socket in the abstract namespace (`unix:@name`): no file, gone with its last
/// descriptor.
fn bind_abstract(name: &[u8], backlog: i32) -> Result<OwnedFd, Error> {
    let text = String::from_utf8_lossy(name);
    let fail = |what: &str, e: std::io::Error| {
        Error::io(ErrorKind::Bind, format_args!("{what} unix:@{text}"), e)
    };
    let mut raw = vec![0u8];
    raw.extend_from_slice(name);
    let addr = SockAddr::unix(std::ffi::OsStr::from_bytes(&raw)).map_err(|e| fail("address", e))?;
    let socket = unix_socket().map_err(|e| fail("socket for", e))?;
    socket.bind(&addr).map_err(|e| fail("bind", e))?;
    socket.listen(backlog).map_err(|e| fail("listen on", e))?;
    above_child_fds(OwnedFd::from(socket))
}

fn unix_socket() -> std::io::Result<Socket> {
    Socket::new(Domain::UNIX, Type::STREAM, None)
}

/// True for a listening stream socket (what a child serves).
pub(crate) fn is_listening(fd: RawFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid out pointers; a number that is not open fails with EBADF.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0 && value == 1
}

/// Copies of those of `fds` numbered `last` or below, moved above it, for a placement at
/// descriptors up to `last` between fork and exec that must not clobber a source before it is
/// placed: the numbers to place from, and the copies to keep open until the exec is done.
pub(crate) fn lift(fds: &[RawFd], last: RawFd) -> Result<(Vec<RawFd>, Vec<OwnedFd>), Error> {
    let mut numbers = Vec::with_capacity(fds.len());
    let mut keep = Vec::new();
    for &fd in fds {
        if fd > last {
            numbers.push(fd);
            continue;
        }
        // SAFETY: a descriptor the caller holds open for the duration of this call.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let copy = fcntl(borrowed, FcntlArg::F_DUPFD_CLOEXEC(last + 1)).map_err(|e| {
            Error::io(
                ErrorKind::Io,
                "duplicate a descriptor",
                std::io::Error::from(e),
            )
        })?;
        // SAFETY: F_DUPFD_CLOEXEC returned a fresh descriptor owned by nobody else.
        let copy = unsafe { OwnedFd::from_raw_fd(copy) };
        numbers.push(copy.as_raw_fd());
        keep.push(copy);
    }
    Ok((numbers, keep))
}
