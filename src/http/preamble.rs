//! What a connection sends before its first request: today a PROXY protocol header, when the
//! listener requires one. It runs on the raw socket before the session, or any transport
//! under it (TLS: the header precedes the handshake), sees a byte, and it consumes exactly
//! the header, so the next layer starts reading where the header ended.

use std::io;
use std::os::fd::RawFd;

use nix::sys::socket::MsgFlags;

use super::proxy::{self, Parse, ProxyHeader};

/// Where reading a connection's PROXY protocol header stands.
pub(crate) enum Step {
    /// More bytes are needed: wait for the socket.
    Wait,
    /// The header was read and consumed from the socket.
    Done(ProxyHeader),
    /// Close the connection, for this reason.
    Fail(&'static str),
}

/// Reads what arrived of the header. `peer_hup`: the peer has closed its side, so what is in
/// the socket is all there will be.
///
/// The bytes are peeked, not read, until a whole header is there; then exactly its length is
/// read (the spec's §9 sample does the same). Nothing after the header is taken from the
/// socket, so pipelined request bytes, or a TLS ClientHello, stay for whoever reads next.
pub(crate) fn read_proxy_header(fd: RawFd, peer_hup: bool) -> Step {
    let mut buf = [0u8; proxy::MAX_HEADER_LEN];
    let n = loop {
        match recv(fd, &mut buf, MsgFlags::MSG_PEEK) {
            Ok(0) => return Step::Fail("the connection closed before its PROXY protocol header"),
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return if peer_hup {
                    Step::Fail("the connection closed inside its PROXY protocol header")
                } else {
                    Step::Wait
                };
            }
            Err(_) => return Step::Fail("the connection failed before its PROXY protocol header"),
        }
    };
    match proxy::parse(&buf[..n]) {
        Parse::Incomplete if peer_hup => {
            Step::Fail("the connection closed inside its PROXY protocol header")
        }
        Parse::Incomplete => Step::Wait,
        Parse::Invalid(why) => Step::Fail(why),
        Parse::Complete(header, len) => loop {
            // The peeked bytes are in the socket's buffer, and only this thread reads it: the
            // read takes all `len` of them.
            match recv(fd, &mut buf[..len], MsgFlags::empty()) {
                Ok(got) if got == len => return Step::Done(header),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => return Step::Fail("the PROXY protocol header could not be consumed"),
            }
        },
    }
}

fn recv(fd: RawFd, buf: &mut [u8], flags: MsgFlags) -> io::Result<usize> {
    nix::sys::socket::recv(fd, buf, flags).map_err(io::Error::from)
}
