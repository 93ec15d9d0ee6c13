//! Pipelined requests answered in batches (`Handler::handle_batch`): the complete requests at
//! the start of the input are parsed, the handler answers them in one call, and their
//! responses are encoded in order, into the one write of the read. For a handler behind a
//! costly call (the Go binding's C-to-Go callback, ~475 instructions of the Go runtime) that is
//! one crossing per read instead of one per request.
//!
//! Whatever a batch cannot take (a head begun in an earlier read, empty lines, a bad head, a
//! body still coming or chunked) is left to the one-by-one path and `Handler::handle`, and so
//! is every read of a connection that does not pipeline (see `pipelining`).

use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread;

use super::{Body, Ctx, Exec, Limits, Phase, Session, parse_request, powers};
use crate::error::panic_message;
use crate::http::parse::{self, ReqInfo};
use crate::http::request::{Handler, Header, Peer, Request};
use crate::http::scan::{HeadScan, Scan};
use crate::http::{Response, recycle};
use crate::log::Level;

/// The most requests `Handler::handle_batch` gets at once (a read holds more only with more
/// than 32 pipelined requests: the rest make the next batch).
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

/// A loop's buffers for batches, reused from read to read (emptied between uses).
#[derive(Default)]
pub(in crate::http) struct Scratch {
    spans: Vec<Span>,
    /// The requests as gathered, before their fields are in place.
    heads: Vec<Request<'static>>,
    reqs: Vec<Request<'static>>,
    /// `MAX_BATCH` responses once the first batch ran, each reset after its use.
    resps: Vec<Response>,
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
        while self.phase == Phase::Head
            && self.out_pending() <= ctx.limits.max_output
            && self.on_heads(ctx, handler)
        {
            ran = true;
        }
        ran
    }

    /// `on_head` for a handler that takes batches: runs every complete request the input
    /// starts with through one `handle_batch` call. Returns false, having done nothing, when
    /// the input starts with none that a batch can take: that goes to `on_head`.
    fn on_heads(&mut self, ctx: &mut Ctx<'_>, handler: &dyn Handler) -> bool {
        let scratch = &mut *ctx.scratch;
        let mut spans = mem::take(&mut scratch.batch.spans);
        let mut resps = mem::take(&mut scratch.batch.resps);
        let mut got = Gathered {
            slots: recycle(mem::take(&mut scratch.slots)),
            headers: recycle(mem::take(&mut scratch.headers)),
            heads: recycle(mem::take(&mut scratch.batch.heads)),
        };
        let mut reqs: Vec<Request<'_>> = recycle(mem::take(&mut scratch.batch.reqs));
        let (start, end) = (self.inp.start, self.inp.end);
        let input = &mut self.inp.buf[start..end];
        gather(
            input, self.scan, &self.peer, ctx.limits, &mut got, &mut spans,
        );
        reqs.extend(got.heads.iter().zip(&spans).map(|(req, span)| Request {
            headers: &got.headers[span.fields.0..span.fields.1],
            ..*req
        }));
        let n = reqs.len();
        let outcome = (n > 0).then(|| run_batch(handler, &reqs, &mut resps, ctx.plain_socket));
        scratch.batch.reqs = recycle(reqs);
        scratch.batch.heads = recycle(got.heads);
        scratch.headers = recycle(got.headers);
        scratch.slots = recycle(got.slots);
        let ran = match outcome {
            Some(outcome) => {
                self.answer_batch(ctx, &spans, &mut resps[..n], outcome);
                true
            }
            None => false,
        };
        spans.clear();
        // Swapped back: what comes out are the empty vectors `take` left, which own no memory,
        // so there is nothing to drop (a drop of Vec<Response> was 50 instructions per batch).
        mem::swap(&mut ctx.scratch.batch.spans, &mut spans);
        mem::swap(&mut ctx.scratch.batch.resps, &mut resps);
        mem::forget((spans, resps));
        ran
    }

    /// Consumes the requests the handler answered and encodes their responses, in order, up
    /// to one the connection must wait for or ends with.
    fn answer_batch(
        &mut self,
        ctx: &mut Ctx<'_>,
        spans: &[Span],
        resps: &mut [Response],
        outcome: thread::Result<usize>,
    ) {
        let n = spans.len();
        let panicked = outcome.is_err();
        let (answered, mut panic) = match outcome {
            Ok(k) if (1..=n).contains(&k) => (k, None),
            Ok(_) => (n, None),
            Err(p) => (1, Some(panic_message(&*p))),
        };
        let mut consumed = 0;
        while consumed < answered {
            let span = spans[consumed];
            self.seq += 1;
            self.info = span.info;
            self.head_len = span.head_len;
            self.take_request(Body::Input(span.body_len));
            self.answer(ctx, Some(&mut resps[consumed]), panic.take());
            consumed += 1;
            if self.phase != Phase::Head {
                break;
            }
        }
        if consumed < answered && !panicked {
            self.cut_batch(ctx);
        }
        for resp in &mut resps[consumed..] {
            resp.abandon();
        }
    }

    /// The handler answered requests after one the connection waits for or ends with: those
    /// answers are dropped (their requests stay unconsumed), and the connection ends after it.
    #[cold]
    fn cut_batch(&mut self, ctx: &Ctx<'_>) {
        ctx.log.log(
            Level::Error,
            "handle_batch answered requests after a response that is deferred, hijacked, \
             streamed or closes the connection; dropped those answers, and the connection \
             closes after that response",
        );
        match self.phase {
            Phase::Streaming => self.close_after_stream = true,
            Phase::Deferred => self.info.close_after = true,
            _ => {} // Done: it closes already
        }
    }
}

/// What `gather` fills, in buffers `Scratch` lends: httparse's slots, the batch's fields, and
/// its requests before their fields are in place.
struct Gathered<'b> {
    slots: Vec<httparse::Header<'b>>,
    headers: Vec<Header<'b>>,
    heads: Vec<Request<'b>>,
}

/// Runs the handler on `reqs` (at least one), answered in the first of `resps`.
fn run_batch(
    handler: &dyn Handler,
    reqs: &[Request<'_>],
    resps: &mut Vec<Response>,
    plain_socket: bool,
) -> thread::Result<usize> {
    let n = reqs.len();
    if resps.len() < n {
        resps.resize_with(MAX_BATCH, Response::default);
    }
    let powers = powers(plain_socket);
    for resp in &mut resps[..n] {
        resp.powers = powers;
    }
    catch_unwind(AssertUnwindSafe(|| {
        handler.handle_batch(reqs, &mut resps[..n])
    }))
}

/// Parses the complete requests at the start of `input`, at most `MAX_BATCH`, into `heads`
/// (their `headers` still empty: they are in `headers`, at the span's `fields`) and `spans`.
/// Stops before whatever the one-by-one path must see (an incomplete or bad head, empty lines,
/// a body not all here or chunked), and after a request that closes the connection. The first
/// head's scan goes on from `first` (a head an earlier read began: the rest of the read is
/// still batched), a copy: the session's own is untouched, for the one-by-one path.
fn gather<'b>(
    mut input: &'b mut [u8],
    first: HeadScan,
    peer: &'b Peer,
    lim: &Limits,
    got: &mut Gathered<'b>,
    spans: &mut Vec<Span>,
) {
    let Gathered {
        slots,
        headers,
        heads,
    } = got;
    let mut scan = first;
    while heads.len() < MAX_BATCH
        && (scan.started() || !matches!(input.first(), None | Some(b'\r' | b'\n')))
    {
        let Scan::Complete(head_len) = scan.scan(input, &lim.scan) else {
            return;
        };
        let (head, rest) = mem::take(&mut input).split_at_mut(head_len);
        if parse::check_version(head, scan.request_line_len()).is_err() {
            return;
        }
        let head: &'b [u8] = head;
        let Ok((parsed, info, Some(body_len))) =
            parse_request(head, slots, lim.max_body, rest.len())
        else {
            return;
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
            return;
        }
    }
}
