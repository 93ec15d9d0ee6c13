//! Timeouts: the head's total deadline (slowloris), the body idle timeout, the keep-alive idle
//! timeout and the write timeout. Each asserts the outcome and that it came within bounds.

use std::io::Read;
use std::time::{Duration, Instant};

use prefork::HttpConfig;

use crate::support::*;

fn quick() -> HttpConfig {
    HttpConfig {
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        write_timeout: Duration::from_millis(300),
        ..HttpConfig::default()
    }
}

fn assert_between(d: Duration, lo: u64, hi: u64) {
    assert!(
        d >= Duration::from_millis(lo) && d <= Duration::from_millis(hi),
        "took {d:?}, expected {lo}..{hi} ms"
    );
}

#[test]
fn slow_head_gets_408() {
    let server = Server::start(quick());
    let mut c = server.connect();
    let t0 = Instant::now();
    c.send(b"GET / HTTP/1.1\r\nHost:");
    let r = c.response(false).unwrap();
    assert_eq!(r.status, 408);
    assert!(r.closes());
    assert_between(t0.elapsed(), 250, 1500);
    c.expect_closed();
}

#[test]
fn trickled_head_still_gets_408_at_the_total_deadline() {
    let server = Server::start(quick());
    let mut c = server.connect();
    let t0 = Instant::now();
    // One byte every 40 ms never lets the connection go idle, but the head's deadline is total.
    let head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut got = None;
    for b in head {
        c.send(std::slice::from_ref(b));
        std::thread::sleep(Duration::from_millis(40));
        c.s.set_nonblocking(true).unwrap();
        let mut probe = [0u8; 1];
        let ready = matches!(c.s.peek(&mut probe), Ok(n) if n > 0);
        c.s.set_nonblocking(false).unwrap();
        if ready {
            got = Some(t0.elapsed());
            break;
        }
    }
    let at = got.expect("no 408 while trickling the head");
    assert_eq!(c.response(false).unwrap().status, 408);
    assert_between(at, 250, 1500);
}

#[test]
fn idle_keep_alive_connection_is_closed_silently() {
    let server = Server::start(quick());
    let mut c = server.connect();
    c.send(&get("/"));
    assert_eq!(c.response(false).unwrap().status, 200);
    let t0 = Instant::now();
    let mut buf = [0u8; 16];
    let n = c.s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "idle close sends nothing (no 408)");
    assert_between(t0.elapsed(), 250, 1500);
}

#[test]
fn connection_that_never_sends_is_closed_after_idle_timeout() {
    let server = Server::start(quick());
    let mut c = server.connect();
    let t0 = Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(c.s.read(&mut buf).unwrap_or(0), 0);
    assert_between(t0.elapsed(), 250, 1500);
}

#[test]
fn stalled_body_gets_408() {
    let server = Server::start(quick());
    let mut c = server.connect();
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    let t0 = Instant::now();
    let r = c.response(false).unwrap();
    assert_eq!(r.status, 408);
    assert_between(t0.elapsed(), 250, 1500);
    c.expect_closed();
}

#[test]
fn body_timeout_is_an_idle_timeout() {
    // 8 bytes, one per 100 ms: 800 ms in total, well past the 300 ms body timeout, but never
    // silent for that long.
    let server = Server::start(quick());
    let mut c = server.connect();
    c.send(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\n\r\n");
    for b in b"abcdefgh" {
        std::thread::sleep(Duration::from_millis(100));
        c.send(std::slice::from_ref(b));
    }
    let r = c.response(false).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"abcdefgh"[..]));
}

#[test]
fn stalled_reader_is_dropped_after_write_timeout() {
    let cfg = HttpConfig {
        max_output_buffer: 64 * 1024,
        ..quick()
    };
    let server = Server::start(cfg);
    let mut c = server.connect();
    c.send(&get("/big?50000000"));
    // Read nothing until well past the write timeout, then drain: the body must be cut short.
    std::thread::sleep(Duration::from_millis(1200));
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match c.s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    assert!(total < 50_000_000, "the whole body arrived ({total} bytes)");
}

#[test]
fn new_connection_gets_the_header_timeout_not_the_idle_timeout() {
    let cfg = HttpConfig {
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(30),
        ..HttpConfig::default()
    };
    let server = Server::start(cfg);
    let mut c = server.connect();
    let t0 = Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(c.s.read(&mut buf).unwrap_or(0), 0, "closed silently");
    assert_between(t0.elapsed(), 250, 1500);
}
