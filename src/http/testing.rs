//! NOT PART OF THE API: entry points for this crate's own conformance tests (`tests/http_*.rs`)
//! and fuzz targets (`fuzz/`). Hidden from the docs, unstable, and may change or disappear in
//! any release. Applications use `Prefork::listen_and_serve`.

use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use super::chunked::{ChunkLimits, ChunkedDecoder, Decoded};
use super::date::DateCache;
use super::request::Handler;
use super::scan::{HeadScan, Scan};
use super::session::{Ctx, Exec, Limits, Scratch, Session};
use super::{ServeControl, parse};
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
    cfg.validate()?;
    let ctl = ServeControl {
        wake_fd: stop_fd,
        lifeline_fd,
        on_master_death,
        grace_period,
        tls: None,
    };
    super::serve(listener, handler, cfg, ctl, log)
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
            session: Session::new(None),
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
