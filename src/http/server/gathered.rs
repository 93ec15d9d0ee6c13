//! One `handle_batch` call for the requests of every connection a turn of the loop found with
//! input. With a batching handler and more than one event in the turn, each connection driven
//! reads its input and leaves the requests there (`Ctx::gather`); once the turn's events and
//! accepts are done, their complete requests go to the handler together, up to `MAX_BATCH` a
//! call, and each connection is driven on: it sends its responses and takes one by one what a
//! batch could not (see `session::batch`). At depth 1 a turn of a busy loop holds one request
//! on each of several connections, and the Go binding's C-to-Go callback, ~475 instructions
//! of the Go runtime, is paid once for all of them instead of once each.

use std::mem;

use super::{Conn, Server};
use crate::http::recycle;
use crate::http::session::{Batch, Ctx, Exec, MAX_BATCH};
use crate::http::transport::{Filled, Io, Plain, Transport};

impl Server<'_> {
    /// Answers the requests the turn's connections left for a batch, then drives each of them
    /// on. A lone connection is just driven on: its own reads decide whether it batches.
    pub(super) fn answer_gathered(&mut self) {
        // The drives that follow take their connections' input one by one.
        let gathering = mem::replace(&mut self.gathering, false);
        let mut idxs = mem::take(&mut self.gathered);
        if idxs.len() > 1 {
            // Sorted, to borrow them all at once; a slot is listed twice when its connection
            // was driven twice in the turn.
            idxs.sort_unstable();
            idxs.dedup();
            while self.batch_round(&idxs) {}
        }
        for &idx in &idxs {
            if let Some(Some(conn)) = self.conns.get_mut(idx) {
                conn.session.leave_batch();
                if !self.send_answers(idx) {
                    self.drive(idx);
                }
            }
        }
        idxs.clear();
        self.gathered = idxs;
        self.gathering = gathering;
    }

    /// Lists a connection whose requests wait for the batch. A batch is answered once it has
    /// `MAX_BATCH` connections, before the turn's other events are read: the connections
    /// waiting each hold an input and an output buffer, and beyond the loop's spare ones
    /// (32) every turn would allocate and free the rest.
    pub(super) fn enlist(&mut self, idx: usize) {
        self.gathered.push(idx);
        if self.gathered.len() >= MAX_BATCH {
            self.answer_gathered();
        }
    }

    /// `drive` for a connection with an event in a turn that gathers, in the common case: a
    /// plain connection at rest whose socket has input. One read, and its requests wait for
    /// the batch; returns false, having done that read at most, when `drive` must go on
    /// (not that case, or the read left more to read, an end of input, an error).
    ///
    /// What the whole drive would do here comes down to that read, at twice the cost: its
    /// setup and a turn of its loop before the read and after it.
    #[inline(always)]
    pub(super) fn read_for_batch(&mut self, idx: usize) -> bool {
        if !self.gathering || self.drain_deadline.is_some() {
            return false;
        }
        let Some(conn) = self.conns[idx].as_mut() else {
            return false;
        };
        let at_rest = matches!(conn.io, Io::Plain)
            && !conn.session.reads_pipelined()
            && !conn.proxy_pending
            && conn.linger_until.is_none()
            && conn.sock.readable
            && !conn.sock.peer_hup
            && conn.session.is_idle();
        if !at_rest {
            return false;
        }
        let mut budget = self.cfg.max_bytes_per_turn;
        let filled = Plain.fill(
            &mut conn.sock,
            &mut conn.session,
            &mut self.scratch,
            &mut [],
            &mut budget,
        );
        // A read that filled the buffer, or came with a FIN, leaves more to read.
        if !matches!(filled, Ok(Filled::Data)) || conn.sock.readable {
            return false;
        }
        conn.session.wait_for_batch();
        self.enlist(idx);
        true
    }

    /// `drive` for a connection the batch answered, in the common case: a plain connection
    /// whose every request was answered, with nothing but its responses to send. One write,
    /// and it is at rest; returns false, having done that write at most, when `drive` must go
    /// on (input left, a response that ends the connection or waits, a short write...).
    #[inline(always)]
    fn send_answers(&mut self, idx: usize) -> bool {
        let Some(conn) = self.conns[idx].as_mut() else {
            return false;
        };
        let simple = matches!(conn.io, Io::Plain)
            && conn.sock.writable
            && !conn.sock.peer_hup
            && !conn.session.peer_closed()
            && conn.session.answered_all();
        if !simple {
            return false;
        }
        let mut budget = self.cfg.max_bytes_per_turn;
        if !matches!(
            Plain.flush(&mut conn.sock, &mut conn.session, &mut budget),
            Ok(true)
        ) || !conn.session.is_idle()
        {
            return false;
        }
        conn.session.park(&mut self.scratch);
        conn.update_timers(&self.limits, self.now, false, true);
        true
    }

    /// One `handle_batch` call for the listed connections that still wait for a batch.
    /// Returns whether some of them may have requests for another.
    fn batch_round(&mut self, idxs: &[usize]) -> bool {
        let handler = self.handler;
        let mut conns = recycle(mem::take(&mut self.gather_conns));
        borrow_listed(&mut self.conns, idxs, &mut conns);
        let mut parts = mem::take(&mut self.gather_parts);
        let mut more = false;
        let mut batch = Batch::open(&mut self.scratch);
        for (i, (_, conn)) in conns.iter_mut().enumerate() {
            if !conn.session.waits_for_batch() {
                continue;
            }
            if batch.room() == 0 {
                more = true;
                break;
            }
            let plain = matches!(conn.io, Io::Plain);
            let part = batch.add(&mut conn.session, &self.limits, plain);
            if !part.is_empty() {
                parts.push((i, part));
            }
        }
        if parts.is_empty() {
            batch.close_unused(&mut self.scratch);
        } else {
            let mut answered = batch.run(&**handler, &mut self.scratch);
            for (i, part) in parts.drain(..) {
                let (idx, conn) = &mut conns[i];
                let seq_before = conn.session.seq();
                let mut ctx = Ctx {
                    limits: &self.limits,
                    date: self.date.get(),
                    exec: Exec::Inline(&**handler),
                    scratch: &mut self.scratch,
                    draining: self.closing,
                    conn: (*idx, conn.generation),
                    plain_socket: matches!(conn.io, Io::Plain),
                    gather: false,
                    log: self.log,
                };
                more |= conn.session.take_answers(&mut ctx, &mut answered, &part);
                self.requests += conn.session.seq() - seq_before;
            }
            answered.close(&mut self.scratch);
        }
        self.gather_parts = parts;
        self.gather_conns = recycle(conns);
        more
    }
}

/// Pushes the open connections of the slots `idxs` (sorted, distinct) to `out`, borrowed at
/// once.
fn borrow_listed<'c>(
    mut rest: &'c mut [Option<Conn>],
    idxs: &[usize],
    out: &mut Vec<(usize, &'c mut Conn)>,
) {
    let mut base = 0;
    for &idx in idxs {
        let at = idx - base;
        if at >= rest.len() {
            break;
        }
        let (head, tail) = mem::take(&mut rest).split_at_mut(at + 1);
        rest = tail;
        base = idx + 1;
        if let Some(conn) = head[at].as_mut() {
            out.push((idx, conn));
        }
    }
}
