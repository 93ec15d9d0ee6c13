//! NOT PART OF THE API: entry points for this crate's own conformance tests (`tests/http_*.rs`)
//! and fuzz targets (`fuzz/`). Hidden from the docs, unstable, and may change or disappear in
//! any release. Applications use `Prefork::listen_and_serve`.

use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use super::chunked::{ChunkLimits, ChunkedDecoder, Decoded};
use super::date::DateCache;
use super::request::Handler;
use super::scan::{HeadScan, Scan};
use super::session::{Ctx, Exec, Limits, Scratch, Session};
use super::{Listening, ServeControl, parse};
use crate::config::HttpConfig;
use crate::error::Error;
use crate::log::Logger;

/// Runs the engine on the calling thread exactly as a child does, with a caller-owned stop
/// pipe (`stop_fd`: the non-blocking read end; write a byte to drain, `b'K'` to stop without
/// grace) and an optional lifeline (`lifeline_fd`: EOF means the master died).
#[allow(clippy::too_many_arguments)]
pub fn serve_for_tests(
    listener: TcpListener,
    handler: &Arc<dyn Handler>,
    cfg: &HttpConfig,
    stop_fd: RawFd,
    lifeline_fd: Option<RawFd>,
    on_master_death: Option<&mut (dyn FnMut() + Send)>,
    grace_period: Duration,
    log: &dyn Logger,
) -> Result<(), Error> {
    let listening = Listening::new(listener.into(), cfg.proxy_protocol)?;
    let ctl = (stop_fd, lifeline_fd, on_master_death, grace_period);
    serve_listening(vec![listening], handler, cfg, ctl, log)
}

/// As [`serve_for_tests`] for several listeners (TCP or Unix), each with its PROXY protocol
/// setting, as a child of a master with several listeners serves them.
#[allow(clippy::too_many_arguments)]
pub fn serve_many_for_tests(
    listeners: Vec<(std::os::fd::OwnedFd, bool)>,
    handler: &Arc<dyn Handler>,
    cfg: &HttpConfig,
    stop_fd: RawFd,
    grace_period: Duration,
    log: &dyn Logger,
) -> Result<(), Error> {
    let listening = listeners
        .into_iter()
        .map(|(fd, proxy)| Listening::new(fd, proxy))
        .collect::<Result<_, _>>()?;
    serve_listening(
        listening,
        handler,
        cfg,
        (stop_fd, None, None, grace_period),
        log,
    )
}

type TestControl<'a> = (
    RawFd,
    Option<RawFd>,
    Option<&'a mut (dyn FnMut() + Send)>,
    Duration,
);

fn serve_listening(
    listening: Vec<Listening>,
    handler: &Arc<dyn Handler>,
    cfg: &HttpConfig,
    (wake_fd, lifeline_fd, on_master_death, grace_period): TestControl<'_>,
    log: &dyn Logger,
) -> Result<(), Error> {
    cfg.validate()?;
    let ctl = ServeControl {
        wake_fd,
        lifeline_fd,
        on_master_death,
        grace_period,
        tls: None,
        beat: None,
    };
    super::serve(listening, handler, cfg, ctl, log)
}

/// Scans, parses and checks `data` as one request head the way the engine does. Returns the
/// head's length, or the status the engine would answer with (0 while incomplete).
pub fn check_head(data: &[u8], cfg: &HttpConfig) -> Result<usize, u16> {
    let limits = Limits::new(cfg);
    let mut start = 0;
    while data[start..].starts_with(b"\r\n") {
        start += 2;
    }
    if data[start..].starts_with(b"\n") {
        return Err(400);
    }
    let mut scan = HeadScan::default();
    let n = match scan.scan(&data[start..], &limits.scan) {
        Scan::Incomplete => return Err(0),
        Scan::Error(s) => return Err(s.0),
        Scan::Complete(n) => n,
    };
    let mut head = data[start..start + n].to_vec();
    parse::check_version(&mut head, scan.request_line_len()).map_err(|s| s.0)?;
    let mut slots = vec![MaybeUninit::uninit(); cfg.max_headers];
    let req = parse::parse_head(&head, &mut slots).map_err(|s| s.0)?;
    parse::analyze(&req).map_err(|s| s.0)?;
    Ok(start + n)
}

/// Decodes a chunked body fed in pieces cut at `cuts` (offsets into `input`, any order).
/// Returns the body and the bytes the encoding took (`None` while incomplete), or the error
/// status.
pub fn decode_chunked(
    input: &[u8],
    cuts: &[usize],
    cfg: &HttpConfig,
) -> Result<(Vec<u8>, Option<usize>), u16> {
    let lim = ChunkLimits {
        max_body: cfg.max_body_size as u64,
        max_ext: cfg.max_chunk_ext_size,
        max_trailer: cfg.max_trailer_size,
        max_trailers: cfg.max_headers,
    };
    let mut points: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    points.push(input.len());
    points.sort_unstable();
    let mut decoder = ChunkedDecoder::default();
    let mut out = Vec::new();
    let mut at = 0;
    for p in points {
        if p <= at {
            continue;
        }
        match decoder
            .decode(&input[at..p], &mut out, &lim)
            .map_err(|s| s.0)?
        {
            Decoded::NeedMore => at = p,
            Decoded::Done(k) => return Ok((out, Some(at + k))),
        }
    }
    Ok((out, None))
}

/// What an in-memory connection produced.
#[derive(Debug, PartialEq, Eq)]
pub struct ConnectionRun {
    /// Every byte the engine wrote.
    pub output: Vec<u8>,
    /// The engine decided to close the connection.
    pub closed: bool,
}

/// One connection's state machine driven from memory, with handlers run inline and a frozen
/// clock: what the event loop does with a socket, minus the socket.
pub struct MemoryConnection<'h> {
    limits: Limits,
    date: DateCache,
    scratch: Scratch,
    session: Session,
    handler: &'h dyn Handler,
    log: Quiet,
}

/// A logger that drops every line. The fuzzers make handlers panic by the million: their log
/// lines would only slow them down.
pub(crate) struct Quiet;

impl Logger for Quiet {
    fn log(&self, _level: crate::log::Level, _message: &str) {}
}

impl<'h> MemoryConnection<'h> {
    pub fn new(cfg: &HttpConfig, handler: &'h dyn Handler) -> MemoryConnection<'h> {
        MemoryConnection {
            limits: Limits::new(cfg),
            date: DateCache::fixed(784_111_777),
            scratch: Scratch::new(cfg.max_headers),
            session: Session::new(None, None),
            handler,
            log: Quiet,
        }
    }

    /// Lets the state machine work on what it has, moving its output to `out`. Returns
    /// whether anything changed.
    pub fn step(&mut self, out: &mut Vec<u8>) -> bool {
        let mut ctx = Ctx {
            limits: &self.limits,
            date: self.date.get(),
            exec: Exec::Inline(self.handler),
            scratch: &mut self.scratch,
            draining: false,
            conn: (0, 0),
            plain_socket: true,
            gather: false,
            log: &self.log,
        };
        let progress = self.session.process(&mut ctx);
        out.extend_from_slice(self.session.output());
        let n = self.session.out_pending();
        self.session.sent(n);
        // As the event loop does after each drive: an idle session lends its buffers back.
        self.session.park(&mut self.scratch);
        progress || n > 0
    }

    /// One read of at most `bytes.len()` bytes (less if the buffer offers less); returns how
    /// many were taken.
    pub fn read(&mut self, bytes: &[u8]) -> usize {
        let buf = self.session.read_buf(&mut self.scratch);
        let n = buf.len().min(bytes.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        self.session.filled(n);
        n
    }

    /// Feeds `bytes` as reads and steps until the machine wants more, moving output to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) {
        while !bytes.is_empty() && !self.finished() {
            if self.wants_input() {
                let n = self.read(bytes);
                bytes = &bytes[n..];
            }
            while self.step(out) {}
        }
    }

    pub fn wants_input(&self) -> bool {
        self.session.wants_input(&self.limits)
    }

    /// The engine will produce nothing more: it would close the connection.
    pub fn finished(&self) -> bool {
        self.session.finished()
    }

    /// The peer closed its side.
    pub fn eof(&mut self) {
        self.session.on_eof();
    }
}

/// Feeds `input` to one connection in reads cut at `cuts` (offsets, any order), then signals
/// end of input. Deterministic: the output depends only on the bytes, the cut points can only
/// move where `100 Continue` interim responses appear.
pub fn run_connection(
    input: &[u8],
    cuts: &[usize],
    cfg: &HttpConfig,
    handler: &dyn Handler,
) -> ConnectionRun {
    let mut conn = MemoryConnection::new(cfg, handler);
    let mut output = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    points.push(input.len());
    points.sort_unstable();
    points.dedup();
    let mut at = 0;
    for p in points {
        while at < p {
            while conn.step(&mut output) {}
            if conn.finished() {
                return ConnectionRun {
                    output,
                    closed: true,
                };
            }
            if !conn.wants_input() {
                // Only a body stream or the output cap can stop input here, and `step` always
                // drains the output: the machine is stuck, which is a bug.
                panic!("the connection neither finishes nor takes input");
            }
            at += conn.read(&input[at..p]);
        }
    }
    while conn.step(&mut output) {}
    // Whether the engine itself decided to close, before learning that the input ended.
    let closed = conn.finished();
    if !closed {
        conn.eof();
        while conn.step(&mut output) {}
    }
    ConnectionRun { output, closed }
}

/// A TLS connection through the event loop's own turn and TLS transport, over a Unix socket
/// pair with small buffers (so writes and reads stop part way), against a rustls client in
/// memory. The client sends `input` as its plaintext, its records cut into writes at `cuts`
/// (offsets into the ciphertext, any order); handlers run inline under a frozen clock, as in
/// `run_connection`, whose output the plaintext received here must equal.
pub struct TlsRun {
    /// The plaintext the client received.
    pub run: ConnectionRun,
    /// The server ended the connection with close_notify.
    pub close_notify: bool,
    /// The buffer bytes the TLS transport held once everything was delivered and the
    /// connection waited, still open, for more (None: it never did).
    pub idle_buffers: Option<usize>,
}

pub fn run_tls_connection(
    input: &[u8],
    cuts: &[usize],
    cfg: &HttpConfig,
    handler: &dyn Handler,
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
) -> TlsRun {
    use super::transport::{Drive, Io, Sock, TLS_READ, Transport, turn};
    let (server_end, client_end) = tiny_socket_pair();
    let Some(Io::Tls(mut tls)) = Io::tls(server, cfg.max_output_buffer) else {
        panic!("a TLS connection for a valid config");
    };
    let mut sock = Sock {
        fd: server_end.as_raw_fd(),
        readable: true,
        writable: true,
        peer_hup: false,
    };
    let limits = Limits::new(cfg);
    let date = DateCache::fixed(784_111_777);
    let mut scratch = Scratch::new(cfg.max_headers);
    let mut session = Session::new(None, None);
    let mut tls_in = vec![0u8; TLS_READ];
    let mut peer = rustls::ClientConnection::new(client.clone(), "localhost".try_into().unwrap())
        .expect("client connection");
    std::io::Write::write_all(&mut peer.writer(), input).expect("client buffers its input");
    let mut wire = Vec::new(); // client ciphertext not yet on the socket
    let mut sent = 0usize; // ciphertext offset of wire[0]
    let mut points: Vec<usize> = cuts.to_vec();
    points.sort_unstable();
    let mut output = Vec::new();
    let (mut closed, mut eof_sent) = (false, false);
    let mut idle_buffers = None;
    for _round in 0..100_000 {
        while peer.wants_write() {
            let _ = peer.write_tls(&mut wire);
        }
        // Up to the next cut, as far as the socket takes it.
        let next = points
            .iter()
            .copied()
            .find(|&p| p > sent)
            .unwrap_or(usize::MAX);
        let take = wire.len().min(next - sent);
        let moved = if take > 0 {
            send(client_end.as_raw_fd(), &wire[..take])
        } else {
            0
        };
        wire.drain(..moved);
        sent += moved;
        if moved > 0 {
            sock.readable = true;
        }
        sock.writable = true;
        let mut ctx = Ctx {
            limits: &limits,
            date: date.get(),
            exec: Exec::Inline(handler),
            scratch: &mut scratch,
            draining: false,
            conn: (0, 0),
            plain_socket: false,
            gather: false,
            log: &Quiet,
        };
        let (mut budget, draining) = (usize::MAX, false);
        let (mut body_progress, mut wrote) = (false, false);
        let outcome = turn!(
            *tls,
            sock,
            session,
            ctx,
            &mut tls_in,
            budget,
            draining,
            body_progress,
            wrote,
            false
        );
        // The event loop's timers use these; this run has no clock.
        let _ = (body_progress, wrote, &mut budget);
        session.park(&mut scratch);
        let got = drain_socket(client_end.as_raw_fd(), &mut peer, &mut output);
        match outcome {
            Drive::Close => break,
            Drive::Finish => {
                // As in `run_connection`: closed by the engine's own decision, not the EOF.
                closed = !eof_sent;
                let mut s = sock;
                Io::Tls(tls).close_notify(&mut s);
                drain_socket(client_end.as_raw_fd(), &mut peer, &mut output);
                break;
            }
            Drive::Again | Drive::Wait => {}
        }
        let idle = moved == 0 && !got && !peer.wants_write() && !tls.holds_output();
        if idle && wire.is_empty() {
            if eof_sent {
                break;
            }
            idle_buffers = Some(tls.buffered());
            // Everything is delivered: the client says close_notify and leaves, as the plain
            // run signals end of input.
            peer.send_close_notify();
            while peer.wants_write() {
                let _ = peer.write_tls(&mut wire);
            }
            let n = send(client_end.as_raw_fd(), &wire);
            wire.drain(..n);
            let _ = nix::sys::socket::shutdown(
                client_end.as_raw_fd(),
                nix::sys::socket::Shutdown::Write,
            );
            eof_sent = true;
            sock.readable = true;
            sock.peer_hup = true;
        }
    }
    TlsRun {
        close_notify: peer_saw_close_notify(&mut peer),
        run: ConnectionRun { output, closed },
        idle_buffers,
    }
}

fn peer_saw_close_notify(peer: &mut rustls::ClientConnection) -> bool {
    peer.process_new_packets()
        .map(|s| s.peer_has_closed())
        .unwrap_or(false)
}

/// A Unix stream socket pair, non-blocking, with the smallest buffers the kernel allows.
fn tiny_socket_pair() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, setsockopt, socketpair, sockopt};
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    for fd in [&a, &b] {
        let _ = setsockopt(fd, sockopt::SndBuf, &1024);
        let _ = setsockopt(fd, sockopt::RcvBuf, &1024);
    }
    (a, b)
}

fn send(fd: RawFd, buf: &[u8]) -> usize {
    nix::sys::socket::send(fd, buf, nix::sys::socket::MsgFlags::MSG_NOSIGNAL).unwrap_or(0)
}

/// Moves what the server sent into the client and its plaintext into `out`; true if any came.
fn drain_socket(fd: RawFd, peer: &mut rustls::ClientConnection, out: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    let mut any = false;
    loop {
        let n = match nix::sys::socket::recv(fd, &mut buf, nix::sys::socket::MsgFlags::empty()) {
            Ok(0) | Err(_) => return any,
            Ok(n) => n,
        };
        any = true;
        let mut rd = &buf[..n];
        while !rd.is_empty() {
            if peer.read_tls(&mut rd).is_err() || peer.process_new_packets().is_err() {
                return any;
            }
            let mut plain = [0u8; 4096];
            while let Ok(k @ 1..) = std::io::Read::read(&mut peer.reader(), &mut plain) {
                out.extend_from_slice(&plain[..k]);
            }
        }
    }
}

/// The server config a child would build for this certificate and key (PEM).
pub fn tls_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<rustls::ServerConfig>, Error> {
    crate::tls::config_from_pem(cert_pem, key_pem, &Quiet)
}
