//! Deferred responses (`Response::defer`): completed from another thread, in request order
//! under pipelining, 500 when abandoned, dropped when the client left, 503 at the end of the
//! drain's grace period.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use prefork::{Deferred, ErrorKind, Handler, HttpConfig, Request, Response};

use crate::support::*;

/// Defers by path: `/later?MS` completes from a thread after MS ms, `/now` completes before
/// the handler returns, `/drop` drops the `Deferred`, `/never` keeps it forever, `/twice`
/// tries to defer twice; anything else answers at once.
struct Later {
    kept: Mutex<Vec<Deferred>>,
    completed: Arc<AtomicUsize>,
}

impl Later {
    fn new() -> Arc<Later> {
        Arc::new(Later {
            kept: Mutex::new(Vec::new()),
            completed: Arc::new(AtomicUsize::new(0)),
        })
    }
}

impl Handler for Later {
    fn handle(&self, req: &Request<'_>, resp: &mut Response) {
        match req.path() {
            "/later" => {
                let ms: u64 = req.query().parse().unwrap();
                let mut d = resp.defer().unwrap();
                let completed = Arc::clone(&self.completed);
                thread::spawn(move || {
                    thread::sleep(Duration::from_millis(ms));
                    d.write(format!("later {ms}").as_bytes());
                    d.complete();
                    completed.fetch_add(1, Ordering::SeqCst);
                });
            }
            "/now" => {
                let mut d = resp.defer().unwrap();
                d.set_status(201).unwrap();
                d.write(b"before returning");
                d.complete();
            }
            "/drop" => drop(resp.defer().unwrap()),
            "/never" => self.kept.lock().unwrap().push(resp.defer().unwrap()),
            "/twice" => {
                let mut d = resp.defer().unwrap();
                let again = resp.defer().unwrap_err();
                assert_eq!(again.kind(), ErrorKind::InvalidState);
                d.write(b"deferred once");
                d.complete();
            }
            path => {
                // The probe of `Client::closed` needs its path back.
                resp.add_header(b"X-Path", path.as_bytes()).unwrap();
                resp.write(b"at once");
            }
        }
    }
}

fn start(handler: &Arc<Later>, cfg: HttpConfig, grace: Duration) -> Server {
    let opts = Opts {
        grace,
        lifeline: false,
    };
    Server::start_with(Arc::clone(handler) as Arc<dyn Handler>, cfg, opts)
}

#[test]
fn a_deferred_response_is_sent_when_another_thread_completes_it() {
    let h = Later::new();
    let server = start(&h, cfg(), IO_TIMEOUT);
    let mut c = server.connect();
    let t0 = Instant::now();
    c.send(&get("/later?150"));
    let r = c.response(false).unwrap();
    let took = t0.elapsed();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"later 150"[..]));
    assert!(took >= Duration::from_millis(150), "{took:?}");
    assert!(
        !c.closed(),
        "the connection stays open after a deferred response"
    );
}

#[test]
fn pipelined_requests_wait_for_the_deferred_one() {
    let h = Later::new();
    let server = start(&h, cfg(), IO_TIMEOUT);
    let mut c = server.connect();
    let mut batch = get("/later?200");
    batch.extend_from_slice(&get("/"));
    batch.extend_from_slice(&get("/later?10"));
    batch.extend_from_slice(&get("/now"));
    c.send(&batch);
    let rs = collect(&mut c, 4, vec![false; 4]);
    let got: Vec<(u16, String)> = rs
        .iter()
        .map(|r| (r.status, String::from_utf8_lossy(&r.body).into_owned()))
        .collect();
    assert_eq!(
        got,
        [
            (200, "later 200".to_string()),
            (200, "at once".to_string()),
            (200, "later 10".to_string()),
            (201, "before returning".to_string()),
        ]
    );
    assert!(!c.closed());
}

#[test]
fn deferred_responses_are_concurrent_on_one_event_loop() {
    let h = Later::new();
    let server = start(&h, cfg(), IO_TIMEOUT);
    let mut clients: Vec<Client> = (0..200).map(|_| server.connect()).collect();
    let t0 = Instant::now();
    for c in &mut clients {
        c.send(&get("/later?200"));
    }
    for c in &mut clients {
        assert_eq!(c.response(false).unwrap().body, b"later 200");
    }
    let took = t0.elapsed();
    // One after the other, 200 of them would take 40 s.
    assert!(
        took < Duration::from_secs(2),
        "200 deferred requests took {took:?}"
    );
}

#[test]
fn a_handler_thread_may_defer_too() {
    let h = Later::new();
    let threaded = HttpConfig {
        handler_threads: 2,
        ..cfg()
    };
    let server = start(&h, threaded, IO_TIMEOUT);
    let mut c = server.connect();
    let mut batch = get("/later?50");
    batch.extend_from_slice(&get("/now"));
    c.send(&batch);
    let rs = collect(&mut c, 2, vec![false; 2]);
    assert_eq!(rs[0].body, b"later 50");
    assert_eq!(rs[1].body, b"before returning");
}

#[test]
fn a_response_is_deferred_once() {
    let h = Later::new();
    let server = start(&h, cfg(), IO_TIMEOUT);
    let mut c = server.connect();
    c.send(&get("/twice"));
    assert_eq!(c.response(false).unwrap().body, b"deferred once");
}

#[test]
fn a_deferred_response_dropped_uncompleted_is_a_500_that_closes() {
    let h = Later::new();
    let server = start(&h, cfg(), IO_TIMEOUT);
    let mut c = server.connect();
    c.send(&get("/drop"));
    let r = c.response(false).unwrap();
    assert_eq!((r.status, r.closes()), (500, true));
    c.expect_closed();
    let log = server.log.0.lock().unwrap().join("\n");
    assert!(log.contains("dropped without being completed"), "{log}");
}

#[test]
fn a_completion_after_the_client_left_is_dropped() {
    let h = Later::new();
    let server = start(&h, cfg(), IO_TIMEOUT);
    let mut gone = server.connect();
    gone.send(&get("/later?300"));
    thread::sleep(Duration::from_millis(50));
    drop(gone);
    // A new connection may take the slot of the one that left; the late completion must not
    // reach it.
    let mut c = server.connect();
    c.send(&get("/"));
    assert_eq!(c.response(false).unwrap().body, b"at once");
    let deadline = Instant::now() + IO_TIMEOUT;
    while h.completed.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the deferred response was never completed"
        );
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(50));
    c.send(&get("/"));
    assert_eq!(c.response(false).unwrap().body, b"at once");
    assert!(!c.closed(), "nothing else arrived on the new connection");
}

#[test]
fn a_deferred_response_pending_at_the_drain_deadline_gets_503() {
    let h = Later::new();
    let server = start(&h, cfg(), Duration::from_millis(500));
    let mut c = server.connect();
    c.send(&get("/never"));
    thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    server.stop();
    let r = c.response(false).unwrap();
    let took = t0.elapsed();
    assert_eq!((r.status, r.closes()), (503, true));
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_millis(1500),
        "the 503 came after {took:?}, the grace period is 500 ms"
    );
    c.expect_closed();
    server.join(IO_TIMEOUT);
    // Completing after the child stopped is harmless.
    for d in h.kept.lock().unwrap().drain(..) {
        d.complete();
    }
}

/// Sets up the drain's give-up on a deferred response whose client hung up just before: the
/// engine writes the 503 and then finds the FIN at once, with no event in between, so giving
/// up closes the connection itself. `/never` defers; `/pause` holds the event loop (the
/// handler runs on it) across the give-up instant, then completes the request of the
/// `/hangup` connection; `/hangup`, served in the loop's first turn past that instant, shuts
/// the write side of the `/never` client.
#[derive(Default)]
struct HangUp {
    kept: Mutex<Vec<Deferred>>,
    pause_until: Mutex<Option<Instant>>,
    /// Client sides of the `/never` and `/hangup` connections.
    never_client: Mutex<Option<TcpStream>>,
    hangup_client: Mutex<Option<TcpStream>>,
}

impl Handler for HangUp {
    fn handle(&self, req: &Request<'_>, resp: &mut Response) {
        match req.path() {
            "/never" => self.kept.lock().unwrap().push(resp.defer().unwrap()),
            "/pause" => {
                let until = self
                    .pause_until
                    .lock()
                    .unwrap()
                    .expect("set before the stop");
                thread::sleep(until.saturating_duration_since(Instant::now()));
                let mut c = self.hangup_client.lock().unwrap().take().unwrap();
                c.write_all(b"\r\n").unwrap();
                c.shutdown(Shutdown::Write).unwrap();
            }
            "/hangup" => {
                let c = self.never_client.lock().unwrap().take().unwrap();
                c.shutdown(Shutdown::Write).unwrap();
            }
            _ => {}
        }
        // Whatever this handler did to a socket has reached the other end (loopback).
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn serve_returns_when_giving_up_closed_the_last_connection() {
    // The 503s are due 750 ms into the drain, which ends at 1 s. `/pause` ends between the
    // two, with room on each side for a loaded machine.
    let grace = Duration::from_secs(1);
    let pause_end = Duration::from_millis(850);
    let h = Arc::new(HangUp::default());
    let opts = Opts {
        grace,
        lifeline: false,
    };
    let server = Server::start_with(Arc::clone(&h) as Arc<dyn Handler>, cfg(), opts);
    let mut never = server.connect();
    never.send(&get("/never"));
    // Half a head each: not idle, so the drain keeps them.
    let mut pause = server.connect();
    pause.send(b"GET /pause HTTP/1.1\r\nHost: x\r\n");
    let mut hangup = server.connect();
    hangup.send(b"GET /hangup HTTP/1.1\r\nHost: x\r\n");
    *h.never_client.lock().unwrap() = Some(never.s.try_clone().unwrap());
    *h.hangup_client.lock().unwrap() = Some(hangup.s.try_clone().unwrap());
    thread::sleep(Duration::from_millis(50));
    let stop = Instant::now();
    *h.pause_until.lock().unwrap() = Some(stop + pause_end);
    server.stop();
    thread::sleep(Duration::from_millis(300));
    pause.send(b"\r\n");
    pause.s.shutdown(Shutdown::Write).unwrap();

    // The 503 came (so the give-up found the client's FIN only after it: a FIN seen first
    // drops the connection unanswered), and serve returned with no connection left, not at
    // the deadline, when the master's SIGKILL comes.
    let r = never.response(false).expect("the 503 of the give-up");
    assert_eq!((r.status, r.closes()), (503, true));
    assert!(never.rest().is_empty());
    let returned = server.join_returned_at(IO_TIMEOUT);
    let took = returned - stop;
    assert!(
        took < grace,
        "serve returned {took:?} into the drain, with nothing left to serve after {pause_end:?}"
    );
    for c in [&mut pause, &mut hangup] {
        let r = c.response(false).unwrap();
        assert_eq!((r.status, r.closes()), (200, true));
    }
    for d in h.kept.lock().unwrap().drain(..) {
        d.complete();
    }
}

#[test]
fn a_deferred_response_completed_during_the_drain_is_sent_with_close() {
    let h = Later::new();
    let server = start(&h, cfg(), IO_TIMEOUT);
    let mut c = server.connect();
    c.send(&get("/later?300"));
    thread::sleep(Duration::from_millis(50));
    server.stop();
    let r = c.response(false).unwrap();
    assert_eq!(
        (r.status, r.body.as_slice(), r.closes()),
        (200, &b"later 300"[..], true)
    );
    c.expect_closed();
    server.join(IO_TIMEOUT);
}
