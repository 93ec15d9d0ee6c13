//! The listening sockets a child serves, and accepting from them: TCP or Unix alike, since
//! the engine only reads and writes descriptors.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use socket2::{SockAddr, SockAddrStorage, Socket};

use crate::error::{Error, ErrorKind};
use crate::listen::ListenAddr;

/// One listening socket with what its connections need to know.
pub(crate) struct Listening {
    pub fd: OwnedFd,
    /// Its connections start with a PROXY protocol header.
    pub proxy: bool,
    /// Where it listens: each request's local address (`Request::local_addr`).
    pub addr: Arc<ListenAddr>,
}

impl Listening {
    /// A listener of `fd`, whose address is read from the socket.
    pub fn new(fd: OwnedFd, proxy: bool) -> Result<Listening, Error> {
        let addr = ListenAddr::of(&fd).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidState,
                format!("cannot read the address of listener fd {}", fd.as_raw_fd()),
            )
        })?;
        Ok(Listening {
            fd,
            proxy,
            addr: Arc::new(addr),
        })
    }
}

/// A connection just accepted: its socket (non-blocking, close-on-exec), its peer's address
/// (`None` for a Unix socket's, which has none worth naming), and its listener's settings.
pub(crate) struct Accepted {
    pub sock: Socket,
    pub peer: Option<SocketAddr>,
    pub proxy: bool,
    pub local: Arc<ListenAddr>,
}

/// One accept4(2) on `l`, non-blocking and close-on-exec in the same call (as mio does).
pub(crate) fn accept(l: &Listening) -> io::Result<Accepted> {
    let mut storage = SockAddrStorage::zeroed();
    let mut len = storage.size_of();
    // SAFETY: storage has room for `len` bytes of any socket address (sockaddr is one of the
    // platform's sockaddr types); the kernel writes at most that and reports it in `len`.
    let fd: RawFd = unsafe {
        libc::accept4(
            l.fd.as_raw_fd(),
            storage.view_as::<libc::sockaddr>(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
    let sock = unsafe { Socket::from_raw_fd(fd) };
    // SAFETY: the kernel filled `len` bytes of the storage with the peer's address.
    let peer = unsafe { SockAddr::new(storage, len) }.as_socket();
    Ok(Accepted {
        sock,
        peer,
        proxy: l.proxy,
        local: Arc::clone(&l.addr),
    })
}
