//! The child's event loop: one edge-triggered mio poll on the serving thread, the listener,
//! every connection's socket, the stop pipe, the lifeline to the master and the waker, which
//! handler threads, deferred responses and closed taken-over connections ring.
//!
//! Per connection and turn: read what is available (up to a byte budget, for fairness), let the
//! session answer every complete request, write all of it with one `send`, repeat until the
//! socket would block. With a handler that takes batches, the requests of the connections a
//! turn finds ready wait for one call for all of them (`gathered`). The connection's
//! transport (`super::transport`: plain, or TLS) does the reads and writes; the session never
//! knows which it has. Timeouts are checked by a sweep every `tick` over all connections, using
//! the loop's cached clock: no timer syscall per request.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use socket2::Socket;

use super::ServeControl;
use super::date::DateCache;
use super::deferred::Completion;
use super::hijack;
use super::listener::{self, Accepted, Listening};
use super::preamble::{self, Step};
use super::rate::{self, Rates, Slow};
use super::request::Handler;
use super::session::{Ctx, Exec, Limits, Part, Scratch, Session, Timer};
use super::transport::{self, Drive, Io, Plain, Sock, Transport, turn};
use super::workers::{Job, WorkerPool};
use crate::config::HttpConfig;
use crate::error::{Error, ErrorKind, panic_message};
use crate::lifeline;
use crate::log::{Level, Logger};
use crate::shared::{Beat, Cell};

mod gathered;

const WAKE: Token = Token(1);
const LIFELINE: Token = Token(2);
const WAKER: Token = Token(3);
/// Connection tokens are slab indices plus this.
const FIRST_CONN: usize = 16;
/// Listener tokens are their positions plus this, far above any connection's.
const FIRST_LISTENER: usize = usize::MAX / 2;

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
/// While draining, how long a connection that has sent nothing yet may take to send its first
/// request, from its accept. Such a client connected to be answered (the drain itself takes the
/// accept queue's connections); closing it unanswered is the reset a stop must not cause. One
/// silent for longer, like a speculative preconnect, is closed as an idle connection is.
const FIRST_REQUEST_IN_DRAIN: Duration = Duration::from_secs(1);
/// While draining, how long a keep-alive connection idle since its last response may take to
/// send its next request, from that response. A busy client sends it within a round trip, and
/// may be sending it as the drain begins: closing then resets that request (only a client
/// that retries would recover). Kept this long, it is answered with `Connection: close`; one
/// idle for longer is closed at once, as it is unlikely to be sending just then.
const NEXT_REQUEST_IN_DRAIN: Duration = Duration::from_millis(250);
/// Bounds of the timeout sweep period (an eighth of the shortest timeout in between).
const MIN_TICK: Duration = Duration::from_millis(5);
const MAX_TICK: Duration = Duration::from_millis(250);
/// Deferred responses still awaited are answered 503 this long (at most a quarter of the grace
/// period) before the drain's deadline, which is also when the master's SIGKILL comes: so that
/// the answers are out, and the child, which held on for them, can still finish (`exit_child`)
/// and exit by itself.
const GIVE_UP_MARGIN: Duration = Duration::from_millis(250);

struct Conn {
    /// The socket: TCP or Unix (the transport reads and writes `sock.fd`).
    stream: Socket,
    sock: Sock,
    io: Io,
    session: Session,
    generation: u64,
    /// Still waiting for its PROXY protocol header (since its accept, `timer_since`): no byte
    /// has gone to the session, or to the transport (a TLS handshake follows the header), yet.
    proxy_pending: bool,
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
    rates: Option<Box<Rates>>,
}

struct Server<'a> {
    poll: Poll,
    /// Emptied when the drain begins.
    listeners: Vec<Accepting>,
    /// Some listener may have connections to accept.
    listener_ready: bool,
    /// Where the next accept looks first, so that a busy listener does not starve the others.
    accept_next: usize,
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
    /// This turn's connections leave their requests for one batch (`gathered`).
    gathering: bool,
    /// The connections that did.
    gathered: Vec<usize>,
    /// Empty between turns: the allocations `gathered` borrows its connections into.
    gather_conns: Vec<(usize, &'static mut Conn)>,
    gather_parts: Vec<(usize, Part)>,
    cfg: &'a HttpConfig,
    limits: Limits,
    handler: &'a Arc<dyn Handler>,
    pool: Option<WorkerPool>,
    done: Vec<Job>,
    completed: Vec<Completion>,
    scratch: Scratch,
    date: DateCache,
    /// When the cached Date's second ends: the wall clock is read only then.
    date_due: Instant,
    now: Instant,
    tick: Duration,
    next_tick: Instant,
    drain_deadline: Option<Instant>,
    /// Every response closes its connection: the master's shutdown delay runs, or the drain.
    closing: bool,
    /// When draining: when deferred responses still awaited get their 503.
    give_up_at: Option<Instant>,
    grace: Duration,
    wake_fd: RawFd,
    lifeline_fd: Option<RawFd>,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Ciphertext of one TLS read (TLS connections only; empty otherwise).
    tls_in: Vec<u8>,
    /// This child's cell in the memory the master shares, where each turn is published.
    beat: Option<&'a Cell>,
    /// The watchdog's heartbeat period, when it is on.
    beat_period: Option<Duration>,
    /// Turns of the loop and requests received so far, published at every turn.
    turns: u64,
    requests: u64,
    log: &'a dyn Logger,
    /// Connections refused by the PROXY protocol step so far (the first is logged as a
    /// warning, the others at debug level: a misconfigured balancer must not flood the log).
    proxy_refused: u64,
}

/// A listener and whether it may have connections waiting (edge-triggered: until an accept
/// would block).
struct Accepting {
    listening: Listening,
    ready: bool,
}

/// Serves `listeners` until a stop is requested or the master dies, then drains. See
/// `super::serve`.
pub(crate) fn run(
    listeners: Vec<Listening>,
    handler: &Arc<dyn Handler>,
    cfg: &HttpConfig,
    mut ctl: ServeControl<'_>,
    log: &dyn Logger,
) -> Result<(), Error> {
    let io_err = |what: &str, e: io::Error| Error::io(ErrorKind::Io, what, e);
    let poll = Poll::new().map_err(|e| io_err("creating the event loop", e))?;
    let registry = poll.registry();
    for (i, l) in listeners.iter().enumerate() {
        socket2::SockRef::from(&l.fd)
            .set_nonblocking(true)
            .map_err(|e| io_err("making a listener non-blocking", e))?;
        let fd = l.fd.as_raw_fd();
        registry
            .register(
                &mut SourceFd(&fd),
                Token(FIRST_LISTENER + i),
                Interest::READABLE,
            )
            .map_err(|e| io_err("registering a listener", e))?;
    }
    let any_proxy = listeners.iter().any(|l| l.proxy);
    registry
        .register(&mut SourceFd(&ctl.wake_fd), WAKE, Interest::READABLE)
        .map_err(|e| io_err("registering the stop pipe", e))?;
    if let Some(fd) = ctl.lifeline_fd {
        registry
            .register(&mut SourceFd(&fd), LIFELINE, Interest::READABLE)
            .map_err(|e| io_err("registering the lifeline", e))?;
    }
    let waker =
        Arc::new(mio::Waker::new(registry, WAKER).map_err(|e| io_err("creating a waker", e))?);
    let pool = if cfg.handler_threads > 0 {
        let pool = WorkerPool::start(
            cfg.handler_threads,
            handler,
            Arc::clone(&waker),
            cfg.max_headers,
        )
        .map_err(|e| io_err("starting the handler threads", e))?;
        Some(pool)
    } else {
        None
    };
    let scratch = Scratch::new(cfg.max_headers);
    scratch.mailbox.connect(waker);

    let shortest = [
        cfg.header_timeout,
        cfg.body_timeout,
        cfg.idle_timeout,
        cfg.write_timeout,
        if any_proxy {
            cfg.proxy_timeout
        } else {
            MAX_TICK
        },
    ]
    .into_iter()
    .chain(rate::RateLimits::new(cfg).window())
    .min()
    .unwrap_or(MAX_TICK);
    let now = Instant::now();
    let mut server = Server {
        poll,
        listeners: listeners
            .into_iter()
            .map(|listening| Accepting {
                listening,
                ready: true,
            })
            .collect(),
        listener_ready: true,
        accept_next: 0,
        accept_resume: None,
        accept_warned: false,
        conns: Vec::new(),
        free: Vec::new(),
        live: 0,
        next_generation: 0,
        again: Vec::new(),
        again_spare: Vec::new(),
        gathering: false,
        gathered: Vec::new(),
        gather_conns: Vec::new(),
        gather_parts: Vec::new(),
        cfg,
        limits: Limits {
            batch: pool.is_none() && handler.batches(),
            ..Limits::new(cfg)
        },
        handler,
        pool,
        done: Vec::new(),
        completed: Vec::new(),
        scratch,
        date: DateCache::new(),
        date_due: now,
        now,
        tick: (shortest / 8).clamp(MIN_TICK, MAX_TICK),
        next_tick: now,
        drain_deadline: None,
        // The lifeline's hello may have carried the announcement already.
        closing: ctl.lifeline_fd.is_some() && lifeline::closing_announced(),
        give_up_at: None,
        grace: ctl.grace_period,
        wake_fd: ctl.wake_fd,
        lifeline_fd: ctl.lifeline_fd,
        tls_in: match ctl.tls {
            Some(_) => vec![0; transport::TLS_READ],
            None => Vec::new(),
        },
        tls: ctl.tls.take(),
        beat: ctl.beat.map(Beat::cell),
        beat_period: ctl.beat.and_then(|b| b.period),
        turns: 0,
        requests: 0,
        log,
        proxy_refused: 0,
    };
    let result = server.run(&mut ctl);
    server.close_all();
    server.scratch.mailbox.close();
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
    // Out of line, as before several listeners: inlined into its caller the loop measured
    // 4 instructions a request more (bench/instructions, 1 connection, depth 1).
    #[inline(never)]
    fn run(&mut self, ctl: &mut ServeControl<'_>) -> Result<(), Error> {
        let mut events = Events::with_capacity(1024);
        if crate::control::stop_requested() {
            self.start_drain(false);
        }
        // A first beat before the first turn: the watchdog leaves a child that never turned
        // alone (a serve-mode child, which runs no engine loop), so a handler that blocks the
        // very first turn must not look like one.
        if let Some(beat) = self.beat {
            self.turns = 1;
            beat.turn(self.turns, self.live, self.requests);
        }
        loop {
            if let Some(deadline) = self.drain_deadline {
                // First: giving up may close the last connection (its client, gone already,
                // has its FIN read by the lingering close at once), and the wait that
                // would follow could only end at the deadline, with the master's SIGKILL.
                if self.give_up_at.is_some_and(|t| self.now >= t) {
                    self.give_up_deferred();
                }
                if self.live == 0 || self.now >= deadline {
                    return Ok(());
                }
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
            // Several connections may have requests: one batch for all (see `gathered`).
            let gather = self.limits.batch && events.iter().nth(1).is_some();
            self.gathering = gather;
            for ev in events.iter() {
                match ev.token() {
                    WAKE => {
                        if let Some(byte) = self.read_wake() {
                            self.start_drain(byte == crate::control::WAKE_STOP_NOW);
                        }
                    }
                    LIFELINE => {
                        if let Some(fd) = self.lifeline_fd {
                            if lifeline::read(fd) == lifeline::State::Gone {
                                self.on_master_death(ctl);
                            }
                            // The master's shutdown delay: serve on, but let keep-alive
                            // clients go elsewhere.
                            self.closing |= lifeline::closing_announced();
                        }
                    }
                    // Deferred completions ring the waker (the sweep looks too, in case a wake
                    // failed); finished handler threads are collected every turn.
                    WAKER => self.collect_deferred(),
                    Token(t) => {
                        // A listener's token is far past every connection's: the lookup
                        // misses, and the connections' path pays no test for listeners.
                        let idx = t.wrapping_sub(FIRST_CONN);
                        if let Some(Some(c)) = self.conns.get_mut(idx) {
                            let hup = ev.is_read_closed() || ev.is_error();
                            let s = &mut c.sock;
                            s.readable |= ev.is_readable() || hup;
                            s.peer_hup |= hup;
                            s.writable |= ev.is_writable() || ev.is_write_closed() || ev.is_error();
                            if !self.read_for_batch(idx) {
                                self.drive(idx);
                            }
                            if hup {
                                self.drop_if_left(idx);
                            }
                        } else if t >= FIRST_LISTENER {
                            self.listener_event(t - FIRST_LISTENER);
                        }
                    }
                }
            }
            self.collect_done();
            self.accept();
            if gather {
                self.answer_gathered();
                self.gathering = false;
            }
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
                self.collect_deferred();
                self.sweep();
            }
            // After the turn's work, so the counts include it before the loop sleeps.
            if let Some(beat) = self.beat {
                self.turns += 1;
                beat.turn(self.turns, self.live, self.requests);
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
            if let Some(g) = self.give_up_at {
                consider(g);
            }
        }
        // The master's watchdog takes a loop that does not turn for long for a hung one.
        if let Some(period) = self.beat_period {
            consider(self.now + period);
        }
        // mio rounds a timeout up to epoll's whole milliseconds, so the wait never ends a hair
        // early into a turn that finds nothing due. Measured from the turn's start rather
        // than a fresh clock read: the deadlines here are sweeps and pauses, which may run a
        // turn's length late.
        wake_at.map(|t| t.saturating_duration_since(self.now))
    }

    /// Connections that count toward `max_connections`: those served, and those handed over
    /// and not closed yet.
    fn open(&self) -> usize {
        self.live + self.scratch.mailbox.taken()
    }

    fn can_accept(&self) -> bool {
        !self.listeners.is_empty()
            && self.open() < self.cfg.max_connections
            && self.accept_resume.is_none_or(|t| self.now >= t)
    }

    fn accept(&mut self) {
        if !self.listener_ready || !self.can_accept() {
            return;
        }
        self.accept_resume = None;
        for _ in 0..ACCEPT_BATCH {
            if self.stop_pending() {
                return;
            }
            if self.open() >= self.cfg.max_connections {
                // Resumed by the first close: `listener_ready` stays set.
                return;
            }
            let Some(at) = self.next_ready_listener() else {
                self.listener_ready = false;
                return;
            };
            match listener::accept(&self.listeners[at].listening) {
                Ok(accepted) => {
                    self.accept_warned = false;
                    self.add_conn(accepted);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.listeners[at].ready = false;
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

    #[cold]
    fn listener_event(&mut self, at: usize) {
        if let Some(l) = self.listeners.get_mut(at) {
            l.ready = true;
            self.listener_ready = true;
        }
    }

    /// The ready listener to accept from, round robin; `None` when none is ready.
    #[inline]
    fn next_ready_listener(&mut self) -> Option<usize> {
        let n = self.listeners.len();
        let at = (0..n)
            .map(|k| (self.accept_next + k) % n)
            .find(|&i| self.listeners[i].ready)?;
        self.accept_next = at + 1;
        Some(at)
    }

    fn add_conn(&mut self, accepted: Accepted) {
        let Accepted {
            sock,
            peer,
            proxy,
            local,
        } = accepted;
        if proxy && !self.proxy_allowed(peer) {
            return;
        }
        if !local.is_unix() {
            // Responses are written whole, once per batch: Nagle would only delay them.
            let _ = sock.set_tcp_nodelay(true);
        }
        let idx = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let token = Token(idx + FIRST_CONN);
        let fd = sock.as_raw_fd();
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&fd),
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
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
            session: Session::new(peer, Some(local)),
            generation: self.next_generation,
            proxy_pending: proxy,
            queued: false,
            timer: Timer::Idle,
            timer_seq: 0,
            timer_since: self.now,
            write_since: None,
            linger_until: None,
            linger_left: 0,
            rates: None,
        });
        self.live += 1;
        if !self.read_for_batch(idx) {
            self.drive(idx);
        }
    }

    /// Moves one connection as far as its socket, its budget and its requests allow (`turn`),
    /// then sets its timers.
    fn drive(&mut self, idx: usize) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        if conn.proxy_pending {
            return self.drive_proxy_header(idx);
        }
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
            exec: exec(&self.pool, self.handler),
            scratch: &mut self.scratch,
            draining: self.closing,
            conn: (idx, conn.generation),
            // A handler may take over a plain connection only: TLS state lives in `conn.io`.
            plain_socket: matches!(conn.io, Io::Plain),
            gather: self.gathering,
            log: self.log,
        };
        let mut budget = self.cfg.max_bytes_per_turn;
        let tls_in = &mut self.tls_in[..];
        let mut body_progress = false;
        let mut wrote = false;
        let seq_before = conn.session.seq();
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
                wrote,
                awaits_request(&conn.session, conn.timer, conn.timer_since, self.now)
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
                wrote,
                awaits_request(&conn.session, conn.timer, conn.timer_since, self.now)
            ),
        };
        // Counted per drive, not per request: the stats and recycling cost one add here.
        self.requests += conn.session.seq() - seq_before;
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
        if conn.session.waits_for_batch() {
            // The drive after the batch parks it and sets its timers.
            return self.enlist(idx);
        }
        conn.session.park(&mut self.scratch);
        conn.update_timers(&self.limits, self.now, body_progress, wrote);
    }

    /// The peer closed its side: if its response is deferred, it has left (as nginx takes it),
    /// and there is no need to hold the connection until the completion.
    #[cold]
    fn drop_if_left(&mut self, idx: usize) {
        if let Some(Some(conn)) = self.conns.get(idx)
            && conn.session.is_deferred()
        {
            self.close(idx);
        }
    }

    /// The last response is out: close, lingering unless the peer already closed its side.
    fn finish(&mut self, idx: usize) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        if conn.session.handing_over() {
            return self.hand_over(idx);
        }
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

    /// The connection's response is out and a handler takes the connection: it leaves the
    /// table without being closed.
    fn hand_over(&mut self, idx: usize) {
        let Some(conn) = self.conns[idx].take() else {
            return;
        };
        self.free.push(idx);
        self.live -= 1;
        // Only a plain connection is handed over (`Ctx::plain_socket`): its stream is all of it.
        let Conn {
            stream,
            mut session,
            ..
        } = conn;
        if let Some((on_conn, leftover)) = session.take_handover() {
            let mailbox = &self.scratch.mailbox;
            hijack::hand_over(
                stream,
                on_conn,
                leftover,
                self.poll.registry(),
                mailbox,
                self.log,
            );
        }
    }

    fn close_all(&mut self) {
        for idx in 0..self.conns.len() {
            // Past the grace period (or with none): a deferred response still awaited gets
            // its 503 if the socket takes it at once.
            if let Some(conn) = self.conns[idx].as_mut()
                && conn.session.give_up_deferred(self.date.get())
            {
                // Through the connection's transport: over TLS the 503 goes out encrypted.
                let mut budget = usize::MAX;
                conn.sock.writable = true;
                let _ = match &mut conn.io {
                    Io::Plain => Plain.flush(&mut conn.sock, &mut conn.session, &mut budget),
                    Io::Tls(tls) => tls.flush(&mut conn.sock, &mut conn.session, &mut budget),
                };
            }
            self.close(idx);
        }
    }

    /// The drain's grace period is nearly over: deferred responses still awaited are answered
    /// 503 now, and their connections close once it is written.
    fn give_up_deferred(&mut self) {
        self.give_up_at = None;
        for idx in 0..self.conns.len() {
            if let Some(conn) = self.conns[idx].as_mut()
                && conn.session.give_up_deferred(self.date.get())
            {
                self.drive(idx);
            }
        }
    }

    /// Applies the deadlines: write stall → drop; idle → drop; slow head or body → 408.
    fn sweep(&mut self) {
        let cfg = self.cfg;
        let draining = self.drain_deadline.is_some();
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
            // As in the turn: idle means nothing waits below the session either (TLS records).
            if draining
                && conn.session.is_idle()
                && !conn.io.holds_output()
                && !awaits_request(&conn.session, conn.timer, conn.timer_since, self.now)
            {
                self.close(idx);
                continue;
            }
            if conn.proxy_pending {
                // The timer has not moved since the accept: nothing reached the session.
                if self.now - conn.timer_since >= cfg.proxy_timeout {
                    self.refuse_proxy(idx, "no whole PROXY protocol header before the deadline");
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
            let body =
                (conn.timer == Timer::Body).then(|| (conn.session.seq(), conn.session.bytes_in()));
            let write = conn.write_since.map(|_| conn.session.bytes_out());
            match rate::check(&mut conn.rates, &self.limits.rates, self.now, body, write) {
                Some(Slow::Write) => {
                    // With a reset, not a FIN: the kernel would go on feeding the slow reader
                    // whatever the socket buffers hold, a slot of kernel memory per attacker.
                    let _ = socket2::SockRef::from(&conn.stream).set_linger(Some(Duration::ZERO));
                    self.close(idx);
                    continue;
                }
                Some(Slow::Body) => {
                    if conn.session.on_timeout(&self.limits, self.date.get()) {
                        self.close(idx);
                    } else {
                        self.drive(idx);
                    }
                    continue;
                }
                None => {}
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
        let draining = self.closing;
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
                    plain_socket: matches!(conn.io, Io::Plain),
                    gather: false,
                    log: self.log,
                };
                conn.session.complete(&mut job, &mut ctx);
                if !conn.queued {
                    conn.queued = true;
                    self.again.push(idx);
                }
            }
            // Its connection may be gone, with what the handler took over still on it.
            job.resp.abandon();
            self.scratch.free_jobs.push(job);
        }
        self.done = jobs;
    }

    /// Sends the deferred responses completed since the last turn. One whose connection is
    /// gone, or no longer waits for it, is dropped.
    fn collect_deferred(&mut self) {
        if !self.scratch.mailbox.has_mail() {
            return;
        }
        let mut completed = std::mem::take(&mut self.completed);
        self.scratch.mailbox.take(&mut completed);
        let draining = self.closing;
        for done in completed.drain(..) {
            let (idx, generation) = done.conn;
            let Some(Some(conn)) = self.conns.get_mut(idx) else {
                continue;
            };
            if conn.generation != generation || !conn.session.awaits(done.seq) {
                continue;
            }
            let mut ctx = Ctx {
                limits: &self.limits,
                date: self.date.get(),
                exec: exec(&self.pool, self.handler),
                scratch: &mut self.scratch,
                draining,
                conn: done.conn,
                plain_socket: matches!(conn.io, Io::Plain),
                gather: false,
                log: self.log,
            };
            conn.session.complete_deferred(done, &mut ctx);
            if !conn.queued {
                conn.queued = true;
                self.again.push(idx);
            }
        }
        self.completed = completed;
    }

    /// Stops accepting and lets the connections finish (`now`: with no grace at all).
    fn start_drain(&mut self, now: bool) {
        let grace = if now { Duration::ZERO } else { self.grace };
        let deadline = self.now + grace;
        let deadline = self.drain_deadline.map_or(deadline, |d| d.min(deadline));
        self.drain_deadline = Some(deadline);
        self.closing = true;
        let margin = GIVE_UP_MARGIN.min(grace / 4);
        self.give_up_at = Some(deadline.checked_sub(margin).unwrap_or(deadline));
        let mut queued = Vec::new();
        for l in std::mem::take(&mut self.listeners) {
            queued.extend(self.close_listener(l.listening, !grace.is_zero()));
        }
        for idx in 0..self.conns.len() {
            if self.conns[idx].is_some() {
                self.drive(idx);
            }
        }
        for accepted in queued {
            self.add_conn(accepted);
        }
    }

    /// Closes this process's descriptor of the listener, first taking (when `take_queue`)
    /// every connection in its accept queue, which it returns to be served.
    ///
    /// The kernel resets the queued connections of a listener whose last descriptor closes,
    /// and their clients, which saw the handshake complete, would have sent a request for
    /// nothing. The master closes its copies when the stop begins, so the children's are the
    /// last: each takes what is queued, then closes at once, with nothing in between, and from
    /// the last close on the kernel refuses new connections. A connection that completes its
    /// handshake in that gap of two system calls is the only one a stop can still reset.
    fn close_listener(&mut self, listener: Listening, take_queue: bool) -> Vec<Accepted> {
        // The listener's open file may outlive this descriptor (other children share it), and
        // with it this epoll's registration: remove that first.
        let fd = listener.fd.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        let queued = if take_queue {
            self.accept_all(&listener)
        } else {
            Vec::new()
        };
        drop(listener);
        queued
    }

    /// Accepts until the queue is empty. Whatever max_connections says: the queue is bounded
    /// by the backlog, and a connection left in it is reset when the listener closes.
    fn accept_all(&self, listener: &Listening) -> Vec<Accepted> {
        let mut queued = Vec::new();
        loop {
            match listener::accept(listener) {
                Ok(conn) => queued.push(conn),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return queued,
                Err(e) if is_transient_accept_error(&e) => {}
                Err(e) => {
                    self.log.log(
                        Level::Warn,
                        &format!(
                            "accept failed ({e}) while taking the accept queue at the stop; \
                             connections left in it are reset"
                        ),
                    );
                    return queued;
                }
            }
        }
    }

    /// A stop was requested whose wake-up this loop has not read yet (it was inside a blocking
    /// handler): starts the drain now, so no connection is taken as if still serving.
    fn stop_pending(&mut self) -> bool {
        if self.drain_deadline.is_some() || !crate::control::stop_requested() {
            return false;
        }
        let now = self.read_wake() == Some(crate::control::WAKE_STOP_NOW);
        self.start_drain(now);
        true
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
        crate::control::master_gone();
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

/// The PROXY protocol step (`cfg.proxy_protocol`): the first thing a connection does.
impl Server<'_> {
    /// A connection from a source the allowlist does not name is closed before anything is
    /// read: only trusted balancers may speak for a client (the spec's §5).
    /// A Unix socket's peer is a local process, which the socket file's permissions admit:
    /// `proxy_allow`, a list of IP networks, does not apply to it.
    fn proxy_allowed(&mut self, peer: Option<SocketAddr>) -> bool {
        let Some(peer) = peer else {
            return true;
        };
        if self
            .cfg
            .proxy_allow
            .iter()
            .any(|net| net.contains(peer.ip()))
        {
            return true;
        }
        self.log_refusal(peer, "its source is not in proxy_allow");
        false
    }

    /// `drive` for a connection still waiting for its header: out of line, so that serving
    /// connections pay one test of a flag for it.
    #[cold]
    #[inline(never)]
    fn drive_proxy_header(&mut self, idx: usize) {
        if self.proxy_header(idx) {
            self.drive(idx);
        }
    }

    /// Reads the header of connection `idx` as far as its socket allows; true when it is
    /// done and the session may run.
    fn proxy_header(&mut self, idx: usize) -> bool {
        let Some(conn) = self.conns[idx].as_mut() else {
            return false;
        };
        if !conn.sock.readable {
            return false;
        }
        // On the raw socket, under any transport: the header precedes a TLS handshake.
        match preamble::read_proxy_header(conn.sock.fd, conn.sock.peer_hup) {
            Step::Wait => {
                conn.sock.readable = false;
                false
            }
            Step::Done(header) => {
                conn.session.set_proxy(header);
                conn.proxy_pending = false;
                // Only the header was read: bytes after it (a request, a ClientHello) may be
                // waiting, with no new edge to announce them.
                conn.sock.readable = true;
                true
            }
            Step::Fail(why) => {
                self.refuse_proxy(idx, why);
                false
            }
        }
    }

    fn refuse_proxy(&mut self, idx: usize, why: &str) {
        if let Some(conn) = self.conns[idx].as_ref() {
            let peer = conn.stream.peer_addr().ok().and_then(|a| a.as_socket());
            match peer {
                Some(p) => self.log_refusal(p, why),
                None => self.log_refusal_text("an unknown peer", why),
            }
        }
        self.close(idx);
    }

    fn log_refusal(&mut self, peer: SocketAddr, why: &str) {
        self.log_refusal_text(&peer.to_string(), why);
    }

    fn log_refusal_text(&mut self, peer: &str, why: &str) {
        self.proxy_refused += 1;
        let (level, more) = if self.proxy_refused == 1 {
            (Level::Warn, " (further refusals are logged at debug level)")
        } else {
            (Level::Debug, "")
        };
        self.log.log(
            level,
            &format!("closed a connection from {peer}: {why}{more}"),
        );
    }
}

/// While draining: an idle connection is kept for its next request when it has sent nothing
/// since its accept, not long ago (`FIRST_REQUEST_IN_DRAIN`), or had its last response not
/// long ago (`NEXT_REQUEST_IN_DRAIN`). Its timer has been `Idle` since then, so
/// `timer_since` is that instant.
/// Takes the connection's fields, not the connection: the turn calls it with the transport
/// borrowed.
#[inline]
fn awaits_request(session: &Session, timer: Timer, since: Instant, now: Instant) -> bool {
    let window = if session.seq() == 0 {
        FIRST_REQUEST_IN_DRAIN
    } else {
        NEXT_REQUEST_IN_DRAIN
    };
    timer == Timer::Idle && now.saturating_duration_since(since) < window
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

/// Where a session runs its handler: on the handler threads when there are some, else inline.
#[inline(always)]
fn exec<'a>(pool: &'a Option<WorkerPool>, handler: &'a Arc<dyn Handler>) -> Exec<'a> {
    match pool {
        Some(pool) => Exec::Pool(pool),
        None => Exec::Inline(&**handler),
    }
}
