//! Deferred responses ([`Response::defer`]): a handler keeps its response, returns at once,
//! and any thread completes it later. The completion travels to the connection's event loop
//! through the loop's `Mailbox`, which wakes it with the mio `Waker` the handler threads use.
//!
//! The handler's [`Deferred`] and the engine meet in a `Slot`. The engine learns of the
//! deferral only once the handler returned (the spent response says so) and binds the slot to
//! the connection then; a completion that comes first (from the handler itself, or from a
//! thread quick enough) waits in the slot and is sent as soon as the engine binds it. That is
//! one lock per deferred response, and nothing on the path of an ordinary one.

use std::mem;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::Response;
use super::workers::ConnId;
use crate::error::{Error, ErrorKind};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held (responses are dropped after unlocking), so a
    // poisoned one still holds consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What an event loop receives from other threads: completed deferred responses, and the
/// closing of connections it handed over. Shared by the loop with every `Deferred` bound to one
/// of its connections and every `Hijacked` it handed out, so it may outlive the loop; it then
/// takes nothing in.
pub(crate) struct Mailbox {
    inner: Mutex<Inner>,
    /// Completions are waiting: the loop reads this each turn instead of taking the lock.
    mail: AtomicBool,
    /// Connections handed to a new owner and not closed yet, which still count toward
    /// `max_connections`.
    taken: AtomicUsize,
}

struct Inner {
    done: Vec<Completion>,
    waker: Option<Arc<mio::Waker>>,
    open: bool,
}

/// A deferred response on its way back to its connection.
pub(crate) struct Completion {
    pub conn: ConnId,
    /// The request it answers: the session's `seq` when it deferred.
    pub seq: u64,
    pub resp: Response,
    /// The `Deferred` was dropped without being completed.
    pub abandoned: bool,
}

impl Mailbox {
    pub(crate) fn new() -> Arc<Mailbox> {
        Arc::new(Mailbox {
            inner: Mutex::new(Inner {
                done: Vec::new(),
                waker: None,
                open: true,
            }),
            mail: AtomicBool::new(false),
            taken: AtomicUsize::new(0),
        })
    }

    /// From now on, mail wakes the loop that owns `waker`.
    pub(crate) fn connect(&self, waker: Arc<mio::Waker>) {
        lock(&self.inner).waker = Some(waker);
    }

    /// The loop is gone: later completions are dropped by the thread that completes them,
    /// and the waker (a descriptor) is released now rather than with the last `Deferred`.
    pub(crate) fn close(&self) {
        let (done, waker) = {
            let mut inner = lock(&self.inner);
            inner.open = false;
            (mem::take(&mut inner.done), inner.waker.take())
        };
        self.mail.store(false, Ordering::Relaxed);
        drop((done, waker));
    }

    /// Completions may be waiting (a hint; `take` tells for sure).
    #[inline]
    pub(crate) fn has_mail(&self) -> bool {
        self.mail.load(Ordering::Relaxed)
    }

    /// Moves the waiting completions into `into`.
    pub(crate) fn take(&self, into: &mut Vec<Completion>) {
        let mut inner = lock(&self.inner);
        into.append(&mut inner.done);
        self.mail.store(false, Ordering::Relaxed);
    }

    fn post(&self, completion: Completion) {
        let mut inner = lock(&self.inner);
        if !inner.open {
            drop(inner);
            // Dropped here, unlocked: a body stream's finalizer may call back into the library.
            drop(completion);
            return;
        }
        inner.done.push(completion);
        self.mail.store(true, Ordering::Relaxed);
        // A failed wake only delays the completion to the loop's next turn.
        if let Some(waker) = &inner.waker {
            let _ = waker.wake();
        }
    }

    /// Connections handed over and not closed yet.
    #[inline]
    pub(crate) fn taken(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }

    pub(crate) fn count_taken(&self) {
        self.taken.fetch_add(1, Ordering::Relaxed);
    }

    /// A handed-over connection closed: its place under `max_connections` is free again, and a
    /// loop that stopped accepting at the limit must hear of it.
    pub(crate) fn release_taken(&self) {
        self.taken.fetch_sub(1, Ordering::Relaxed);
        if let Some(waker) = &lock(&self.inner).waker {
            let _ = waker.wake();
        }
    }
}

/// Where a `Deferred` and the engine meet.
#[derive(Default)]
pub(crate) struct Slot(Mutex<State>);

#[derive(Default)]
enum State {
    /// Deferred by the handler; the engine has not bound it yet.
    #[default]
    Unbound,
    /// Completed (or abandoned) before the engine bound it.
    Early { resp: Response, abandoned: bool },
    /// The engine waits for it on this connection.
    Bound {
        mailbox: Arc<Mailbox>,
        conn: ConnId,
        seq: u64,
    },
    /// Delivered, or nobody will send it: the engine let the response go unbound.
    Done,
}

/// The engine's side of a slot, carried by the spent response until the handler returned.
pub(crate) struct Binding(Arc<Slot>);

impl Binding {
    pub(crate) fn new(slot: &Arc<Slot>) -> Binding {
        Binding(Arc::clone(slot))
    }

    /// Ties the deferred response to its connection. Returns it (and whether it was abandoned)
    /// if it was completed already.
    pub(crate) fn bind(
        self,
        mailbox: &Arc<Mailbox>,
        conn: ConnId,
        seq: u64,
    ) -> Option<(Response, bool)> {
        let mut state = lock(&self.0.0);
        match mem::replace(&mut *state, State::Done) {
            State::Early { resp, abandoned } => Some((resp, abandoned)),
            State::Unbound => {
                *state = State::Bound {
                    mailbox: Arc::clone(mailbox),
                    conn,
                    seq,
                };
                None
            }
            State::Bound { .. } | State::Done => None,
        }
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        // Unbound here means the engine will never wait for it (the handler panicked, or its
        // connection went away): a later completion is dropped at once.
        let mut state = lock(&self.0.0);
        if matches!(*state, State::Unbound) {
            *state = State::Done;
        }
    }
}

/// A response taken over by its handler ([`Response::defer`]), to complete from any thread.
///
/// It dereferences to the [`Response`] to fill in; [`complete`](Deferred::complete) sends it.
/// Dropping it without completing it answers 500 and closes the connection, as a panicking
/// handler does. A `Deferred` is `Send`: move it to the thread that will answer.
pub struct Deferred {
    resp: Response,
    slot: Arc<Slot>,
    sent: bool,
}

impl Deferred {
    pub(crate) fn new(resp: Response, slot: Arc<Slot>) -> Deferred {
        Deferred {
            resp,
            slot,
            sent: false,
        }
    }

    /// The response to fill in (as the handler would have).
    pub fn response(&mut self) -> &mut Response {
        &mut self.resp
    }

    /// Sends the response: the child's event loop wakes and writes it in its turn. After the
    /// client left, or once the child stopped serving, it is dropped instead.
    pub fn complete(mut self) {
        self.deliver(false);
    }

    /// `complete` for the C handle, which keeps the `Deferred` (and so the address of its
    /// response) until it is freed: a second call is refused. The response left in place is
    /// empty and goes nowhere.
    pub(crate) fn complete_in_place(&mut self) -> Result<(), Error> {
        if self.sent {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "this deferred response was completed already",
            ));
        }
        self.deliver(false);
        Ok(())
    }

    fn deliver(&mut self, abandoned: bool) {
        self.sent = true;
        let resp = mem::take(&mut self.resp);
        let mut state = lock(&self.slot.0);
        let unsent = match mem::replace(&mut *state, State::Done) {
            State::Unbound => {
                *state = State::Early { resp, abandoned };
                None
            }
            State::Bound { mailbox, conn, seq } => {
                drop(state);
                mailbox.post(Completion {
                    conn,
                    seq,
                    resp,
                    abandoned,
                });
                return;
            }
            State::Early { .. } | State::Done => Some(resp),
        };
        drop(state);
        drop(unsent);
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        if !self.sent {
            self.deliver(true);
        }
    }
}

impl Deref for Deferred {
    type Target = Response;

    fn deref(&self) -> &Response {
        &self.resp
    }
}

impl DerefMut for Deferred {
    fn deref_mut(&mut self) -> &mut Response {
        &mut self.resp
    }
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deferred")
            .field("response", &self.resp)
            .field("completed", &self.sent)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deferred() -> (Deferred, Binding) {
        let slot = Arc::new(Slot::default());
        let binding = Binding::new(&slot);
        let mut resp = Response::default();
        resp.write(b"early");
        (Deferred::new(resp, slot), binding)
    }

    #[test]
    fn a_completion_before_the_binding_waits_in_the_slot() {
        let (d, binding) = deferred();
        d.complete();
        let mailbox = Mailbox::new();
        let (resp, abandoned) = binding.bind(&mailbox, (3, 7), 1).expect("completed early");
        assert_eq!((resp.body(), abandoned), (&b"early"[..], false));
        assert!(!mailbox.has_mail());
    }

    #[test]
    fn a_completion_after_the_binding_is_posted() {
        let (mut d, binding) = deferred();
        let mailbox = Mailbox::new();
        assert!(binding.bind(&mailbox, (3, 7), 9).is_none());
        d.write(b" and late");
        d.complete();
        assert!(mailbox.has_mail());
        let mut got = Vec::new();
        mailbox.take(&mut got);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].conn, got[0].seq, got[0].abandoned),
            ((3, 7), 9, false)
        );
        assert_eq!(got[0].resp.body(), b"early and late");
    }

    #[test]
    fn a_dropped_deferred_is_abandoned_and_a_second_completion_refused() {
        let (d, binding) = deferred();
        let mailbox = Mailbox::new();
        binding.bind(&mailbox, (0, 1), 1);
        drop(d);
        let mut got = Vec::new();
        mailbox.take(&mut got);
        assert!(got[0].abandoned);

        let (mut d, binding) = deferred();
        binding.bind(&mailbox, (0, 1), 2);
        d.complete_in_place().unwrap();
        let err = d.complete_in_place().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidState);
        drop(d);
        got.clear();
        mailbox.take(&mut got);
        assert_eq!(
            got.len(),
            1,
            "one delivery: the drop after completing sends nothing"
        );
    }

    #[test]
    fn completions_after_the_loop_closed_or_unbound_go_nowhere() {
        let (d, binding) = deferred();
        let mailbox = Mailbox::new();
        binding.bind(&mailbox, (0, 1), 1);
        mailbox.close();
        d.complete();
        assert!(!mailbox.has_mail());
        // The engine dropped the binding without waiting (a handler panic): nothing is kept.
        let slot = Arc::new(Slot::default());
        drop(Binding::new(&slot));
        Deferred::new(Response::default(), Arc::clone(&slot)).complete();
        assert!(matches!(*lock(&slot.0), State::Done));
    }
}
