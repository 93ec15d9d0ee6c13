//! The child's event loop: one edge-triggered mio poll on the serving thread, the listener,
//! every connection's socket, the stop pipe, the lifeline to the master and (with handler
//! threads) the waker.
//!
//! Per connection and turn: read what is available (up to a byte budget, for fairness), let the
//! session answer every complete request, write all of it with one `send`, repeat until the
//! socket would block. The connection's transport (`super::transport`: plain, or TLS) does the
//! reads and writes; the session never knows which it has. Timeouts are checked by a sweep every `tick` over all connections, using
//! the loop's cached clock: no timer syscall per request.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener as StdListener};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::ServeControl;
use super::date::DateCache;
use super::request::Handler;
use super::session::{Ctx, Exec, Limits, Scratch, Session, Timer};
use super::transport::{self, Drive, Io, Plain, Sock, Transport, turn};
use super::workers::{Job, WorkerPool};
use crate::config::HttpConfig;
use crate::error::{Error, ErrorKind, panic_message};
use crate::lifeline;
use crate::log::{Level, Logger};

const LISTENER: Token = Token(0);
const WAKE: Token = Token(1);
const LIFELINE: Token = Token(2);
const WAKER: Token = Token(3);
/// Connection tokens are slab indices plus this.
const FIRST_CONN: usize = 16;

/// Connections accepted per turn before the others get a go.
const ACCEPT_BATCH: usize = 64;
/// Pause before accepting again after running out of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// After the last response, the socket's write side is shut and its input discarded for at
/// most this long, so unread request bytes never turn the close into a reset that destroys the
/// response in flight (a "lingering close", as nginx does).
const LINGER: Duration = Duration::from_secs(2);
/// Input discarded at most while lingering.
const LINGER_BYTES: usize = 256 * 1024;
/// Bounds of the timeout sweep period (an eighth of the shortest timeout in between).
const MIN_TICK: Duration = Duration::from_millis(5);
const MAX_TICK: Duration = Duration::from_millis(250);

struct Conn {
    stream: TcpStream,
    sock: Sock,
    io: Io,
    session: Session,
    generation: u64,
    /// Listed in `Server::again` for the next turn.
    queued: bool,
    timer: Timer,
    timer_seq: u64,
    timer_since: Instant,
    /// Output pending, without write progress since then.
    write_since: Option<Instant>,
    /// Lingering close under way: drop the connection at this instant at the latest.
    linger_until: Option<Instant>,
    linger_left: usize,
}

struct Server<'a> {
    poll: Poll,
    listener: Option<TcpListener>,
    listener_ready: bool,
    accept_resume: Option<Instant>,
    accept_warned: bool,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    live: usize,
    next_generation: u64,
    /// Connections whose budget ran out this turn, or whose handler thread finished.
    again: Vec<usize>,
    /// The previous turn's `again`, kept for its allocation.
    again_spare: Vec<usize>,
    cfg: &'a HttpConfig,
    limits: Limits,
    handler: &'a Arc<dyn Handler>,
    pool: Option<WorkerPool>,
    done: Vec<Job>,
    scratch: Scratch,
    date: DateCache,
    /// When the cached Date's second ends: the wall clock is read only then.
    date_due: Instant,
    now: Instant,
    tick: Duration,
    next_tick: Instant,
    drain_deadline: Option<Instant>,
    grace: Duration,
    wake_fd: RawFd,
    lifeline_fd: Option<RawFd>,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Ciphertext of one TLS read (TLS connections only; empty otherwise).
    tls_in: Vec<u8>,
    log: &'a dyn Logger,
}

/// Serves `listener` until a stop is requested or the master dies, then drains. See
/// `super::serve`.
pub(crate) fn run(
    listener: StdListener,
    handler: &Arc<dyn Handler>,
    cfg: &HttpConfig,
    mut ctl: ServeControl<'_>,
    log: &dyn Logger,
) -> Result<(), Error> {
    let io_err = |what: &str, e: io::Error| Error::io(ErrorKind::Io, what, e);
    listener
        .set_nonblocking(true)
        .map_err(|e| io_err("making the listener non-blocking", e))?;
    let poll = Poll::new().map_err(|e| io_err("creating the event loop", e))?;
    let mut listener = TcpListener::from_std(listener);
    let registry = poll.registry();
    registry
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| io_err("registering the listener", e))?;
    registry
        .register(&mut SourceFd(&ctl.wake_fd), WAKE, Interest::READABLE)
        .map_err(|e| io_err("registering the stop pipe", e))?;
    if let Some(fd) = ctl.lifeline_fd {
        registry
            .register(&mut SourceFd(&fd), LIFELINE, Interest::READABLE)
            .map_err(|e| io_err("registering the lifeline", e))?;
    }
    let pool = if cfg.handler_threads > 0 {
        let waker = mio::Waker::new(registry, WAKER).map_err(|e| io_err("creating a waker", e))?;
        let pool = WorkerPool::start(cfg.handler_threads, handler, waker, cfg.max_headers)
            .map_err(|e| io_err("starting the handler threads", e))?;
        Some(pool)
    } else {
        None
    };

    let shortest = [
        cfg.header_timeout,
        cfg.body_timeout,
        cfg.idle_timeout,
        cfg.write_timeout,
    ]
    .into_iter()
    .min()
    .unwrap_or(MAX_TICK);
    let now = Instant::now();
    let mut server = Server {
        poll,
        listener: Some(listener),
        listener_ready: true,
        accept_resume: None,
        accept_warned: false,
        conns: Vec::new(),
        free: Vec::new(),
        live: 0,
        next_generation: 0,
        again: Vec::new(),
        again_spare: Vec::new(),
        cfg,
        limits: Limits::new(cfg),
        handler,
        pool,
        done: Vec::new(),
        scratch: Scratch::new(cfg.max_headers),
        date: DateCache::new(),
        date_due: now,
        now,
        tick: (shortest / 8).clamp(MIN_TICK, MAX_TICK),
        next_tick: now,
        drain_deadline: None,
        grace: ctl.grace_period,
        wake_fd: ctl.wake_fd,
        lifeline_fd: ctl.lifeline_fd,
        tls_in: match ctl.tls {
            Some(_) => vec![0; transport::TLS_READ],
            None => Vec::new(),
        },
        tls: ctl.tls.take(),
        log,
    };
    let result = server.run(&mut ctl);
    server.close_all();
    if let Some(mut pool) = server.pool.take() {
        let stuck = pool.shutdown();
        if stuck > 0 {
            log.log(
                Level::Warn,
                &format!(
                    "{stuck} handler thread(s) still busy after the grace period; not waiting"
                ),
            );
        }
    }
    result
}

impl Server<'_> {
    fn run(&mut self, ctl: &mut ServeControl<'_>) -> Result<(), Error> {
        let mut events = Events::with_capacity(1024);
        if crate::control::stop_requested() {
            self.start_drain(false);
        }
        loop {
            if let Some(deadline) = self.drain_deadline
                && (self.live == 0 || self.now >= deadline)
            {
                return Ok(());
            }
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                return Err(Error::io(ErrorKind::Io, "waiting for events", e));
            }
            self.now = Instant::now();
            if self.now >= self.date_due {
                self.refresh_date();
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.listener_ready = true,
                    WAKE => {
                        if let Some(byte) = self.read_wake() {
                            self.start_drain(byte == crate::control::WAKE_STOP_NOW);
                        }
                    }
                    LIFELINE => {
                        if let Some(fd) = self.lifeline_fd
                            && lifeline::read(fd) == lifeline::State::Gone
                        {
                            self.on_master_death(ctl);
                        }
                    }
                    WAKER => {}
                    Token(t) => {
                        let idx = t - FIRST_CONN;
                        if let Some(Some(c)) = self.conns.get_mut(idx) {
                            let s = &mut c.sock;
                            s.readable |= ev.is_readable() || ev.is_read_closed() || ev.is_error();
                            s.peer_hup |= ev.is_read_closed() || ev.is_error();
                            s.writable |= ev.is_writable() || ev.is_write_closed() || ev.is_error();
                            self.drive(idx);
                        }
                    }
                }
            }
            self.collect_done();
            self.accept();
            if !self.again.is_empty() {
                let mut batch =
                    std::mem::replace(&mut self.again, std::mem::take(&mut self.again_spare));
                for idx in batch.drain(..) {
                    if let Some(Some(c)) = self.conns.get_mut(idx) {
                        c.queued = false;
                        self.drive(idx);
                    }
                }
                self.again_spare = batch;
            }
            if self.now >= self.next_tick {
                self.next_tick = self.now + self.tick;
                self.sweep();
            }
        }
    }

    /// Reformats the Date once its second is over. A wall clock step shows after at most a
    /// second.
    fn refresh_date(&mut self) {
        let wall = SystemTime::now();
        self.date.refresh(wall);
        let into_second = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        self.date_due = self.now + Duration::from_nanos(1_000_000_000 - u64::from(into_second));
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.again.is_empty() || (self.listener_ready && self.can_accept()) {
            return Some(Duration::ZERO);
        }
        let mut wake_at: Option<Instant> = None;
        let mut consider = |t: Instant| wake_at = Some(wake_at.map_or(t, |w| w.min(t)));
        if self.live > 0 || self.pool.as_ref().is_some_and(|p| p.outstanding() > 0) {
            consider(self.next_tick);
        }
        if let Some(t) = self.accept_resume {
            consider(t);
        }
        if let Some(t) = self.drain_deadline {
            consider(t);
        }
        // mio rounds a timeout up to epoll's whole milliseconds, so the wait never ends a hair
        // early into a turn that finds nothing due. Measured from the turn's start rather
        // than a fresh clock read: the deadlines here are sweeps and pauses, which may run a
        // turn's length late.
        wake_at.map(|t| t.saturating_duration_since(self.now))
    }

    fn can_accept(&self) -> bool {
        self.listener.is_some()
            && self.live < self.cfg.max_connections
            && self.accept_resume.is_none_or(|t| self.now >= t)
    }

    fn accept(&mut self) {
        if !self.listener_ready || !self.can_accept() {
            return;
        }
        self.accept_resume = None;
        for _ in 0..ACCEPT_BATCH {
            if self.live >= self.cfg.max_connections {
                // Resumed by the first close: `listener_ready` stays set.
                return;
            }
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((sock, peer)) => {
                    self.accept_warned = false;
                    self.add_conn(sock, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.listener_ready = false;
                    return;
                }
                Err(e) if is_transient_accept_error(&e) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM or worse: the pending connection stays in
                    // the backlog; retry after a pause (or at the next close) instead of
                    // spinning on an error that is still there.
                    if !self.accept_warned {
                        self.accept_warned = true;
                        self.log.log(
                            Level::Warn,
                            &format!(
                                "accept failed ({e}) with {} connections open; pausing accept",
                                self.live
                            ),
                        );
                    }
                    self.accept_resume = Some(self.now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    fn add_conn(&mut self, mut sock: TcpStream, peer: SocketAddr) {
        // Responses are written whole, once per batch: Nagle would only delay them.
        let _ = sock.set_nodelay(true);
        let idx = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let token = Token(idx + FIRST_CONN);
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
        {
            self.log.log(
                Level::Warn,
                &format!("registering a connection failed: {e}"),
            );
            self.free.push(idx);
            return;
        }
        let io = match &self.tls {
            None => Io::Plain,
            Some(config) => match Io::tls(config, self.limits.max_output) {
                Some(io) => io,
                None => {
                    self.free.push(idx);
                    return;
                }
            },
        };
        self.next_generation += 1;
        self.conns[idx] = Some(Conn {
            sock: Sock {
                fd: sock.as_raw_fd(),
                // Requests often arrive with the connection: try reading at once.
                readable: true,
                writable: true,
                peer_hup: false,
            },
            stream: sock,
            io,
            session: Session::new(Some(peer)),
            generation: self.next_generation,
            queued: false,
            timer: Timer::Idle,
            timer_seq: 0,
            timer_since: self.now,
            write_since: None,
            linger_until: None,
            linger_left: 0,
        });
        self.live += 1;
        self.drive(idx);
    }

    /// Moves one connection as far as its socket, its budget and its requests allow (`turn`),
    /// then sets its timers.
    fn drive(&mut self, idx: usize) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        if conn.linger_until.is_some() {
            if linger(conn) {
                self.close(idx);
            }
            return;
        }
        let draining = self.drain_deadline.is_some();
        let mut ctx = Ctx {
            limits: &self.limits,
            date: self.date.get(),
            exec: match &self.pool {
                Some(pool) => Exec::Pool(pool),
                None => Exec::Inline(&**self.handler),
            },
            scratch: &mut self.scratch,
            draining,
            conn: (idx, conn.generation),
            log: self.log,
        };
        let mut budget = self.cfg.max_bytes_per_turn;
        let tls_in = &mut self.tls_in[..];
        let mut body_progress = false;
        let mut wrote = false;
        // The transport is chosen here, once: each turn is compiled for one.
        let outcome = match &mut conn.io {
            Io::Plain => turn!(
                Plain,
                conn.sock,
                conn.session,
                ctx,
                tls_in,
                budget,
                draining,
                body_progress,
                wrote
            ),
            Io::Tls(tls) => turn!(
                **tls,
                conn.sock,
                conn.session,
                ctx,
                tls_in,
                budget,
                draining,
                body_progress,
                wrote
            ),
        };
        match outcome {
            Drive::Close => return self.close(idx),
            Drive::Finish => return self.finish(idx),
            Drive::Again => {
                if !conn.queued {
                    conn.queued = true;
                    self.again.push(idx);
                }
            }
            Drive::Wait => {}
        }
        conn.session.park(&mut self.scratch);
        conn.update_timers(&self.limits, self.now, body_progress, wrote);
    }

    /// The last response is out: close, lingering unless the peer already closed its side.
    fn finish(&mut self, idx: usize) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        conn.io.close_notify(&mut conn.sock);
        if conn.session.peer_closed() {
            return self.close(idx);
        }
        if conn.stream.shutdown(Shutdown::Write).is_err() {
            return self.close(idx);
        }
        conn.linger_until = Some(self.now + LINGER);
        conn.linger_left = LINGER_BYTES;
        conn.sock.readable = true;
        if linger(conn) {
            self.close(idx);
        }
    }

    fn close(&mut self, idx: usize) {
        // Closing the socket removes it from the epoll set; no deregister call needed.
        if self.conns[idx].take().is_some() {
            self.free.push(idx);
            self.live -= 1;
            // A descriptor was freed: an accept paused by EMFILE may succeed now.
            self.accept_resume = None;
        }
    }

    fn close_all(&mut self) {
        for idx in 0..self.conns.len() {
            self.close(idx);
        }
    }

    /// Applies the deadlines: write stall → drop; idle → drop; slow head or body → 408.
    fn sweep(&mut self) {
        let cfg = self.cfg;
        for idx in 0..self.conns.len() {
            let Some(conn) = self.conns[idx].as_mut() else {
                continue;
            };
            if let Some(until) = conn.linger_until {
                if self.now >= until {
                    self.close(idx);
                }
                continue;
            }
            if conn
                .write_since
                .is_some_and(|t| self.now - t >= cfg.write_timeout)
            {
                self.close(idx);
                continue;
            }
            let limit = match conn.timer {
                Timer::Off => continue,
                // A connection that has not sent a first request gets no more than the time
                // allowed for a head: idle connections must not be a free slowloris.
                Timer::Idle if conn.session.seq() == 0 => cfg.idle_timeout.min(cfg.header_timeout),
                Timer::Idle => cfg.idle_timeout,
                Timer::Head => cfg.header_timeout,
                Timer::Body => cfg.body_timeout,
            };
            if self.now - conn.timer_since < limit {
                continue;
            }
            if conn.session.on_timeout(&self.limits, self.date.get()) {
                self.close(idx);
            } else {
                self.drive(idx);
            }
        }
    }

    fn collect_done(&mut self) {
        let Some(pool) = self.pool.as_ref() else {
            return;
        };
        pool.take_done(&mut self.done);
        if self.done.is_empty() {
            return;
        }
        let draining = self.drain_deadline.is_some();
        let mut jobs = std::mem::take(&mut self.done);
        for mut job in jobs.drain(..) {
            let (idx, generation) = job.conn;
            if let Some(Some(conn)) = self.conns.get_mut(idx)
                && conn.generation == generation
            {
                let mut ctx = Ctx {
                    limits: &self.limits,
                    date: self.date.get(),
                    exec: Exec::Pool(pool),
                    scratch: &mut self.scratch,
                    draining,
                    conn: job.conn,
                    log: self.log,
                };
                conn.session.complete(&mut job, &mut ctx);
                if !conn.queued {
                    conn.queued = true;
                    self.again.push(idx);
                }
            }
            job.resp.reset();
            self.scratch.free_jobs.push(job);
        }
        self.done = jobs;
    }

    /// Stops accepting and lets the connections finish (`now`: with no grace at all).
    fn start_drain(&mut self, now: bool) {
        let grace = if now { Duration::ZERO } else { self.grace };
        let deadline = self.now + grace;
        self.drain_deadline = Some(self.drain_deadline.map_or(deadline, |d| d.min(deadline)));
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
            // Dropping it closes this child's descriptor; the other children keep serving.
        }
        for idx in 0..self.conns.len() {
            if self.conns[idx].is_some() {
                self.drive(idx);
            }
        }
    }

    /// Reads every pending byte of the stop pipe; returns the most urgent request seen.
    fn read_wake(&self) -> Option<u8> {
        // SAFETY: the stop pipe stays open while serve runs (ServeControl's wake_fd is the
        // process's never-closed pipe, or a test's, closed only after serve returns), and the
        // borrow ends with this call.
        crate::control::drain(unsafe { BorrowedFd::borrow_raw(self.wake_fd) })
    }

    fn on_master_death(&mut self, ctl: &mut ServeControl<'_>) {
        if let Some(fd) = self.lifeline_fd.take() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        }
        self.log
            .log(Level::Warn, "the master process is gone; draining");
        if let Some(hook) = ctl.on_master_death.take()
            && let Err(p) = catch_unwind(AssertUnwindSafe(hook))
        {
            self.log.log(
                Level::Error,
                &format!("the master-death hook panicked: {}", panic_message(&*p)),
            );
        }
        self.start_drain(false);
    }
}

impl Conn {
    /// Output not yet on the wire: the session's, or below it in the transport.
    #[inline]
    fn output_pending(&self) -> bool {
        self.session.out_pending() > 0 || self.io.holds_output()
    }

    /// Restarts the read deadline when a new one applies, and the write deadline on progress.
    #[inline(always)]
    fn update_timers(&mut self, limits: &Limits, now: Instant, body_progress: bool, wrote: bool) {
        let timer = self.session.timer(limits);
        let seq = self.session.seq();
        if timer != self.timer || seq != self.timer_seq || (timer == Timer::Body && body_progress) {
            self.timer = timer;
            self.timer_seq = seq;
            self.timer_since = now;
        }
        if !self.output_pending() {
            self.write_since = None;
        } else if wrote || self.write_since.is_none() {
            self.write_since = Some(now);
        }
    }
}

/// Discards input of a closing connection; true when it can be dropped.
fn linger(conn: &mut Conn) -> bool {
    let mut buf = [0u8; 4096];
    let fd = conn.sock.fd;
    loop {
        match transport::recv(fd, &mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                conn.linger_left = conn.linger_left.saturating_sub(n);
                if conn.linger_left == 0 {
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM | libc::ETIMEDOUT)
    )
}
