//! The TLS material as it crosses the lifeline from the master to a child, once, right after
//! the spawn and before anything else is sent on it: no argv, no environment, no file a child
//! would need the right to read. All integers big-endian:
//!
//! ```text
//! "PFTLS1"  u32 body length
//! body:     ticket secret (32 bytes)  u16 identity count
//!           per identity: u8 key format (1 PKCS#8, 2 PKCS#1, 3 SEC1)  u32 length, key DER
//!                         u16 certificate count, per certificate: u32 length, DER
//! ```

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{MsgFlags, recv, send};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};

use super::load::Identity;
use super::ticket::SECRET_LEN;

const MAGIC: &[u8; 6] = b"PFTLS1";
const HEAD_LEN: usize = MAGIC.len() + 4;
/// Far above any real set of chains, low enough that a corrupt length cannot exhaust memory.
const MAX_BODY: usize = 64 << 20;

/// What every child needs to serve TLS.
pub(crate) struct Material {
    pub secret: [u8; SECRET_LEN],
    pub identities: Vec<Identity>,
}

pub(crate) fn encode(m: &Material) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&m.secret);
    body.extend_from_slice(&(m.identities.len() as u16).to_be_bytes());
    for id in &m.identities {
        let (format, der) = match &id.key {
            PrivateKeyDer::Pkcs8(k) => (1u8, k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => (2, k.secret_pkcs1_der()),
            PrivateKeyDer::Sec1(k) => (3, k.secret_sec1_der()),
            _ => (0, &[][..]),
        };
        body.push(format);
        put_bytes(&mut body, der);
        body.extend_from_slice(&(id.chain.len() as u16).to_be_bytes());
        for cert in &id.chain {
            put_bytes(&mut body, cert);
        }
    }
    let mut out = Vec::with_capacity(HEAD_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    zero(&mut body);
    out
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// Overwrites key bytes before their buffer is freed.
pub(crate) fn zero(buf: &mut [u8]) {
    for b in buf.iter_mut() {
        // SAFETY: a volatile write to a valid, exclusively borrowed byte: it keeps the
        // compiler from eliding stores to memory about to be freed.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

pub(crate) fn decode(body: &[u8]) -> Result<Material, String> {
    let mut r = Reader(body);
    let secret: [u8; SECRET_LEN] = r.take(SECRET_LEN)?.try_into().map_err(|_| "secret")?;
    let count = r.u16()?;
    let mut identities = Vec::with_capacity(usize::from(count).min(1024));
    for _ in 0..count {
        let format = r.take(1)?[0];
        let der = r.bytes()?.to_vec();
        let key = match format {
            1 => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
            2 => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)),
            3 => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)),
            other => return Err(format!("unknown key format {other}")),
        };
        let certs = r.u16()?;
        let chain = (0..certs)
            .map(|_| r.bytes().map(|b| CertificateDer::from(b.to_vec())))
            .collect::<Result<Vec<_>, _>>()?;
        if chain.is_empty() {
            return Err("an identity without a certificate".into());
        }
        identities.push(Identity { chain, key });
    }
    if !r.0.is_empty() {
        return Err("trailing bytes".into());
    }
    if identities.is_empty() {
        return Err("no identity".into());
    }
    Ok(Material { secret, identities })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes"));
        self.take(len as usize)
    }
}

/// Master side: writes `msg` to a child's lifeline. Bounded by `deadline`, since a process
/// started by a custom command producer might never read it.
pub(crate) fn send_all(fd: RawFd, msg: &[u8], deadline: Instant) -> io::Result<()> {
    let mut sent = 0;
    while sent < msg.len() {
        match send(
            fd,
            &msg[sent..],
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) => sent += n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => wait(fd, PollFlags::POLLOUT, deadline)?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Child side: reads the message the master sent on the lifeline, exactly (a stop byte the
/// master may send later stays in the socket for the lifeline's own reader).
pub(crate) fn receive(fd: RawFd, deadline: Instant) -> Result<Material, String> {
    let mut head = [0u8; HEAD_LEN];
    recv_exact(fd, &mut head, deadline)?;
    if &head[..MAGIC.len()] != MAGIC {
        return Err(
            "the lifeline did not start with the master's TLS material (is the master an older \
             libprefork, or not serving TLS?)"
                .into(),
        );
    }
    let len = u32::from_be_bytes(head[MAGIC.len()..].try_into().expect("4 bytes")) as usize;
    if len > MAX_BODY {
        return Err(format!("a TLS material message of {len} bytes"));
    }
    let mut body = vec![0u8; len];
    recv_exact(fd, &mut body, deadline)?;
    let material = decode(&body);
    zero(&mut body);
    material
}

fn recv_exact(fd: RawFd, buf: &mut [u8], deadline: Instant) -> Result<(), String> {
    let mut got = 0;
    while got < buf.len() {
        match recv(fd, &mut buf[got..], MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return Err("the master closed the lifeline".into()),
            Ok(n) => got += n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                wait(fd, PollFlags::POLLIN, deadline).map_err(|e| format!("waiting: {e}"))?
            }
            Err(e) => return Err(format!("reading the lifeline: {e}")),
        }
    }
    Ok(())
}

fn wait(fd: RawFd, events: PollFlags, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "timed out on the lifeline",
        ));
    }
    let ms = PollTimeout::try_from(left.as_millis().max(1)).unwrap_or(PollTimeout::MAX);
    // SAFETY: fd is the lifeline, open for the duration of this call (the caller's).
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    match nix::poll::poll(&mut [PollFd::new(fd, events)], ms) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn sample() -> Material {
        Material {
            secret: [9; SECRET_LEN],
            identities: vec![
                Identity {
                    chain: vec![
                        CertificateDer::from(vec![1, 2, 3]),
                        CertificateDer::from(vec![4]),
                    ],
                    key: PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(vec![5, 6])),
                },
                Identity {
                    chain: vec![CertificateDer::from(vec![7])],
                    key: PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(vec![8])),
                },
            ],
        }
    }

    #[test]
    fn round_trip_over_a_socket_leaves_later_bytes_alone() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let msg = encode(&sample());
        let deadline = Instant::now() + Duration::from_secs(5);
        send_all(a.as_raw_fd(), &msg, deadline).unwrap();
        send_all(a.as_raw_fd(), b"S", deadline).unwrap();
        let m = receive(b.as_raw_fd(), deadline).unwrap();
        assert_eq!(m.secret, [9; SECRET_LEN]);
        assert_eq!(m.identities.len(), 2);
        assert_eq!(m.identities[0].chain[0].as_ref(), &[1, 2, 3]);
        assert_eq!(m.identities[0].chain[1].as_ref(), &[4]);
        assert!(
            matches!(&m.identities[0].key, PrivateKeyDer::Sec1(k) if k.secret_sec1_der() == [5, 6])
        );
        assert!(
            matches!(&m.identities[1].key, PrivateKeyDer::Pkcs1(k) if k.secret_pkcs1_der() == [8])
        );
        let mut rest = [0u8; 2];
        assert_eq!(
            recv(b.as_raw_fd(), &mut rest, MsgFlags::MSG_DONTWAIT),
            Ok(1)
        );
        assert_eq!(rest[0], b'S');
    }

    #[test]
    fn bad_messages_are_errors_not_panics() {
        let msg = encode(&sample());
        let body = &msg[HEAD_LEN..];
        for len in 0..body.len() {
            assert!(decode(&body[..len]).is_err(), "cut at {len}");
        }
        let mut long = body.to_vec();
        long.push(0);
        assert!(decode(&long).is_err());
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let soon = Instant::now() + Duration::from_millis(50);
        let why = |r: Result<Material, String>| r.err().unwrap_or_default();
        assert!(why(receive(b.as_raw_fd(), soon)).contains("timed out"));
        send_all(a.as_raw_fd(), b"GARBAGE!!!", soon).unwrap();
        assert!(why(receive(b.as_raw_fd(), soon)).contains("TLS material"));
        drop(a);
        assert!(why(receive(b.as_raw_fd(), soon)).contains("closed"));
    }
}
