//! What lies between a connection's socket and its session: nothing (plain HTTP) or a rustls
//! `UnbufferedServerConnection`. A drive of a connection (`turn!`) runs two transport steps,
//! `flush` (session output to the socket) and `fill` (socket input to the session), until
//! nothing moves; the session never sees which transport it has.
//!
//! TLS keeps the batching rule of the plain path: the whole batch of responses the session
//! produced is encrypted first (rustls cuts it into records of at most 16 KiB, one after the
//! other in one buffer), then they go out in one `send`. On input, one `recv` of up to
//! `TLS_READ` bytes is decrypted at once, in place, and every plaintext byte moves to the
//! session before the step returns.
//!
//! rustls's unbuffered API leaves the buffers to us, so that an idle connection holds none:
//! ciphertext is read into the event loop's buffer, and only what rustls has not consumed (a
//! part of a record) is copied into the connection; encrypted records wait in the connection
//! until sent, then their buffer is freed. The buffered `ServerConnection` kept a 4 KiB input
//! buffer per connection for good, half of what an idle TLS connection cost (`tls-memory` in
//! bench/run: 8.3 KB per connection, against nginx's 15.9 KB).
//!
//! A client that speaks plain HTTP to the TLS port gets a clear-text 400 and a close, as with
//! nginx: the first byte of a TLS connection is a record type (20..=24) or, from an SSLv2
//! hello, 0x80 and above, never an upper-case letter, which every request method starts with.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};

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
    conn: UnbufferedServerConnection,
    /// Ciphertext received and not yet consumed by rustls: part of a record, or the records of
    /// a handshake message not yet whole. Empty and unallocated between whole records, so an
    /// idle connection holds no input buffer (rustls's buffered `ServerConnection` keeps 4 KiB
    /// per connection for this, its deframer buffer: half of an idle TLS connection's memory).
    pending_in: Vec<u8>,
    /// Records encrypted and not yet sent (from `out_sent` on): freed once all are sent.
    out: Vec<u8>,
    out_sent: usize,
    /// No byte was received yet: the first tells TLS from plain HTTP.
    fresh: bool,
    /// The client spoke plain HTTP: it gets a clear-text refusal and the close.
    refused: bool,
    /// What is left to send of that refusal.
    refusal: Option<&'static [u8]>,
    /// Most ciphertext held for the socket before the session's output waits.
    out_limit: usize,
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
        let conn = UnbufferedServerConnection::new(config.clone()).ok()?;
        Some(Io::Tls(Box::new(Tls {
            conn,
            pending_in: Vec::new(),
            out: Vec::new(),
            out_sent: 0,
            fresh: true,
            refused: false,
            refusal: None,
            // Room for a whole batch of output, so it is encrypted in one go.
            out_limit: max_output.max(64 * 1024),
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
            t.queue_close_notify();
            let mut unbounded = usize::MAX;
            while sock.writable && t.holds_records() {
                if !matches!(t.send_records(sock, &mut unbounded), Ok(true)) {
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
        let mut progress = self.encrypt(session)?;
        while sock.writable && self.holds_records() {
            if !self.send_records(sock, budget)? {
                break;
            }
            progress = true;
            // The records sent made room: encrypt what did not fit before.
            progress |= self.encrypt(session)?;
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
        // Records are decrypted in place: in the loop's buffer when nothing was left over,
        // else behind what was. What rustls has not consumed stays for the next read.
        let mut held = std::mem::take(&mut self.pending_in);
        let input = if held.is_empty() {
            &mut buf[..n]
        } else {
            held.extend_from_slice(&buf[..n]);
            &mut held[..]
        };
        let used = self.decrypt(sock.fd, input, session, scratch)?;
        if used < input.len() {
            self.pending_in = input[used..].to_vec();
        }
        Ok(Filled::Data)
    }

    fn can_fill(&self, sock: &Sock) -> bool {
        sock.readable && !self.refused
    }

    fn holds_output(&self) -> bool {
        self.refusal.is_some() || self.holds_records()
    }

    fn refused(&self) -> bool {
        self.refused
    }
}

/// What to do after one state of rustls's connection was handled.
enum Step {
    /// Ask rustls for its next state.
    Again,
    /// Nothing more to do until more input arrives (or output is wanted).
    Done,
    /// The connection failed: rustls may have queued an alert saying why.
    Failed,
}

impl Tls {
    /// Bytes of buffer the connection holds (allocated, used or not): none while idle.
    pub(crate) fn buffered(&self) -> usize {
        self.pending_in.capacity() + self.out.capacity()
    }

    fn holds_records(&self) -> bool {
        self.out_sent < self.out.len()
    }

    /// Hands the session's output to rustls, which encrypts it at once into records held for
    /// the socket (unless as much as `out_limit` is held already); true when it took any.
    /// Before the handshake is complete the output waits.
    fn encrypt(&mut self, session: &mut Session) -> Result<bool, Broken> {
        if session.out_pending() == 0 || self.out.len() - self.out_sent >= self.out_limit {
            return Ok(false);
        }
        loop {
            let status = self.conn.process_tls_records(&mut self.pending_in);
            let discard = status.discard;
            let step = match status.state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    append(&mut self.out, |b| e.encode(b).map_err(encode_room))?;
                    Step::Again
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    Step::Again
                }
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    let data = session.output();
                    append(&mut self.out, |b| w.encrypt(data, b).map_err(encrypt_room))?;
                    let n = data.len();
                    session.sent(n);
                    return Ok(true);
                }
                Ok(_) => Step::Done,
                Err(_) => Step::Failed,
            };
            self.pending_in.drain(..discard);
            match step {
                Step::Again => {}
                Step::Done => return Ok(false),
                Step::Failed => return Err(Broken),
            }
        }
    }

    /// Queues close_notify after what is held for the socket.
    fn queue_close_notify(&mut self) {
        loop {
            let status = self.conn.process_tls_records(&mut self.pending_in);
            let discard = status.discard;
            let again = match status.state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    append(&mut self.out, |b| e.encode(b).map_err(encode_room)).is_ok()
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    true
                }
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    let _ = append(&mut self.out, |b| {
                        w.queue_close_notify(b).map_err(encrypt_room)
                    });
                    false
                }
                _ => false,
            };
            self.pending_in.drain(..discard);
            if !again {
                return;
            }
        }
    }

    /// One `send` of the records held; true when any went out. Their buffer is freed once
    /// all are sent, so an idle connection holds none.
    fn send_records(&mut self, sock: &mut Sock, budget: &mut usize) -> Result<bool, Broken> {
        match send(sock.fd, &self.out[self.out_sent..]) {
            Ok(n) => {
                self.out_sent += n;
                *budget = budget.saturating_sub(n);
                if self.out_sent == self.out.len() {
                    self.out = Vec::new();
                    self.out_sent = 0;
                } else {
                    sock.writable = false;
                }
                Ok(n > 0)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                sock.writable = false;
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(_) => Err(Broken),
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

    /// Feeds `ciphertext` to rustls, moves every plaintext byte to the session and queues
    /// what rustls answers (handshake messages, tickets, alerts); returns how many bytes of
    /// `ciphertext` rustls consumed. The rest (part of a record) must come first next time.
    fn decrypt(
        &mut self,
        fd: RawFd,
        ciphertext: &mut [u8],
        session: &mut Session,
        scratch: &mut Scratch,
    ) -> Result<usize, Broken> {
        let mut used = 0;
        loop {
            let status = self.conn.process_tls_records(&mut ciphertext[used..]);
            let mut discard = status.discard;
            let step = match status.state {
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    let mut step = Step::Again;
                    while let Some(record) = r.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                deliver(record.payload, session, scratch);
                            }
                            Err(_) => {
                                step = Step::Failed;
                                break;
                            }
                        }
                    }
                    step
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    match append(&mut self.out, |b| e.encode(b).map_err(encode_room)) {
                        Ok(()) => Step::Again,
                        Err(_) => Step::Failed,
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    Step::Again
                }
                Ok(ConnectionState::PeerClosed) => {
                    session.on_eof();
                    Step::Again
                }
                // Early data is off (the config accepts none): never here, refused if it were.
                Ok(ConnectionState::ReadEarlyData(_)) => Step::Failed,
                Ok(_) => Step::Done,
                Err(_) => Step::Failed,
            };
            used += discard;
            match step {
                Step::Again => {}
                Step::Done => return Ok(used),
                Step::Failed => {
                    self.send_alert(fd);
                    return Err(Broken);
                }
            }
        }
    }

    /// After a failure: the alert rustls queued, if any, with one best-effort send before the
    /// drop. Only while rustls holds output: it hands that out before it looks at any input,
    /// which after a failure it must not see again (it would fail on it once more, or find
    /// its handshake buffer gone).
    fn send_alert(&mut self, fd: RawFd) {
        while self.conn.wants_write() {
            let Ok(ConnectionState::EncodeTlsData(mut e)) =
                self.conn.process_tls_records(&mut []).state
            else {
                break;
            };
            if append(&mut self.out, |b| e.encode(b).map_err(encode_room)).is_err() {
                break;
            }
        }
        let _ = send(fd, &self.out[self.out_sent..]);
    }
}

/// Moves decrypted bytes into the session's input.
fn deliver(mut data: &[u8], session: &mut Session, scratch: &mut Scratch) {
    while !data.is_empty() {
        let buf = session.read_buf(scratch);
        let n = buf.len().min(data.len());
        if n == 0 {
            break;
        }
        buf[..n].copy_from_slice(&data[..n]);
        session.filled(n);
        data = &data[n..];
    }
}

/// Appends what `write` puts into a slice to `out`. `write` answers `Err(Some(size))` when
/// the slice is too small for it and `Err(None)` on failure: rustls sizes records first.
fn append(
    out: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> Result<(), Broken> {
    let start = out.len();
    let mut room = 0;
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Some(need)) if need > room => room = need,
            Err(_) => {
                out.truncate(start);
                return Err(Broken);
            }
        }
    }
}

fn encode_room(e: EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(required_size)
        }
        _ => None,
    }
}

fn encrypt_room(e: EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(required_size)
        }
        _ => None,
    }
}

// The two calls of every request go to the kernel through syscall(2), not libc's `send` and
// `recv`: those are cancellation points, and in a process with more than one thread (a Go
// host, handler threads) glibc wraps each in __pthread_enable_asynccancel and
// __pthread_disable_asynccancel, 66 instructions per request (bench/instructions, Go binding,
// depth 1). Nothing cancels the loop's thread.

/// `send` with MSG_NOSIGNAL: the host may leave SIGPIPE at its default (C programs do), and a
/// peer's reset must not kill the child.
pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    let flags = libc::c_long::from(libc::MSG_NOSIGNAL);
    // SAFETY: sendto(2) reads `buf.len()` bytes of `buf`, which is live for the call; no
    // address (NULL, 0).
    let n = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            libc::c_long::from(fd),
            buf.as_ptr(),
            buf.len(),
            flags,
            std::ptr::null::<libc::sockaddr>(),
            0usize,
        )
    };
    syscall_len(n)
}

pub(crate) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recvfrom(2) writes at most `buf.len()` bytes into `buf`, which is live and
    // exclusively borrowed for the call; no address is asked for (NULL, NULL).
    let n = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            libc::c_long::from(fd),
            buf.as_mut_ptr(),
            buf.len(),
            0 as libc::c_long,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    };
    syscall_len(n)
}

/// A byte count from syscall(2), or the error its -1 left in errno.
#[inline(always)]
fn syscall_len(n: libc::c_long) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
