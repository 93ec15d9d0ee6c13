//! Handler threads (`handler_threads > 0`): blocking handlers run on a pool of worker threads
//! while the event loop keeps serving. A job carries one request's bytes to a worker and its
//! response back; the loop learns of finished jobs through a mio `Waker`. Each connection has
//! at most one job in flight, which keeps its responses in request order.

use std::cell::Cell;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::request::{Handler, HeadIndex, Header, Peer, Request};
use super::{Response, recycle};
use crate::error::panic_message;

/// Identifies a connection across slot reuse: (slab index, generation).
pub(crate) type ConnId = (usize, u64);

/// One request on its way to a worker, then its response on the way back.
pub(crate) struct Job {
    pub conn: ConnId,
    /// The request head (already validated) followed by its de-chunked body.
    pub buf: Vec<u8>,
    pub head_len: usize,
    /// The head's parse, made on the event loop.
    pub index: HeadIndex,
    pub peer: Peer,
    pub resp: Response,
    /// The handler's panic message, if it panicked.
    pub panic: Option<String>,
}

impl Job {
    pub(crate) fn new() -> Job {
        Job {
            conn: (0, 0),
            buf: Vec::new(),
            head_len: 0,
            index: HeadIndex::default(),
            peer: Peer::default(),
            resp: Response::default(),
            panic: None,
        }
    }
}

struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    done: Mutex<Vec<Job>>,
    waker: Arc<mio::Waker>,
    busy: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Handler panics are caught inside the workers, so a poisoned lock can only come from a
    // panic in this module's few lines; the data is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct WorkerPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// Jobs submitted and not yet taken back (touched by the loop thread only).
    outstanding: Cell<usize>,
}

impl WorkerPool {
    pub(crate) fn start(
        n: usize,
        handler: &Arc<dyn Handler>,
        waker: Arc<mio::Waker>,
        max_headers: usize,
    ) -> std::io::Result<WorkerPool> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            done: Mutex::new(Vec::new()),
            waker,
            busy: AtomicUsize::new(0),
        });
        let mut pool = WorkerPool {
            shared,
            threads: Vec::with_capacity(n),
            outstanding: Cell::new(0),
        };
        for i in 0..n {
            let shared = Arc::clone(&pool.shared);
            let handler = Arc::clone(handler);
            let spawned = std::thread::Builder::new()
                .name(format!("prefork-handler-{i}"))
                .spawn(move || worker(&shared, &*handler, max_headers));
            match spawned {
                Ok(t) => pool.threads.push(t),
                Err(e) => {
                    pool.shutdown();
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    pub(crate) fn submit(&self, job: Job) {
        self.outstanding.set(self.outstanding.get() + 1);
        lock(&self.shared.queue).jobs.push_back(job);
        self.shared.ready.notify_one();
    }

    /// Moves the finished jobs into `into`.
    pub(crate) fn take_done(&self, into: &mut Vec<Job>) {
        let before = into.len();
        into.append(&mut lock(&self.shared.done));
        self.outstanding
            .set(self.outstanding.get() - (into.len() - before));
    }

    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.get()
    }

    /// Stops the workers. Workers still inside a handler (past the grace period) are left to
    /// finish on their own rather than blocking the child's exit; returns how many.
    pub(crate) fn shutdown(&mut self) -> usize {
        {
            let mut q = lock(&self.shared.queue);
            q.closed = true;
            q.jobs.clear();
        }
        self.shared.ready.notify_all();
        let stuck = self.shared.busy.load(Ordering::Acquire);
        let threads = std::mem::take(&mut self.threads);
        if stuck == 0 {
            for t in threads {
                let _ = t.join();
            }
        }
        stuck
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shutdown();
        }
    }
}

fn worker(shared: &Shared, handler: &dyn Handler, max_headers: usize) {
    let mut headers: Vec<Header<'static>> = Vec::with_capacity(max_headers);
    loop {
        let mut job = {
            let mut q = lock(&shared.queue);
            loop {
                if q.closed {
                    return;
                }
                if let Some(job) = q.jobs.pop_front() {
                    shared.busy.fetch_add(1, Ordering::AcqRel);
                    break job;
                }
                q = shared.ready.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        run_job(&mut job, handler, &mut headers);
        lock(&shared.done).push(job);
        shared.busy.fetch_sub(1, Ordering::AcqRel);
        // A failed wake leaves the job queued until the loop's next turn (it polls with a
        // timeout while jobs are in flight), so it is not lost.
        let _ = shared.waker.wake();
    }
}

fn run_job(job: &mut Job, handler: &dyn Handler, headers_store: &mut Vec<Header<'static>>) {
    let (head, body) = job.buf.split_at(job.head_len);
    let mut headers: Vec<Header<'_>> = recycle(std::mem::take(headers_store));
    job.index.fields(head, &mut headers);
    let req = Request::from_index(&job.index, &headers, body, &job.peer);
    let resp = &mut job.resp;
    job.panic = catch_unwind(AssertUnwindSafe(|| handler.handle(&req, resp)))
        .err()
        .map(|p| panic_message(&*p));
    *headers_store = recycle(headers);
}
