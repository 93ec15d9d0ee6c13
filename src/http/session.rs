//! One connection's protocol state machine, free of I/O: received bytes go in through
//! `read_buf`/`filled`, responses come out through `output`/`sent`. The socket side
//! (`server.rs`) decides when to read and write; the fuzzer drives the same code from memory.
//!
//! Every complete request in the input is answered in order before the caller flushes, so a
//! pipelined batch costs one write. Nothing is allocated per request once the buffers are warm:
//! the input and output buffers, the de-chunked body, the response and the header arrays are
//! all reused.
//!
//! An idle keep-alive connection holds no buffer: `park` hands its empty buffers back to the
//! loop's `Scratch`, and the next read or response takes them from there (`unpark`). Thousands
//! of idle connections cost their state only, and steady traffic still allocates nothing.

use std::mem;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use super::chunked::{ChunkLimits, ChunkedDecoder, Decoded};
use super::date::DATE_LEN;
use super::deferred::{Completion, Mailbox};
use super::encode::{self, Reply, Streaming};
use super::hijack::HijackFn;
use super::parse::{self, BodyKind, ReqInfo};
use super::proxy::ProxyHeader;
use super::rate::RateLimits;
use super::request::{Handler, HeadIndex, Header, Peer, Request};
use super::response::{Takeover, power};
use super::scan::{HeadScan, Scan, ScanLimits};
use super::workers::{ConnId, Job, WorkerPool};
use super::{Response, Status, recycle};
use crate::config::HttpConfig;
use crate::error::panic_message;
use crate::listen::ListenAddr;
use crate::log::{Level, Logger};

mod batch;

pub use batch::MAX_BATCH;
pub(crate) use batch::{Batch, Part};

/// First size of a connection's input buffer, and the size it returns to when idle.
const INITIAL_INPUT: usize = 8 * 1024;
/// A read is attempted only with at least this much free space.
const MIN_READ: usize = 2 * 1024;
/// Buffers above this are released once empty rather than kept for the next request.
const KEEP_CAPACITY: usize = 256 * 1024;
/// Bytes pulled from a body stream per read.
const STREAM_CHUNK: usize = 16 * 1024;
/// Empty buffers a loop keeps for connections that wake up. Only connections being driven or
/// waiting for a handler hold buffers, so a few cover steady traffic; a burst beyond that
/// allocates and frees.
const SPARE_BUFFERS: usize = 32;

/// The caps of `HttpConfig` in the form the state machine uses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub scan: ScanLimits,
    pub chunk: ChunkLimits,
    pub max_body: u64,
    pub max_output: usize,
    pub rates: RateLimits,
    /// The handler takes the event loop's requests in batches (`Handler::batches`, asked
    /// once); false unless the loop sets it.
    pub batch: bool,
}

impl Limits {
    pub(crate) fn new(cfg: &HttpConfig) -> Limits {
        let max_body = cfg.max_body_size as u64;
        Limits {
            scan: ScanLimits {
                max_request_line: cfg.max_request_line,
                max_head_size: cfg.max_head_size,
                max_headers: cfg.max_headers,
            },
            chunk: ChunkLimits {
                max_body,
                max_ext: cfg.max_chunk_ext_size,
                max_trailer: cfg.max_trailer_size,
                max_trailers: cfg.max_headers,
            },
            max_body,
            max_output: cfg.max_output_buffer,
            rates: RateLimits::new(cfg),
            batch: false,
        }
    }
}

/// Where handlers run.
pub(crate) enum Exec<'a> {
    /// On the event loop, right away.
    Inline(&'a dyn Handler),
    /// On the handler threads.
    Pool(&'a WorkerPool),
}

/// Buffers shared by every session of one event loop (only one runs at a time).
pub(crate) struct Scratch {
    /// Empty, with capacity for `max_headers`: httparse's output slots.
    slots: Vec<httparse::Header<'static>>,
    /// Empty, with capacity for `max_headers`: the handler's header array.
    headers: Vec<Header<'static>>,
    stream_buf: Vec<u8>,
    /// Jobs back from the handler threads, ready for reuse.
    pub(crate) free_jobs: Vec<Job>,
    /// The response an inline handler fills in (encoded before the next request runs).
    resp: Response,
    /// A batching handler's requests, responses and what answering them needs (`batch`).
    batch: batch::Scratch,
    /// Input buffers of parked sessions, `INITIAL_INPUT` long.
    spare_in: Vec<Vec<u8>>,
    /// Empty output buffers of parked sessions.
    spare_out: Vec<Vec<u8>>,
    /// Empty de-chunked body buffers (apart from the output ones, whose sizes differ).
    spare_body: Vec<Vec<u8>>,
    /// Head indexes of parked sessions, boxed as sessions hold them: the boxes are reused.
    #[allow(clippy::vec_box)]
    spare_index: Vec<Box<HeadIndex>>,
    /// Where deferred responses come back to this loop.
    pub(crate) mailbox: Arc<Mailbox>,
}

impl Scratch {
    pub(crate) fn new(max_headers: usize) -> Scratch {
        Scratch {
            slots: Vec::with_capacity(max_headers),
            headers: Vec::with_capacity(max_headers),
            stream_buf: vec![0; STREAM_CHUNK],
            free_jobs: Vec::new(),
            resp: Response::default(),
            batch: batch::Scratch::default(),
            spare_in: Vec::with_capacity(SPARE_BUFFERS),
            spare_out: Vec::with_capacity(SPARE_BUFFERS),
            spare_body: Vec::with_capacity(SPARE_BUFFERS),
            spare_index: Vec::with_capacity(SPARE_BUFFERS),
            mailbox: Mailbox::new(),
        }
    }
}

/// Moves `buf` into `spare` if there is room and it is of a reusable size; leaves it empty.
fn give_back(buf: &mut Vec<u8>, spare: &mut Vec<Vec<u8>>, reusable: bool) {
    let buf = mem::take(buf);
    if reusable && spare.len() < SPARE_BUFFERS {
        spare.push(buf);
    }
}

/// Gives `buf` a spare buffer if it has none.
fn take_spare(buf: &mut Vec<u8>, spare: &mut Vec<Vec<u8>>) {
    if buf.capacity() == 0
        && let Some(b) = spare.pop()
    {
        *buf = b;
    }
}

/// What a session needs from its event loop for one call.
pub(crate) struct Ctx<'a> {
    pub limits: &'a Limits,
    pub date: &'a [u8; DATE_LEN],
    pub exec: Exec<'a>,
    pub scratch: &'a mut Scratch,
    /// A stop is under way (the master's shutdown delay, or the drain): the last buffered
    /// request gets `Connection: close`.
    pub draining: bool,
    pub conn: ConnId,
    /// The connection's transport is a plain socket: only then may a handler take it over.
    pub plain_socket: bool,
    /// The loop answers this turn's requests of every connection in one batch (see
    /// `batch`): a session at a request's start leaves its input for it.
    pub gather: bool,
    pub log: &'a dyn Logger,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// The head is parsed (`info`, `head_len`); waiting for the body.
    Body,
    /// A handler thread has the request.
    InFlight,
    /// Pulling a streamed response body.
    Streaming,
    /// No more requests on this connection: close once the output is sent (or, with
    /// `Session::handover` set, hand it to its new owner).
    Done,
    /// Waiting for a deferred response (`Response::defer`) to be completed.
    Deferred,
}

/// Which read deadline applies now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// None: a handler or a write is what the connection waits for.
    Off,
    /// Between requests: `idle_timeout`, then a silent close.
    Idle,
    /// Inside a request head: `header_timeout` from its first byte, then 408.
    Head,
    /// Inside a request body: `body_timeout` without progress, then 408.
    Body,
}

/// The received bytes not yet consumed are `buf[start..end]`.
#[derive(Default)]
struct InBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl InBuf {
    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn len(&self) -> usize {
        self.end - self.start
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Free space after the data: at least `min` bytes, growing by `grow` when it must grow.
    fn space(&mut self, min: usize, grow: usize) -> &mut [u8] {
        if self.buf.len() - self.end < min {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < min {
                let len = self.end + grow.max(min);
                self.buf.resize(len, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    fn release_if_large(&mut self) {
        if self.start == self.end && self.buf.len() > KEEP_CAPACITY {
            self.buf = Vec::new();
            self.start = 0;
            self.end = 0;
        }
    }
}

pub(crate) struct Session {
    inp: InBuf,
    out: Vec<u8>,
    out_pos: usize,
    phase: Phase,
    scan: HeadScan,
    info: ReqInfo,
    head_len: usize,
    /// The parsed head of a request waiting for its body (boxed: an idle connection holds
    /// none, and the box goes back to `Scratch`).
    index: Option<Box<HeadIndex>>,
    /// The de-chunked body of the current request.
    body: Vec<u8>,
    chunked: ChunkedDecoder,
    stream: Option<Streaming>,
    close_after_stream: bool,
    peer: Peer,
    peer_eof: bool,
    /// `process` stopped because the output is over its cap, with input left to handle.
    stalled: bool,
    /// Requests whose head was complete: tells the timers a new request began.
    seq: u64,
    /// For a batching handler (see `pipelining`): `seq` when requests last came, and whether
    /// more than one came then.
    seq_at_read: u64,
    pipelined: bool,
    /// Its input waits for the loop's batch across connections (`Ctx::gather`).
    waits_for_batch: bool,
    /// Who takes the connection once the current response is out (boxed again: a pointer in
    /// every session rather than two).
    handover: Option<Box<HijackFn>>,
    /// Bytes received and sent so far, for the minimum transfer rates.
    bytes_in: u64,
    bytes_out: u64,
}

/// Where a complete request's body is.
#[derive(Clone, Copy)]
enum Body {
    /// The `len` input bytes after the head.
    Input(usize),
    /// In `Session::body`, de-chunked; its encoding took the `len` input bytes after the head.
    Dechunked(usize),
}

/// What `Session::take_over` found the handler did.
enum Taken {
    /// Deferred: the session waits for the completion.
    Waiting,
    /// Deferred and completed already (abandoned, if the flag says so).
    Completed(Response, bool),
    /// The connection goes to a new owner after this response.
    Connection,
}

/// What a request's turn in `Session::request` led to.
enum Next {
    Fail(Status),
    /// The body is still coming.
    Wait,
    /// The handler ran on the loop and filled `Scratch::resp`; its panic message if it
    /// panicked.
    Inline(Body, Option<String>),
    /// A handler thread has the request.
    Queued(Body),
}

impl Session {
    pub(crate) fn new(peer: Option<SocketAddr>, local: Option<Arc<ListenAddr>>) -> Session {
        Session {
            inp: InBuf::default(),
            out: Vec::new(),
            out_pos: 0,
            phase: Phase::Head,
            scan: HeadScan::default(),
            info: ReqInfo::NONE,
            head_len: 0,
            index: None,
            body: Vec::new(),
            chunked: ChunkedDecoder::default(),
            stream: None,
            close_after_stream: false,
            peer: Peer {
                addr: peer,
                proxy: None,
                local,
            },
            peer_eof: false,
            stalled: false,
            seq: 0,
            seq_at_read: 0,
            pipelined: true,
            waits_for_batch: false,
            handover: None,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// Records the PROXY protocol header the connection began with, read before any input
    /// reached the session: its client address, when it has one, replaces the socket's peer.
    pub(crate) fn set_proxy(&mut self, header: ProxyHeader) {
        if let Some(addr) = header.source_inet() {
            self.peer.addr = Some(addr);
        }
        self.peer.proxy = Some(Arc::new(header));
    }

    /// Returns the empty buffers to `scratch`: between requests, an idle connection holds
    /// none. Call after each drive; the session takes buffers back as it needs them.
    pub(crate) fn park(&mut self, scratch: &mut Scratch) {
        let head_pending = self.phase == Phase::Body || self.scan.started();
        if self.inp.len() == 0 && !head_pending && self.inp.buf.capacity() > 0 {
            let reusable = self.inp.buf.len() == INITIAL_INPUT;
            give_back(&mut self.inp.buf, &mut scratch.spare_in, reusable);
            self.inp.start = 0;
            self.inp.end = 0;
        }
        if self.out_pending() == 0 && self.phase != Phase::Streaming && self.out.capacity() > 0 {
            let reusable = self.out.capacity() <= KEEP_CAPACITY;
            self.out.clear();
            self.out_pos = 0;
            give_back(&mut self.out, &mut scratch.spare_out, reusable);
        }
        if self.phase != Phase::Body && self.body.capacity() > 0 {
            let reusable = self.body.capacity() <= KEEP_CAPACITY;
            self.body.clear();
            give_back(&mut self.body, &mut scratch.spare_body, reusable);
        }
        if self.phase != Phase::Body
            && let Some(index) = self.index.take()
            && scratch.spare_index.len() < SPARE_BUFFERS
        {
            scratch.spare_index.push(index);
        }
    }

    /// Where the next read should put its bytes; pass the count to `filled`.
    pub(crate) fn read_buf(&mut self, scratch: &mut Scratch) -> &mut [u8] {
        take_spare(&mut self.inp.buf, &mut scratch.spare_in);
        let remaining_body = match (self.phase, self.info.body) {
            (Phase::Body, BodyKind::Length(n)) => {
                (self.head_len as u64 + n).saturating_sub(self.inp.len() as u64) as usize
            }
            _ => 0,
        };
        self.inp.space(MIN_READ, remaining_body.max(INITIAL_INPUT))
    }

    pub(crate) fn filled(&mut self, n: usize) {
        self.inp.end += n;
        self.bytes_in += n as u64;
        debug_assert!(self.inp.end <= self.inp.buf.len());
    }

    /// The peer will send nothing more.
    pub(crate) fn on_eof(&mut self) {
        self.peer_eof = true;
    }

    pub(crate) fn peer_closed(&self) -> bool {
        self.peer_eof
    }

    pub(crate) fn output(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    pub(crate) fn out_pending(&self) -> usize {
        self.out.len() - self.out_pos
    }

    pub(crate) fn sent(&mut self, n: usize) {
        self.out_pos += n;
        self.bytes_out += n as u64;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if self.out.capacity() > KEEP_CAPACITY {
                self.out = Vec::new();
            }
        } else if self.out_pos > KEEP_CAPACITY && self.out_pos * 2 >= self.out.len() {
            // Drop the sent prefix once it is at least half the buffer: each byte moves at
            // most once on average, even for a huge body sent in small pieces.
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// More input is useful now.
    pub(crate) fn wants_input(&self, lim: &Limits) -> bool {
        matches!(self.phase, Phase::Head | Phase::Body)
            && !self.peer_eof
            && self.out_pending() <= lim.max_output
    }

    /// No response will be produced any more: close (or hand the connection over, see
    /// `handing_over`) once the output is sent.
    pub(crate) fn finished(&self) -> bool {
        self.phase == Phase::Done
            || (self.peer_eof
                && !self.stalled
                && !self.waits_for_batch
                && matches!(self.phase, Phase::Head | Phase::Body))
    }

    /// Once finished and the output sent, the connection goes to a new owner
    /// (`take_handover`) rather than being closed. A hand-over is the end of a connection to
    /// the engine, a `Done` like any other: telling them apart there keeps the test off the
    /// path of every request.
    pub(crate) fn handing_over(&self) -> bool {
        self.phase == Phase::Done && self.handover.is_some()
    }

    /// Who takes the connection over, and the bytes read past its last request.
    pub(crate) fn take_handover(&mut self) -> Option<(HijackFn, Vec<u8>)> {
        let on_conn = *self.handover.take()?;
        let leftover = self.inp.data().to_vec();
        self.inp.consume(leftover.len());
        self.phase = Phase::Done;
        Some((on_conn, leftover))
    }

    /// Waiting for a deferred response.
    pub(crate) fn is_deferred(&self) -> bool {
        self.phase == Phase::Deferred
    }

    /// Waiting for the deferred response to request `seq`: a completion for anything else is
    /// stale (the request was answered otherwise).
    pub(crate) fn awaits(&self, seq: u64) -> bool {
        self.phase == Phase::Deferred && self.seq == seq
    }

    /// The drain's grace period is over: a deferred response still awaited is answered 503.
    /// Returns whether one was.
    pub(crate) fn give_up_deferred(&mut self, date: &[u8; DATE_LEN]) -> bool {
        if self.phase != Phase::Deferred {
            return false;
        }
        self.fail_with(Status::SERVICE_UNAVAILABLE, date);
        true
    }

    pub(crate) fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    pub(crate) fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    /// Between requests with nothing buffered either way: safe to close at once.
    pub(crate) fn is_idle(&self) -> bool {
        self.phase == Phase::Head
            && self.inp.len() == 0
            && !self.scan.started()
            && self.out_pending() == 0
    }

    pub(crate) fn timer(&self, lim: &Limits) -> Timer {
        if self.out_pending() > lim.max_output {
            return Timer::Off;
        }
        match self.phase {
            Phase::Head if self.inp.len() == 0 && !self.scan.started() => Timer::Idle,
            Phase::Head => Timer::Head,
            Phase::Body => Timer::Body,
            Phase::InFlight | Phase::Streaming | Phase::Done | Phase::Deferred => Timer::Off,
        }
    }

    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// The read deadline of `timer()` passed. Returns true when the connection should close
    /// at once (idle); otherwise a 408 was queued (or nothing was due).
    pub(crate) fn on_timeout(&mut self, lim: &Limits, date: &[u8; DATE_LEN]) -> bool {
        match self.timer(lim) {
            Timer::Idle => true,
            Timer::Head | Timer::Body => {
                self.fail_with(Status::REQUEST_TIMEOUT, date);
                false
            }
            Timer::Off => false,
        }
    }

    /// Handles every complete request buffered, until the output is over its cap. Returns
    /// whether anything changed.
    #[inline]
    pub(crate) fn process(&mut self, ctx: &mut Ctx<'_>) -> bool {
        // Waiting for a head with nothing buffered: no step can run. A turn of the event loop
        // ends here twice per read (before the read, and after the answer went out), so this
        // check stays inline and the steps' large frame is only set up when there is input.
        if self.phase == Phase::Head
            && self.inp.len() == 0
            && self.out_pending() <= ctx.limits.max_output
        {
            self.stalled = false;
            self.inp.release_if_large();
            return false;
        }
        self.step_all(ctx)
    }

    #[inline(never)]
    fn step_all(&mut self, ctx: &mut Ctx<'_>) -> bool {
        // A connection that pipelines fills batches of its own (`batches`): with its buffers
        // held to the end of the turn the loop's working set would grow by a batch each.
        if ctx.gather
            && !self.reads_pipelined()
            && self.phase == Phase::Head
            && self.out_pending() <= ctx.limits.max_output
        {
            self.waits_for_batch = true;
            return false;
        }
        self.waits_for_batch = false;
        // Batches first, then one by one what they leave (see `batches`).
        let mut progress = ctx.limits.batch && self.pipelining() && self.batches(ctx);
        loop {
            if self.out_pending() > ctx.limits.max_output {
                self.stalled = matches!(self.phase, Phase::Head | Phase::Body | Phase::Streaming);
                break;
            }
            self.stalled = false;
            let stepped = match self.phase {
                Phase::Done | Phase::InFlight | Phase::Deferred => false,
                Phase::Streaming => self.pump(ctx),
                Phase::Head => self.on_head(ctx),
                Phase::Body => self.on_body(ctx),
            };
            if !stepped {
                break;
            }
            progress = true;
        }
        if self.phase == Phase::Head {
            self.inp.release_if_large();
        }
        progress
    }

    /// A handler thread finished this session's request.
    pub(crate) fn complete(&mut self, job: &mut Job, ctx: &mut Ctx<'_>) {
        debug_assert_eq!(self.phase, Phase::InFlight);
        let panic = job.panic.take();
        self.answer(ctx, Some(&mut job.resp), panic);
    }

    /// The deferred response this session awaits (`awaits`) was completed.
    pub(crate) fn complete_deferred(&mut self, done: Completion, ctx: &mut Ctx<'_>) {
        debug_assert!(self.awaits(done.seq));
        self.reply_completed(ctx, done.resp, done.abandoned);
    }

    fn on_head(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let mut progress = false;
        if !self.scan.started() {
            // RFC 9112 §2.2: empty lines before a request-line are ignored (CRLF only).
            loop {
                match self.inp.data() {
                    [b'\r', b'\n', ..] => {
                        self.inp.consume(2);
                        progress = true;
                    }
                    [b'\n', ..] => return self.fail(Status::BAD_REQUEST, ctx),
                    [] | [b'\r'] => return progress,
                    _ => break,
                }
            }
        }
        match self.scan.scan(self.inp.data(), &ctx.limits.scan) {
            Scan::Incomplete => progress,
            Scan::Error(status) => self.fail(status, ctx),
            Scan::Complete(n) => {
                self.head_len = n;
                self.seq += 1;
                let start = self.inp.start;
                let line_len = self.scan.request_line_len();
                match parse::check_version(&mut self.inp.buf[start..start + n], line_len) {
                    Ok(()) => self.request(ctx, None),
                    Err(status) => self.fail(status, ctx),
                }
            }
        }
    }

    /// The one path of a request: taken when its head is complete (`done` is `None`) and, if
    /// its body was not all there yet, again when the body is (`done` says where it is). A
    /// complete request goes to its handler (or a handler thread), leaves the input and,
    /// answered inline, has its response queued.
    // Inlined into the head step, which nearly every request completes in; `on_body` keeps its
    // own copy out of line. Callgrind, cdylib, per request: 1,756 -> 1,728 (GET), 4,797 ->
    // 4,773 (browser.txt) against leaving both to LLVM.
    #[inline(always)]
    fn request(&mut self, ctx: &mut Ctx<'_>, done: Option<Body>) -> bool {
        let next = match done {
            None => self.run_parsed(ctx),
            Some(body) => self.run_indexed(ctx, body),
        };
        match next {
            Next::Fail(status) => return self.fail(status, ctx),
            Next::Wait => return self.await_body(ctx),
            Next::Inline(body, panic) => {
                self.take_request(body);
                self.answer(ctx, None, panic);
            }
            Next::Queued(body) => {
                self.take_request(body);
                self.phase = Phase::InFlight;
            }
        }
        true
    }

    /// Parses the head just completed, the only parse it gets, and runs the request if its
    /// body is here too; if not, `index` keeps the parse until it is.
    fn run_parsed(&mut self, ctx: &mut Ctx<'_>) -> Next {
        let (start, n) = (self.inp.start, self.head_len);
        let scratch = &mut *ctx.scratch;
        let mut slots: Vec<httparse::Header<'_>> = recycle(mem::take(&mut scratch.slots));
        let mut headers: Vec<Header<'_>> = recycle(mem::take(&mut scratch.headers));
        let head = &self.inp.buf[start..start + n];
        let after_head = self.inp.len() - n;
        let next = match parse_request(head, &mut slots, ctx.limits.max_body, after_head) {
            Err(status) => Next::Fail(status),
            Ok((parsed, info, ready)) => {
                self.info = info;
                headers.extend(parsed.headers.iter().map(|h| Header {
                    name: h.name,
                    value: h.value,
                }));
                let body = &self.inp.buf[start + n..start + n + ready.unwrap_or(0)];
                let req = Request::from_parsed(&parsed, &headers, body, &self.peer);
                match ready {
                    Some(len) => run(
                        &ctx.exec,
                        scratch,
                        ctx.conn,
                        ctx.plain_socket,
                        &req,
                        head,
                        Body::Input(len),
                    ),
                    None => {
                        let spare = &mut scratch.spare_index;
                        let index = self
                            .index
                            .get_or_insert_with(|| spare.pop().unwrap_or_default());
                        index.record(&req, head);
                        Next::Wait
                    }
                }
            }
        };
        scratch.slots = recycle(slots);
        scratch.headers = recycle(headers);
        next
    }

    /// Runs the request whose body has just completed, rebuilt from the parse in `index`.
    fn run_indexed(&mut self, ctx: &mut Ctx<'_>, body: Body) -> Next {
        let (start, n) = (self.inp.start, self.head_len);
        let index = self
            .index
            .as_deref()
            .expect("a request waiting for its body keeps its head's parse in `index`");
        let scratch = &mut *ctx.scratch;
        let mut headers: Vec<Header<'_>> = recycle(mem::take(&mut scratch.headers));
        let head = &self.inp.buf[start..start + n];
        index.fields(head, &mut headers);
        let bytes = match body {
            Body::Input(len) => &self.inp.buf[start + n..start + n + len],
            Body::Dechunked(_) => &self.body[..],
        };
        let req = Request::from_index(index, &headers, bytes, &self.peer);
        let next = run(
            &ctx.exec,
            scratch,
            ctx.conn,
            ctx.plain_socket,
            &req,
            head,
            body,
        );
        scratch.headers = recycle(headers);
        next
    }

    /// The head is parsed and the body not all here: wait for it.
    fn await_body(&mut self, ctx: &mut Ctx<'_>) -> bool {
        self.phase = Phase::Body;
        if self.info.body == BodyKind::Chunked {
            self.chunked.reset();
            self.body.clear();
            take_spare(&mut self.body, &mut ctx.scratch.spare_body);
        }
        // RFC 9110 §10.1.1: ask for the body only if none of it has arrived.
        if self.info.expect_continue && self.inp.len() == self.head_len {
            take_spare(&mut self.out, &mut ctx.scratch.spare_out);
            self.out.extend_from_slice(encode::CONTINUE);
        }
        true
    }

    // See `request`.
    #[inline(never)]
    fn on_body(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let n = self.head_len;
        let body = match self.info.body {
            BodyKind::None => Body::Input(0),
            BodyKind::Length(len) => {
                let len = len as usize;
                if self.inp.len() < n + len {
                    return false;
                }
                Body::Input(len)
            }
            BodyKind::Chunked => {
                let raw = &self.inp.buf[self.inp.start + n..self.inp.end];
                if raw.is_empty() {
                    return false;
                }
                match self.chunked.decode(raw, &mut self.body, &ctx.limits.chunk) {
                    Err(status) => return self.fail(status, ctx),
                    Ok(Decoded::NeedMore) => {
                        // Everything after the head was decoded: keep only the head.
                        self.inp.end = self.inp.start + n;
                        return true;
                    }
                    Ok(Decoded::Done(k)) => Body::Dechunked(k),
                }
            }
        };
        self.request(ctx, Some(body))
    }

    /// Takes the request that went to its handler off the input, ready for the next one.
    fn take_request(&mut self, body: Body) {
        let (Body::Input(len) | Body::Dechunked(len)) = body;
        self.inp.consume(self.head_len + len);
        self.scan.reset();
        if matches!(body, Body::Dechunked(_)) && self.body.capacity() > KEEP_CAPACITY {
            self.body = Vec::new();
        }
    }

    /// Encodes the handler's response to the current request: a handler thread's (`job`), or
    /// else the one an inline handler filled in `ctx.scratch`. Borrowed in place, not moved
    /// out and back, which cost a default `Response` built and dropped per request.
    ///
    /// The handler did not take the response over: `answer` handles that first.
    fn reply(&mut self, ctx: &mut Ctx<'_>, job: Option<&mut Response>, panic: Option<String>) {
        let scratch = &mut *ctx.scratch;
        let resp = match job {
            Some(resp) => resp,
            None => &mut scratch.resp,
        };
        if let Some(msg) = panic {
            ctx.log.log(
                Level::Error,
                &format!("request handler panicked: {msg}; answered 500 and closed the connection"),
            );
            resp.abandon();
            self.fail_with(Status::INTERNAL_SERVER_ERROR, ctx.date);
            return;
        }
        let reply = self.shape(ctx.draining);
        take_spare(&mut self.out, &mut scratch.spare_out);
        let encoded = encode::encode(&mut self.out, resp, reply, ctx.date, ctx.log);
        resp.reset();
        match encoded.stream {
            Some(stream) => {
                self.stream = Some(stream);
                self.close_after_stream = encoded.close;
                self.phase = Phase::Streaming;
            }
            None => {
                self.phase = if encoded.close {
                    Phase::Done
                } else {
                    Phase::Head
                }
            }
        }
    }

    /// How the current request shapes its response.
    #[inline(always)]
    fn shape(&self, draining: bool) -> Reply {
        let info = self.info;
        // While draining, the last request already buffered gets `Connection: close`.
        let last_in_drain =
            draining && memchr::memmem::find(self.inp.data(), b"\r\n\r\n").is_none();
        Reply {
            minor: info.minor,
            is_head: info.is_head,
            close: !info.keep_alive || info.close_after || last_in_drain,
        }
    }

    /// `reply`, unless the handler deferred the response or takes the connection after it. The
    /// test is here rather than in `reply`, whose frame grew with it (11 instructions per GET).
    #[inline(always)]
    fn answer(&mut self, ctx: &mut Ctx<'_>, job: Option<&mut Response>, panic: Option<String>) {
        let taken = match &job {
            Some(resp) => resp.takeover.is_some(),
            None => ctx.scratch.resp.takeover.is_some(),
        };
        if taken {
            return self.answer_taken_over(ctx, job, panic);
        }
        self.reply(ctx, job, panic);
    }

    /// The handler deferred its response, or takes the connection after it.
    #[inline(never)]
    fn answer_taken_over(
        &mut self,
        ctx: &mut Ctx<'_>,
        mut job: Option<&mut Response>,
        panic: Option<String>,
    ) {
        if panic.is_some() {
            // A 500: what the handler took over goes with the response.
            return self.reply(ctx, job, panic);
        }
        let taken = {
            let scratch = &mut *ctx.scratch;
            let resp = match job.as_deref_mut() {
                Some(resp) => resp,
                None => &mut scratch.resp,
            };
            let taken = self.take_over(resp, &scratch.mailbox, ctx.conn);
            if matches!(taken, Taken::Connection) && resp.status == 101 {
                let (date, log) = (ctx.date, ctx.log);
                return self.reply_switching(resp, &mut scratch.spare_out, date, log);
            }
            taken
        };
        match taken {
            Taken::Waiting => {}
            Taken::Completed(done, abandoned) => self.reply_completed(ctx, done, abandoned),
            Taken::Connection => {
                // The HTTP exchange ends with this response, which says so: the connection is
                // the new owner's after it (`handing_over`).
                self.info.keep_alive = false;
                self.reply(ctx, job, None);
            }
        }
    }

    /// Takes what the handler did off the response.
    fn take_over(&mut self, resp: &mut Response, mailbox: &Arc<Mailbox>, conn: ConnId) -> Taken {
        match resp.takeover.take() {
            Some(Takeover::Deferred(binding)) => {
                resp.reset();
                match binding.bind(mailbox, conn, self.seq) {
                    Some((done, abandoned)) => Taken::Completed(done, abandoned),
                    None => {
                        self.phase = Phase::Deferred;
                        Taken::Waiting
                    }
                }
            }
            Some(Takeover::Hijack(on_conn)) => {
                self.handover = Some(Box::new(on_conn));
                Taken::Connection
            }
            None => Taken::Connection,
        }
    }

    /// Answers with a completed deferred response (or, for an abandoned one, a 500).
    #[cold]
    fn reply_completed(&mut self, ctx: &mut Ctx<'_>, mut resp: Response, abandoned: bool) {
        if abandoned {
            ctx.log.log(
                Level::Warn,
                "a deferred response was dropped without being completed; answered 500 and \
                 closed the connection",
            );
            self.fail_with(Status::INTERNAL_SERVER_ERROR, ctx.date);
            return;
        }
        self.answer(ctx, Some(&mut resp), None);
    }

    /// Encodes a 101, after which the connection is handed over (`handing_over`).
    #[cold]
    fn reply_switching(
        &mut self,
        resp: &mut Response,
        spare_out: &mut Vec<Vec<u8>>,
        date: &[u8; DATE_LEN],
        log: &dyn Logger,
    ) {
        take_spare(&mut self.out, spare_out);
        encode::encode_switching(&mut self.out, resp, date, log);
        resp.reset();
        self.phase = Phase::Done;
    }

    /// Pulls once from the body stream. Always makes progress.
    fn pump(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let Some(stream) = self.stream.as_mut() else {
            self.phase = Phase::Head;
            return true;
        };
        let buf = &mut ctx.scratch.stream_buf[..];
        // `Interrupted` asks for a retry; a stream that never stops asking is broken.
        let read = catch_unwind(AssertUnwindSafe(|| {
            let mut tries = 0;
            loop {
                match stream.source.read(buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted && tries < 16 => {
                        tries += 1
                    }
                    other => return other,
                }
            }
        }));
        let failure = match read {
            Ok(Ok(0)) => {
                if stream.chunked {
                    self.out.extend_from_slice(encode::LAST_CHUNK);
                }
                self.stream = None;
                self.phase = if self.close_after_stream {
                    Phase::Done
                } else {
                    Phase::Head
                };
                return true;
            }
            Ok(Ok(n)) => {
                let data = &buf[..n.min(buf.len())];
                if stream.chunked {
                    encode::encode_chunk(&mut self.out, data);
                } else {
                    self.out.extend_from_slice(data);
                }
                return true;
            }
            Ok(Err(e)) => e.to_string(),
            Err(p) => format!("panic: {}", panic_message(&*p)),
        };
        ctx.log.log(
            Level::Warn,
            &format!("response body stream failed ({failure}); closing the connection"),
        );
        // Without the last chunk the client knows the body is incomplete; a connection that was
        // to be taken over after it closes too.
        self.stream = None;
        self.phase = Phase::Done;
        self.handover = None;
        true
    }

    fn fail(&mut self, status: Status, ctx: &Ctx<'_>) -> bool {
        self.fail_with(status, ctx.date);
        true
    }

    /// Queues an engine error response; nothing after it is parsed, and the connection closes
    /// (it is no longer anyone's to take over).
    fn fail_with(&mut self, status: Status, date: &[u8; DATE_LEN]) {
        encode::encode_error(&mut self.out, status, date);
        self.stream = None;
        self.phase = Phase::Done;
        if self.handover.is_some() {
            self.handover = None;
        }
    }
}

/// Parses a complete head (after `parse::check_version`) and checks it; with the length of
/// its body if all of the body is in the `after_head` bytes received.
// Once per request, like what it calls.
#[inline(always)]
fn parse_request<'b, 'h>(
    head: &'b [u8],
    slots: &'h mut Vec<httparse::Header<'b>>,
    max_body: u64,
    after_head: usize,
) -> Result<(httparse::Request<'h, 'b>, ReqInfo, Option<usize>), Status> {
    let parsed = parse::parse_head(head, slots.spare_capacity_mut())?;
    let info = parse::analyze(&parsed)?;
    let ready = ready_body(&info, max_body, after_head)?;
    Ok((parsed, info, ready))
}

/// The body's length if it is complete in the `after_head` bytes already received; a 413 when
/// the declared length is over the cap (decided before reading any of the body).
fn ready_body(info: &ReqInfo, max_body: u64, after_head: usize) -> Result<Option<usize>, Status> {
    match info.body {
        BodyKind::Length(len) if len > max_body => Err(Status::CONTENT_TOO_LARGE),
        BodyKind::None => Ok(Some(0)),
        BodyKind::Length(len) if len <= after_head as u64 => Ok(Some(len as usize)),
        BodyKind::Length(_) | BodyKind::Chunked => Ok(None),
    }
}

/// What a handler may do with the response to a request on a connection.
#[inline(always)]
fn powers(plain_socket: bool) -> u8 {
    power::DEFER | power::ENGINE | if plain_socket { power::PLAIN } else { 0 }
}

/// Runs the handler on `req`, whose head is `head`, on the loop (into `scratch.resp`), or
/// hands a copy of the request, with the head's parse, to a handler thread.
// LLVM left it out of line in the cdylib: 38 instructions more per GET (callgrind).
#[inline(always)]
fn run(
    exec: &Exec<'_>,
    scratch: &mut Scratch,
    conn: ConnId,
    plain_socket: bool,
    req: &Request<'_>,
    head: &[u8],
    body: Body,
) -> Next {
    let powers = powers(plain_socket);
    match exec {
        Exec::Inline(handler) => {
            let resp = &mut scratch.resp;
            resp.powers = powers;
            let outcome = catch_unwind(AssertUnwindSafe(|| handler.handle(req, resp)));
            Next::Inline(body, outcome.err().map(|p| panic_message(&*p)))
        }
        Exec::Pool(pool) => {
            let mut job = scratch.free_jobs.pop().unwrap_or_else(Job::new);
            job.conn = conn;
            job.buf.clear();
            job.buf.extend_from_slice(head);
            job.buf.extend_from_slice(req.body());
            job.head_len = head.len();
            job.index.record(req, head);
            job.peer.clone_from(req.peer);
            job.resp.reset();
            job.resp.powers = powers;
            job.panic = None;
            pool.submit(job);
            Next::Queued(body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::date::DateCache;
    use crate::http::testing::Quiet;

    struct Hello;

    impl Handler for Hello {
        fn handle(&self, _req: &Request<'_>, resp: &mut Response) {
            resp.write(b"Hello");
        }
    }

    /// Answers with everything the handler sees of the request.
    struct Describe;

    impl Handler for Describe {
        fn handle(&self, req: &Request<'_>, resp: &mut Response) {
            let line = format!(
                "{} {} 1.{}\n",
                req.method(),
                req.target(),
                req.minor_version()
            );
            resp.write(line.as_bytes());
            for h in req.headers() {
                resp.write(format!("{}: ", h.name).as_bytes());
                resp.write(h.value);
                resp.write(b"\n");
            }
            resp.write(b"\n");
            resp.write(req.body());
        }
    }

    /// A length-delimited and a chunked body; an empty field value, and one with obs-text.
    const WITH_BODIES: &[u8] = b"POST /up?x=1 HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n\
        X-Obs: caf\xe9\r\nContent-Length: 5\r\n\r\nhello\
        PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: b\r\n\r\n\
        3\r\nabc\r\n2;e=1\r\nde\r\n0\r\nT: 1\r\n\r\n";

    struct Loop {
        limits: Limits,
        date: DateCache,
        scratch: Scratch,
    }

    impl Loop {
        fn new() -> Loop {
            let cfg = HttpConfig::default();
            Loop {
                limits: Limits::new(&cfg),
                date: DateCache::fixed(784_111_777),
                scratch: Scratch::new(cfg.max_headers),
            }
        }

        /// One read of `bytes`, then what the event loop does in a drive: process, send all,
        /// park. Returns the output.
        fn drive(&mut self, s: &mut Session, bytes: &[u8]) -> Vec<u8> {
            self.drive_with(s, bytes, Exec::Inline(&Hello))
        }

        fn drive_with(&mut self, s: &mut Session, bytes: &[u8], exec: Exec<'_>) -> Vec<u8> {
            let buf = s.read_buf(&mut self.scratch);
            buf[..bytes.len()].copy_from_slice(bytes);
            s.filled(bytes.len());
            self.step(s, exec, |s, ctx| {
                s.process(ctx);
            })
        }

        /// Runs `f` with a context, then sends all and parks. Returns the output.
        fn step(
            &mut self,
            s: &mut Session,
            exec: Exec<'_>,
            f: impl FnOnce(&mut Session, &mut Ctx<'_>),
        ) -> Vec<u8> {
            let mut ctx = Ctx {
                limits: &self.limits,
                date: self.date.get(),
                exec,
                scratch: &mut self.scratch,
                draining: false,
                conn: (0, 0),
                plain_socket: true,
                gather: false,
                log: &Quiet,
            };
            f(s, &mut ctx);
            let out = s.output().to_vec();
            s.sent(out.len());
            s.park(&mut self.scratch);
            out
        }
    }

    /// `input` read in two pieces cut at `cut`, handled inline by `Describe`.
    fn two_reads(lp: &mut Loop, input: &[u8], cut: usize) -> Vec<u8> {
        let mut s = Session::new(None, None);
        let mut out = lp.drive_with(&mut s, &input[..cut], Exec::Inline(&Describe));
        out.extend(lp.drive_with(&mut s, &input[cut..], Exec::Inline(&Describe)));
        assert_eq!(held(&s), 0, "cut at {cut}");
        assert!(s.index.is_none(), "cut at {cut}");
        out
    }

    fn held(s: &Session) -> usize {
        s.inp.buf.capacity() + s.out.capacity() + s.body.capacity()
    }

    /// The bodies of the responses in `out` (which has no `HTTP/1.1 ` inside a body).
    fn bodies(out: &[u8]) -> Vec<&[u8]> {
        let mut parts = Vec::new();
        let mut at = 0;
        while let Some(i) = memchr::memmem::find(&out[at..], b"\r\n\r\n") {
            let start = at + i + 4;
            at = memchr::memmem::find(&out[start..], b"HTTP/1.1 ").map_or(out.len(), |j| start + j);
            parts.push(&out[start..at]);
        }
        parts
    }

    #[test]
    fn a_body_after_its_head_reaches_the_handler_with_the_head_parsed_once() {
        let mut lp = Loop::new();
        let whole = two_reads(&mut lp, WITH_BODIES, WITH_BODIES.len());
        assert_eq!(
            bodies(&whole),
            [
                &b"POST /up?x=1 1.1\nHost: a\nX-Empty: \nX-Obs: caf\xe9\nContent-Length: 5\n\nhello"[..],
                b"PUT /c 1.1\nTransfer-Encoding: chunked\nHost: b\n\nabcde",
            ],
            "{}",
            String::from_utf8_lossy(&whole)
        );
        // Cut anywhere, the body (or part of it) arrives after the head has been parsed and
        // the request is rebuilt from the head's index.
        for cut in 1..WITH_BODIES.len() {
            assert_eq!(two_reads(&mut lp, WITH_BODIES, cut), whole, "cut at {cut}");
        }
        assert_eq!(lp.scratch.spare_index.len(), 1);
    }

    #[test]
    fn a_handler_thread_gets_the_head_parsed_on_the_loop() {
        let mut lp = Loop::new();
        let inline = two_reads(&mut lp, WITH_BODIES, WITH_BODIES.len());
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        let handler: std::sync::Arc<dyn Handler> = std::sync::Arc::new(Describe);
        let mut pool = WorkerPool::start(1, &handler, std::sync::Arc::new(waker), 100).unwrap();
        // Whole, then cut inside each body: handed off at once, and after waiting for a body.
        let first = memchr::memmem::find(WITH_BODIES, b"PUT").unwrap();
        for cut in [WITH_BODIES.len(), first - 2, WITH_BODIES.len() - 3] {
            let mut s = Session::new(None, None);
            let mut out = Vec::new();
            let mut reads = [&WITH_BODIES[..cut], &WITH_BODIES[cut..]].into_iter();
            let mut jobs = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while out.len() < inline.len() {
                if s.wants_input(&lp.limits)
                    && let Some(read) = reads.next()
                {
                    out.extend(lp.drive_with(&mut s, read, Exec::Pool(&pool)));
                    continue;
                }
                pool.take_done(&mut jobs);
                for mut job in jobs.drain(..) {
                    out.extend(lp.step(&mut s, Exec::Pool(&pool), |s, ctx| {
                        s.complete(&mut job, ctx);
                        s.process(ctx);
                    }));
                }
                assert!(std::time::Instant::now() < deadline, "cut at {cut}");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            assert_eq!(out, inline, "cut at {cut}");
        }
        assert_eq!(pool.shutdown(), 0);
    }

    #[test]
    fn an_idle_session_lends_its_buffers_to_the_loop() {
        let mut lp = Loop::new();
        let mut s = Session::new(None, None);
        // A partial head keeps its bytes (and so its buffer) across drives.
        assert!(lp.drive(&mut s, b"GET / HTTP/1.1\r\nHo").is_empty());
        assert!(s.inp.buf.capacity() >= INITIAL_INPUT);
        let out = lp.drive(&mut s, b"st: a\r\n\r\n");
        assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"), "{out:?}");
        assert!(out.ends_with(b"\r\n\r\nHello"), "{out:?}");
        assert_eq!(held(&s), 0);
        assert_eq!(
            (lp.scratch.spare_in.len(), lp.scratch.spare_out.len()),
            (1, 1)
        );
        // The next requests take the same buffers back and return them.
        for _ in 0..3 {
            let out = lp.drive(&mut s, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
            assert!(out.ends_with(b"Hello"));
            assert_eq!(held(&s), 0);
            assert_eq!(
                (lp.scratch.spare_in.len(), lp.scratch.spare_out.len()),
                (1, 1)
            );
        }
    }
}
