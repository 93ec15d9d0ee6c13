//! What lies between a connection's socket and its session: nothing (plain HTTP) or a rustls
//! `ServerConnection`. A drive of a connection (`turn!`) runs two transport steps, `flush`
//! (session output to the socket) and `fill` (socket input to the session), until nothing
//! moves; the session never sees which transport it has.
//!
//! TLS keeps the batching rule of the plain path: the whole batch of responses the session
//! produced is encrypted first (rustls cuts it into records of at most 16 KiB), then all
//! pending records go out in one `sendmsg`. On input, one `recv` of up to `TLS_READ` bytes is
//! decrypted at once and every plaintext byte moves to the session before the step returns,
//! so nothing is left behind in rustls between turns.
//!
//! A client that speaks plain HTTP to the TLS port gets a clear-text 400 and a close, as with
//! nginx: the first byte of a TLS connection is a record type (20..=24) or, from an SSLv2
//! hello, 0x80 and above, never an upper-case letter, which every request method starts with.

use std::io::{self, IoSlice, Write};
use std::os::fd::RawFd;
use std::sync::Arc;

use nix::sys::socket::MsgFlags;
use rustls::{ServerConfig, ServerConnection};

use super::session::{Scratch, Session};

/// Ciphertext taken per `recv`: one whole maximal record (16 KiB of data, header and tag).
pub(crate) const TLS_READ: usize = 16 * 1024 + 5 + 256;

/// The answer to plain HTTP on the TLS port.
const PLAIN_HTTP_REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\n\
Content-Length: 48\r\n\
Connection: close\r\n\
\r\n\
This port speaks HTTPS: use an https:// address\n";

/// How a drive of one connection ended.
pub(crate) enum Drive {
    /// Waiting for the socket or a handler thread.
    Wait,
    /// Budget spent with work left: continue next turn.
    Again,
    /// Everything is sent and no response will follow: close gracefully.
    Finish,
    /// Drop the connection now (error, reset, idle while draining).
    Close,
}

/// The steps of one drive of a connection, with transport `$io`: answer what is buffered,
/// flush, fill, until nothing moves or the budget is spent; evaluates to the outcome and sets
/// `$body_progress` (body bytes arrived) and `$wrote` (output went out). `$keep_in_drain`,
/// evaluated only while draining with the session idle, keeps a connection that still awaits
/// its first request. A macro, expanded
/// once per transport: the plain path pays no dispatch, and its state stays in the caller's
/// locals (a generic function returning it cost 45 instructions per request at depth 1).
macro_rules! turn {
    ($io:expr, $sock:expr, $session:expr, $ctx:expr, $tls_in:expr, $budget:ident,
     $draining:expr, $body_progress:ident, $wrote:ident, $keep_in_drain:expr) => {{
        // Set once a draining drive found the session idle and read once more before the
        // close: a request already in the socket, announced by no event yet (the drain began
        // mid-turn), is then served rather than reset.
        let mut looked = false;
        loop {
            let mut progress = $session.process(&mut $ctx);
            match $io.flush(&mut $sock, &mut $session, &mut $budget) {
                Ok(false) => {}
                Ok(true) => {
                    progress = true;
                    $wrote = true;
                }
                Err(_) => break $crate::http::transport::Drive::Close,
            }
            if $session.out_pending() == 0 && !$io.holds_output() {
                if $session.finished() || $io.refused() {
                    break $crate::http::transport::Drive::Finish;
                }
                if $draining && $session.is_idle() && !$keep_in_drain {
                    if looked {
                        break $crate::http::transport::Drive::Close;
                    }
                    looked = true;
                    $sock.readable = true;
                }
            }
            if $session.wants_input($ctx.limits) && $io.can_fill(&$sock) {
                if $budget == 0 {
                    break $crate::http::transport::Drive::Again;
                }
                match $io.fill(
                    &mut $sock,
                    &mut $session,
                    $ctx.scratch,
                    $tls_in,
                    &mut $budget,
                ) {
                    Ok($crate::http::transport::Filled::Nothing) => {}
                    Ok($crate::http::transport::Filled::Data) => {
                        $body_progress = true;
                        progress = true;
                    }
                    Ok($crate::http::transport::Filled::Other) => progress = true,
                    Err(_) => break $crate::http::transport::Drive::Close,
                }
            }
            if !progress {
                break if looked && $session.is_idle() {
                    $crate::http::transport::Drive::Close
                } else {
                    $crate::http::transport::Drive::Wait
                };
            }
            if $budget == 0 {
                break $crate::http::transport::Drive::Again;
            }
        }
    }};
}
pub(crate) use turn;

/// A connection's socket and what its readiness events told.
#[derive(Clone, Copy)]
pub(crate) struct Sock {
    pub fd: RawFd,
    /// The socket may have input (no WouldBlock or short read since the last edge).
    pub readable: bool,
    /// The socket may take output.
    pub writable: bool,
    /// The last event reported the peer's FIN: a short read has not seen the EOF yet.
    pub peer_hup: bool,
}

/// What a `fill` did.
pub(crate) enum Filled {
    /// Nothing could be read.
    Nothing,
    /// Bytes arrived for the session.
    Data,
    /// Something else changed (EOF, handshake progress, a refusal to send).
    Other,
}

/// A failed step: the connection is to be dropped.
pub(crate) struct Broken;

pub(crate) enum Io {
    Plain,
    Tls(Box<Tls>),
}

pub(crate) struct Tls {
    conn: ServerConnection,
    /// No byte was received yet: the first tells TLS from plain HTTP.
    fresh: bool,
    /// The client spoke plain HTTP: it gets a clear-text refusal and the close.
    refused: bool,
    /// What is left to send of that refusal.
    refusal: Option<&'static [u8]>,
}

/// A connection's transport, as the event loop's turn drives it. The turn is generic over
/// it, so the plain path pays for no dispatch: the choice is made once per drive.
pub(crate) trait Transport {
    /// Sends what the session has for the peer; true on progress.
    fn flush(
        &mut self,
        sock: &mut Sock,
        session: &mut Session,
        budget: &mut usize,
    ) -> Result<bool, Broken>;

    /// Reads what the socket has for the session.
    fn fill(
        &mut self,
        sock: &mut Sock,
        session: &mut Session,
        scratch: &mut Scratch,
        tls_in: &mut [u8],
        budget: &mut usize,
    ) -> Result<Filled, Broken>;

    /// Reading may give the session something now.
    fn can_fill(&self, sock: &Sock) -> bool;

    /// Output is waiting below the session (encrypted records, a refusal).
    fn holds_output(&self) -> bool;

    /// No response will follow: the connection closes once the output is out.
    fn refused(&self) -> bool;
}

/// Plain HTTP: the socket is the session's.
pub(crate) struct Plain;

impl Transport for Plain {
    #[inline(always)]
    fn flush(
        &mut self,
        sock: &mut Sock,
        session: &mut Session,
        budget: &mut usize,
    ) -> Result<bool, Broken> {
        flush_plain(sock, session, budget)
    }

    #[inline(always)]
    fn fill(
        &mut self,
        sock: &mut Sock,
        session: &mut Session,
        scratch: &mut Scratch,
        _tls_in: &mut [u8],
        budget: &mut usize,
    ) -> Result<Filled, Broken> {
        fill_plain(sock, session, scratch, budget)
    }

    #[inline(always)]
    fn can_fill(&self, sock: &Sock) -> bool {
        sock.readable
    }

    #[inline(always)]
    fn holds_output(&self) -> bool {
        false
    }

    #[inline(always)]
    fn refused(&self) -> bool {
        false
    }
}

impl Io {
    pub(crate) fn tls(config: &Arc<ServerConfig>, max_output: usize) -> Option<Io> {
        let mut conn = ServerConnection::new(config.clone()).ok()?;
        // Room for a whole batch of output, so it is encrypted in one go.
        conn.set_buffer_limit(Some(max_output.max(64 * 1024)));
        Some(Io::Tls(Box::new(Tls {
            conn,
            fresh: true,
            refused: false,
            refusal: None,
        })))
    }

    #[inline]
    pub(crate) fn holds_output(&self) -> bool {
        match self {
            Io::Plain => false,
            Io::Tls(t) => t.holds_output(),
        }
    }

    /// Before a graceful close: TLS says close_notify, as far as the socket takes it now.
    pub(crate) fn close_notify(&mut self, sock: &mut Sock) {
        if let Io::Tls(t) = self
            && !t.refused
            && !t.fresh
        {
            t.conn.send_close_notify();
            while t.conn.wants_write() {
                if t.conn.write_tls(&mut SockWriter(sock.fd)).is_err() {
                    break;
                }
            }
        }
    }
}

// Inlined into the event loop's turn, as they were before the transport layer: out of line,
// the two cost 150 instructions more per request at depth 1 (callgrind, demo_server).
#[inline(always)]
fn flush_plain(sock: &mut Sock, session: &mut Session, budget: &mut usize) -> Result<bool, Broken> {
    if session.out_pending() == 0 || !sock.writable {
        return Ok(false);
    }
    let out = session.output();
    match send(sock.fd, out) {
        Ok(n) => {
            if n < out.len() {
                sock.writable = false;
            }
            session.sent(n);
            *budget = budget.saturating_sub(n);
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            sock.writable = false;
            Ok(false)
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
        Err(_) => Err(Broken),
    }
}

#[inline(always)]
fn fill_plain(
    sock: &mut Sock,
    session: &mut Session,
    scratch: &mut Scratch,
    budget: &mut usize,
) -> Result<Filled, Broken> {
    let buf = session.read_buf(scratch);
    let room = buf.len();
    match recv(sock.fd, buf) {
        Ok(0) => {
            session.on_eof();
            sock.readable = false;
            Ok(Filled::Other)
        }
        Ok(n) => {
            session.filled(n);
            // Edge-triggered: a short read drained the socket, and new data will raise a new
            // edge, so the next read would only say WouldBlock. Not so for a FIN that came
            // with the data: only the next read reports it.
            if n < room && !sock.peer_hup {
                sock.readable = false;
            }
            *budget = budget.saturating_sub(n);
            Ok(Filled::Data)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            sock.readable = false;
            Ok(Filled::Nothing)
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Filled::Other),
        Err(_) => Err(Broken),
    }
}

impl Transport for Tls {
    fn flush(
        &mut self,
        sock: &mut Sock,
        session: &mut Session,
        budget: &mut usize,
    ) -> Result<bool, Broken> {
        if let Some(rest) = self.refusal {
            return self.send_refusal(sock, rest);
        }
        let mut progress = self.encrypt(session);
        while sock.writable && self.conn.wants_write() {
            match self.conn.write_tls(&mut SockWriter(sock.fd)) {
                Ok(n) => {
                    *budget = budget.saturating_sub(n);
                    progress = true;
                    // The records sent made room: encrypt what did not fit before.
                    progress |= self.encrypt(session);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Broken),
            }
        }
        Ok(progress)
    }

    fn fill(
        &mut self,
        sock: &mut Sock,
        session: &mut Session,
        scratch: &mut Scratch,
        tls_in: &mut [u8],
        budget: &mut usize,
    ) -> Result<Filled, Broken> {
        let want = tls_in.len().min((*budget).max(1));
        let buf = &mut tls_in[..want];
        let n = match recv(sock.fd, buf) {
            Ok(0) => {
                sock.readable = false;
                // Without close_notify too: HTTP framing, not the TLS close, says whether a
                // request is whole, so a truncation cannot pass for a complete request.
                let _ = self.conn.read_tls(&mut &[][..]);
                session.on_eof();
                return Ok(Filled::Other);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                sock.readable = false;
                return Ok(Filled::Nothing);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Filled::Other),
            Err(_) => return Err(Broken),
        };
        if n < want && !sock.peer_hup {
            sock.readable = false;
        }
        *budget = budget.saturating_sub(n);
        if std::mem::take(&mut self.fresh) && buf[0].is_ascii_uppercase() {
            self.refused = true;
            self.refusal = Some(PLAIN_HTTP_REFUSAL);
            return Ok(Filled::Other);
        }
        self.decrypt(sock.fd, &buf[..n], session, scratch)?;
        Ok(Filled::Data)
    }

    fn can_fill(&self, sock: &Sock) -> bool {
        sock.readable && !self.refused
    }

    fn holds_output(&self) -> bool {
        self.refusal.is_some() || self.conn.wants_write()
    }

    fn refused(&self) -> bool {
        self.refused
    }
}

impl Tls {
    /// Hands the session's output to rustls, which encrypts it at once (as much as its
    /// buffer limit takes); true when it took any.
    fn encrypt(&mut self, session: &mut Session) -> bool {
        if session.out_pending() == 0 {
            return false;
        }
        match self.conn.writer().write(session.output()) {
            Ok(n) if n > 0 => {
                session.sent(n);
                true
            }
            _ => false,
        }
    }

    fn send_refusal(&mut self, sock: &mut Sock, rest: &'static [u8]) -> Result<bool, Broken> {
        if !sock.writable {
            return Ok(false);
        }
        match send(sock.fd, rest) {
            Ok(n) if n == rest.len() => {
                self.refusal = None;
                Ok(true)
            }
            Ok(n) => {
                sock.writable = false;
                self.refusal = Some(&rest[n..]);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                sock.writable = false;
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(_) => Err(Broken),
        }
    }

    /// Feeds `ciphertext` to rustls and moves every plaintext byte to the session.
    fn decrypt(
        &mut self,
        fd: RawFd,
        mut ciphertext: &[u8],
        session: &mut Session,
        scratch: &mut Scratch,
    ) -> Result<(), Broken> {
        while !ciphertext.is_empty() {
            match self.conn.read_tls(&mut ciphertext) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => return Err(Broken),
            }
            let state = match self.conn.process_new_packets() {
                Ok(state) => state,
                Err(_) => {
                    // rustls queued an alert saying why: a best-effort send before the drop.
                    let _ = self.conn.write_tls(&mut SockWriter(fd));
                    return Err(Broken);
                }
            };
            let mut left = state.plaintext_bytes_to_read();
            while left > 0 {
                let buf = session.read_buf(scratch);
                let n = match io::Read::read(&mut self.conn.reader(), buf) {
                    Ok(n) if n > 0 => n,
                    _ => break,
                };
                session.filled(n);
                left -= n.min(left);
            }
            if state.peer_has_closed() {
                session.on_eof();
            }
        }
        Ok(())
    }
}

/// The socket as rustls writes to it: `send`/`sendmsg` with MSG_NOSIGNAL.
struct SockWriter(RawFd);

impl Write for SockWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send(self.0, buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        nix::sys::socket::sendmsg::<()>(self.0, bufs, &[], MsgFlags::MSG_NOSIGNAL, None)
            .map_err(io::Error::from)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `send` with MSG_NOSIGNAL: the host may leave SIGPIPE at its default (C programs do), and a
/// peer's reset must not kill the child.
pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    nix::sys::socket::send(fd, buf, MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from)
}

pub(crate) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    nix::sys::socket::recv(fd, buf, MsgFlags::empty()).map_err(io::Error::from)
}
