//! Requests answered in batches (`Handler::handle_batch`): the complete requests at the start
//! of one or more sessions' inputs are parsed, the handler answers them in one call, and each
//! session encodes its responses in order, into the one write of its turn. For a handler
//! behind a costly call (the Go binding's C-to-Go callback, ~475 instructions of the Go
//! runtime) that is one crossing per batch instead of one per request.
//!
//! A batch is filled two ways. A session whose reads bring several requests (it pipelines)
//! batches its own at once (`Session::batches`). And when one turn of the event loop finds
//! several connections with input, the loop has each leave its requests in place
//! (`Ctx::gather`, `waits_for_batch`) and answers all of them together once the turn's events
//! are read (server/gathered.rs): at depth 1 that is one crossing per turn, not per request.
//!
//! Whatever a batch cannot take (a head begun in an earlier read, empty lines, a bad head, a
//! body still coming or chunked) is left to the one-by-one path and `Handler::handle`, and so
//! is every read of a lone connection that does not pipeline (see `pipelining`).

use std::mem;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::{Body, Ctx, Exec, Limits, Phase, Session, parse_request, powers};
use crate::error::panic_message;
use crate::http::parse::{self, ReqInfo};
use crate::http::request::{Handler, Header, Request};
use crate::http::scan::{HeadScan, Scan};
use crate::http::{Response, recycle};
use crate::log::Level;

/// The most requests `Handler::handle_batch` gets at once (a turn that holds more makes
/// another batch of the rest).
pub const MAX_BATCH: usize = 32;

/// What answering a batched request needs once the handler returned.
#[derive(Clone, Copy)]
struct Span {
    info: ReqInfo,
    head_len: usize,
    body_len: usize,
    /// Its fields in the batch's header array.
    fields: (usize, usize),
}

/// A loop's buffers for batches, reused from batch to batch (emptied between uses).
#[derive(Default)]
pub(in crate::http) struct Scratch {
    spans: Vec<Span>,
    /// The requests as gathered, before their fields are in place.
    heads: Vec<Request<'static>>,
    reqs: Vec<Request<'static>>,
    /// `MAX_BATCH` responses once the first batch ran, each reset after its use.
    resps: Vec<Response>,
}

/// The requests one session added to a batch: their indexes in it.
#[derive(Clone, Debug)]
pub(crate) struct Part {
    range: Range<usize>,
    /// The batch was full before the session's input ran out of complete requests.
    cut_by_room: bool,
}

impl Part {
    pub(crate) fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
}

/// A batch being filled: requests borrowed from the inputs of the sessions added, in
/// buffers lent by the loop's `Scratch` (`Batch::open`, given back by `Answered::close`).
pub(crate) struct Batch<'b> {
    slots: Vec<httparse::Header<'b>>,
    headers: Vec<Header<'b>>,
    heads: Vec<Request<'b>>,
    spans: Vec<Span>,
    resps: Vec<Response>,
}

/// What the handler made of a batch: its responses, to be taken by each session's `Part`.
pub(crate) struct Answered {
    spans: Vec<Span>,
    resps: Vec<Response>,
    outcome: Outcome,
}

#[derive(Clone)]
enum Outcome {
    /// The handler answered the first this many requests.
    Answered(usize),
    /// It panicked: which requests it answered is unknown.
    Panicked(String),
}

impl<'b> Batch<'b> {
    pub(crate) fn open(scratch: &mut super::Scratch) -> Batch<'b> {
        Batch {
            slots: recycle(mem::take(&mut scratch.slots)),
            headers: recycle(mem::take(&mut scratch.headers)),
            heads: recycle(mem::take(&mut scratch.batch.heads)),
            spans: mem::take(&mut scratch.batch.spans),
            resps: mem::take(&mut scratch.batch.resps),
        }
    }

    /// Room left for requests.
    pub(crate) fn room(&self) -> usize {
        MAX_BATCH - self.spans.len()
    }

    /// Adds the complete requests `session`'s input starts with, as many as there is room
    /// for; `plain_socket` is its connection's (see `Ctx`).
    pub(crate) fn add(
        &mut self,
        session: &'b mut Session,
        lim: &Limits,
        plain_socket: bool,
    ) -> Part {
        let first = self.spans.len();
        let Session {
            inp,
            scan,
            peer,
            waits_for_batch,
            ..
        } = session;
        let (start, end) = (inp.start, inp.end);
        let cut_by_room = gather(&mut inp.buf[start..end], *scan, peer, lim, self);
        if self.spans.len() == first {
            // Nothing for a batch (a head not all here, a body to come): the one-by-one path
            // takes it.
            *waits_for_batch = false;
        }
        if self.resps.len() < self.spans.len() {
            self.resps.resize_with(MAX_BATCH, Response::default);
        }
        let powers = powers(plain_socket);
        for resp in &mut self.resps[first..self.spans.len()] {
            resp.powers = powers;
        }
        Part {
            range: first..self.spans.len(),
            cut_by_room,
        }
    }

    /// Runs `handler` on the requests added (at least one), and gives the buffers that
    /// borrow the sessions back to `scratch`: the sessions are free to take their answers.
    pub(crate) fn run(self, handler: &dyn Handler, scratch: &mut super::Scratch) -> Answered {
        let Batch {
            slots,
            headers,
            heads,
            spans,
            mut resps,
        } = self;
        let mut reqs: Vec<Request<'_>> = recycle(mem::take(&mut scratch.batch.reqs));
        reqs.extend(heads.iter().zip(&spans).map(|(req, span)| Request {
            headers: &headers[span.fields.0..span.fields.1],
            ..*req
        }));
        let n = reqs.len();
        let outcome = match catch_unwind(AssertUnwindSafe(|| {
            handler.handle_batch(&reqs, &mut resps[..n])
        })) {
            Ok(k) if (1..=n).contains(&k) => Outcome::Answered(k),
            Ok(_) => Outcome::Answered(n),
            Err(p) => Outcome::Panicked(panic_message(&*p)),
        };
        scratch.batch.reqs = recycle(reqs);
        scratch.batch.heads = recycle(heads);
        scratch.headers = recycle(headers);
        scratch.slots = recycle(slots);
        Answered {
            spans,
            resps,
            outcome,
        }
    }

    /// Gives the buffers back unused (no request was added).
    pub(crate) fn close_unused(self, scratch: &mut super::Scratch) {
        scratch.batch.heads = recycle(self.heads);
        scratch.headers = recycle(self.headers);
        scratch.slots = recycle(self.slots);
        Answered {
            spans: self.spans,
            resps: self.resps,
            outcome: Outcome::Answered(0),
        }
        .close(scratch);
    }
}

impl Answered {
    /// Whether `part`'s requests were all answered.
    fn took_all(&self, part: &Part) -> bool {
        match self.outcome {
            Outcome::Answered(k) => k >= part.range.end,
            Outcome::Panicked(_) => true,
        }
    }

    /// Gives the buffers back to the loop's `scratch`.
    pub(crate) fn close(self, scratch: &mut super::Scratch) {
        let Answered {
            mut spans,
            mut resps,
            ..
        } = self;
        spans.clear();
        // Put back: what comes out are the empty vectors `take` left, which own no memory,
        // so there is nothing to drop (a drop of Vec<Response> was 50 instructions per batch).
        mem::swap(&mut scratch.batch.spans, &mut spans);
        mem::swap(&mut scratch.batch.resps, &mut resps);
        mem::forget((spans, resps));
    }
}

impl Part {
    /// More of the session's requests may be batched now that these were answered.
    pub(crate) fn wants_more(&self, answered: &Answered) -> bool {
        self.cut_by_room || !answered.took_all(self)
    }
}

impl Session {
    /// Whether this read's requests should be tried as a batch: only on a connection that
    /// pipelines, whose last read that brought requests brought more than one (or that has had
    /// none yet). A batch of one costs ~250 instructions more than the one-by-one path (the
    /// gathering, the arrays of pointers), and at depth 1 nearly every read is one request.
    #[inline(always)]
    pub(super) fn pipelining(&mut self) -> bool {
        let since = self.seq - self.seq_at_read;
        if since > 0 {
            self.pipelined = since > 1;
            self.seq_at_read = self.seq;
        }
        self.pipelined
    }

    /// The last read that brought requests brought more than one (see `pipelining`); false
    /// before the first request.
    pub(crate) fn reads_pipelined(&self) -> bool {
        self.pipelined && self.seq > 0
    }

    /// The loop's turn gathers requests across connections (`Ctx::gather`), and this session
    /// left its input for that batch: its next drive answers what the batch did not.
    pub(crate) fn waits_for_batch(&self) -> bool {
        self.waits_for_batch
    }

    /// The loop's batch is over: the session's next drive takes its input one by one.
    pub(crate) fn leave_batch(&mut self) {
        self.waits_for_batch = false;
    }

    /// `step_all` under `Ctx::gather` for a session at rest that just read input (the loop's
    /// shortcut, which skips the steps).
    pub(crate) fn wait_for_batch(&mut self) {
        debug_assert!(self.phase == Phase::Head && self.out_pending() == 0);
        self.waits_for_batch = true;
    }

    /// Every request is answered and the next may come: nothing is left but output to send.
    pub(crate) fn answered_all(&self) -> bool {
        self.phase == Phase::Head && self.inp.len() == 0 && !self.scan.started()
    }

    /// For a handler that takes batches: batches while the input starts with complete
    /// requests. What remains (a body still coming, a body stream, a head not all here) takes
    /// the steps one by one, which hand the handler a request that completes there through
    /// `handle`. Returns whether a batch ran.
    #[inline(never)]
    pub(super) fn batches(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let Exec::Inline(handler) = ctx.exec else {
            return false; // handler threads take requests one by one
        };
        let mut ran = false;
        while self.phase == Phase::Head && self.out_pending() <= ctx.limits.max_output {
            let mut batch = Batch::open(ctx.scratch);
            let part = batch.add(self, ctx.limits, ctx.plain_socket);
            if part.is_empty() {
                batch.close_unused(ctx.scratch);
                break;
            }
            let mut answered = batch.run(handler, ctx.scratch);
            self.take_answers(ctx, &mut answered, &part);
            answered.close(ctx.scratch);
            ran = true;
        }
        ran
    }

    /// Consumes the requests of `part` the handler answered and encodes their responses, in
    /// order, up to one the connection must wait for or ends with. A panic answers the first
    /// 500 and closes the connection. Returns whether the session still waits for a batch
    /// (`waits_for_batch`): the batch was full, or the handler stopped before its requests.
    pub(crate) fn take_answers(
        &mut self,
        ctx: &mut Ctx<'_>,
        answered: &mut Answered,
        part: &Part,
    ) -> bool {
        let Range { start, end } = part.range;
        let (last, mut panic) = match &answered.outcome {
            Outcome::Answered(k) => (end.min(*k), None),
            Outcome::Panicked(msg) => (start + 1, Some(msg.clone())),
        };
        let mut at = start;
        while at < last {
            let span = answered.spans[at];
            self.seq += 1;
            self.info = span.info;
            self.head_len = span.head_len;
            self.take_request(Body::Input(span.body_len));
            self.answer(ctx, Some(&mut answered.resps[at]), panic.take());
            at += 1;
            if self.phase != Phase::Head {
                break;
            }
        }
        if at < last && matches!(answered.outcome, Outcome::Answered(_)) {
            self.cut_batch(ctx);
        }
        for resp in &mut answered.resps[at..end] {
            resp.abandon();
        }
        if at > start {
            // What `pipelining` would have seen of this read, for the session's next reads
            // when it is alone in a turn.
            self.seq_at_read = self.seq;
            self.pipelined = at - start > 1;
        }
        self.waits_for_batch &= part.wants_more(answered)
            && self.phase == Phase::Head
            && self.out_pending() <= ctx.limits.max_output;
        self.waits_for_batch
    }

    /// The handler answered requests after one the connection waits for or ends with: those
    /// answers are dropped (their requests stay unconsumed), and the connection ends after it.
    #[cold]
    fn cut_batch(&mut self, ctx: &Ctx<'_>) {
        ctx.log.log(
            Level::Error,
            "handle_batch answered requests after a response of their connection that is \
             deferred, hijacked, streamed or closes the connection; dropped those answers, \
             and the connection closes after that response",
        );
        match self.phase {
            Phase::Streaming => self.close_after_stream = true,
            Phase::Deferred => self.info.close_after = true,
            _ => {} // Done: it closes already
        }
    }
}

/// Parses the complete requests at the start of `input` into `batch`, as many as it has room
/// for. Stops before whatever the one-by-one path must see (an incomplete or bad head, empty
/// lines, a body not all here or chunked), and after a request that closes the connection.
/// The first head's scan goes on from `first` (a head an earlier read began: the rest of the
/// read is still batched), a copy: the session's own is untouched, for the one-by-one path.
/// Returns whether the room ran out first.
fn gather<'b>(
    mut input: &'b mut [u8],
    first: HeadScan,
    peer: &'b super::Peer,
    lim: &Limits,
    batch: &mut Batch<'b>,
) -> bool {
    let Batch {
        slots,
        headers,
        heads,
        spans,
        ..
    } = batch;
    let mut scan = first;
    while scan.started() || !matches!(input.first(), None | Some(b'\r' | b'\n')) {
        if spans.len() == MAX_BATCH {
            return true;
        }
        let Scan::Complete(head_len) = scan.scan(input, &lim.scan) else {
            return false;
        };
        let (head, rest) = mem::take(&mut input).split_at_mut(head_len);
        if parse::check_version(head, scan.request_line_len()).is_err() {
            return false;
        }
        let head: &'b [u8] = head;
        let Ok((parsed, info, Some(body_len))) =
            parse_request(head, slots, lim.max_body, rest.len())
        else {
            return false;
        };
        let (body, rest) = rest.split_at_mut(body_len);
        let fields_at = headers.len();
        headers.extend(parsed.headers.iter().map(|h| Header {
            name: h.name,
            value: h.value,
        }));
        let body: &'b [u8] = body;
        heads.push(Request {
            method: parsed.method.unwrap_or(""),
            target: parsed.path.unwrap_or(""),
            minor_version: parsed.version.unwrap_or(1),
            headers: &[],
            body,
            peer,
        });
        spans.push(Span {
            info,
            head_len,
            body_len,
            fields: (fields_at, headers.len()),
        });
        input = rest;
        scan = HeadScan::default();
        if !info.keep_alive || info.close_after {
            return false;
        }
    }
    false
}
