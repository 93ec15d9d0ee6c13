//! Taking a connection over ([`Response::hijack`]): once the response before it is written,
//! the event loop deregisters the socket, forgets the connection and hands the socket, with
//! the bytes it had read past the request, to the handler's callback as a [`Hijacked`].
//!
//! The rule for `max_connections`: a handed-over connection keeps counting until its new owner
//! closes it, because it still holds one of the child's descriptors and a client's connection.
//! The library learns of the close when the `Hijacked` is dropped (C: `prefork_conn_close`);
//! [`Hijacked::into_parts`] gives the socket away for good and ends the count then, since a
//! close the library is not told about is one it cannot see.

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use super::deferred::Mailbox;
use crate::error::panic_message;
use crate::log::{Level, Logger};

/// What `Response::hijack` registers: called on the event-loop thread with the connection.
pub(crate) type HijackFn = Box<dyn FnOnce(Hijacked) + Send>;

/// A connection taken over by a handler ([`Response::hijack`]): a blocking TCP socket, and the
/// bytes the client sent after the request that the child had already read. A connection of a
/// Unix-socket listener comes as a `TcpStream` too, holding the Unix socket: reading, writing,
/// shutdown and the descriptor work the same, the address accessors fail.
///
/// `Read` returns those bytes first, then reads the socket; `Write` writes the socket. Dropping
/// it closes the socket and frees its place under `max_connections`.
pub struct Hijacked {
    /// `None` only inside `into_parts`.
    stream: Option<TcpStream>,
    leftover: Vec<u8>,
    /// How much of `leftover` `Read` has returned.
    consumed: usize,
    /// The loop that counts this connection; `None` once the count ended.
    mailbox: Option<Arc<Mailbox>>,
}

impl Hijacked {
    /// The socket (`&TcpStream` implements `Read` and `Write` too). Reading it directly skips
    /// what remains of [`leftover`](Hijacked::leftover).
    pub fn stream(&self) -> &TcpStream {
        self.stream
            .as_ref()
            .expect("the stream is only taken by into_parts")
    }

    /// The bytes read past the request that `Read` has not returned yet.
    pub fn leftover(&self) -> &[u8] {
        &self.leftover[self.consumed..]
    }

    /// The socket and the unread leftover bytes, for a new owner that manages the socket
    /// itself. The library no longer counts the connection toward `max_connections`.
    pub fn into_parts(mut self) -> (TcpStream, Vec<u8>) {
        self.end_count();
        let mut leftover = std::mem::take(&mut self.leftover);
        leftover.drain(..self.consumed);
        let stream = self.stream.take().expect("into_parts runs once");
        (stream, leftover)
    }

    fn end_count(&mut self) {
        if let Some(mailbox) = self.mailbox.take() {
            mailbox.release_taken();
        }
    }
}

impl Read for Hijacked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.leftover();
        if !left.is_empty() {
            let n = left.len().min(buf.len());
            buf[..n].copy_from_slice(&left[..n]);
            self.consumed += n;
            return Ok(n);
        }
        self.stream().read(buf)
    }
}

impl Write for Hijacked {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream().write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.stream().write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Hijacked {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream().as_fd()
    }
}

impl AsRawFd for Hijacked {
    fn as_raw_fd(&self) -> RawFd {
        self.stream().as_raw_fd()
    }
}

impl Drop for Hijacked {
    fn drop(&mut self) {
        // The socket closes first, so that the loop woken by the release may accept into the
        // descriptor it freed.
        self.stream = None;
        self.end_count();
    }
}

impl std::fmt::Debug for Hijacked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hijacked")
            .field("fd", &self.stream.as_ref().map(AsRawFd::as_raw_fd))
            .field("leftover", &self.leftover().len())
            .finish()
    }
}

/// Hands a connection whose response is written to its new owner. The connection is already
/// out of the loop's table; `sock` is still registered.
pub(crate) fn hand_over(
    sock: socket2::Socket,
    on_conn: HijackFn,
    leftover: Vec<u8>,
    registry: &mio::Registry,
    mailbox: &Arc<Mailbox>,
    log: &dyn Logger,
) {
    // A descriptor the new owner keeps must leave the epoll set now: closing it would not.
    let fd = sock.as_raw_fd();
    let _ = registry.deregister(&mut mio::unix::SourceFd(&fd));
    let stream = TcpStream::from(std::os::fd::OwnedFd::from(sock));
    if let Err(e) = stream.set_nonblocking(false) {
        log.log(
            Level::Warn,
            &format!("cannot hand a connection over ({e}); closing it"),
        );
        return;
    }
    mailbox.count_taken();
    let conn = Hijacked {
        stream: Some(stream),
        leftover,
        consumed: 0,
        mailbox: Some(Arc::clone(mailbox)),
    };
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| on_conn(conn))) {
        log.log(
            Level::Error,
            &format!(
                "the callback taking over a connection panicked: {}",
                panic_message(&*p)
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn reads_give_the_leftover_first_and_the_count_ends_once() {
        let (mut client, server) = pair();
        let mailbox = Mailbox::new();
        mailbox.count_taken();
        let mut h = Hijacked {
            stream: Some(server),
            leftover: b"abc".to_vec(),
            consumed: 0,
            mailbox: Some(Arc::clone(&mailbox)),
        };
        client.write_all(b"def").unwrap();
        let mut buf = [0u8; 2];
        assert_eq!(h.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf, b"ab");
        assert_eq!(h.leftover(), b"c");
        let (stream, rest) = h.into_parts();
        assert_eq!(rest, b"c");
        assert_eq!(mailbox.taken(), 0);
        let mut got = [0u8; 3];
        (&stream).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"def");
    }

    #[test]
    fn dropping_closes_the_socket_and_ends_the_count() {
        let (mut client, server) = pair();
        let mailbox = Mailbox::new();
        mailbox.count_taken();
        drop(Hijacked {
            stream: Some(server),
            leftover: Vec::new(),
            consumed: 0,
            mailbox: Some(Arc::clone(&mailbox)),
        });
        assert_eq!(mailbox.taken(), 0);
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap(), 0, "the peer sees the close");
    }
}
