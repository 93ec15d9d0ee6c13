//! Minimum transfer rates: a body trickled below `min_body_rate` gets 408, one above it
//! completes; a client reading below `min_write_rate` is disconnected, one above it gets the
//! whole response. Small windows keep each case well under two seconds.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use prefork::HttpConfig;
use socket2::{Domain, Socket, Type};

use crate::support::*;

const WINDOW: Duration = Duration::from_millis(400);

fn rated(body: u64, write: u64) -> HttpConfig {
    HttpConfig {
        min_body_rate: body,
        min_write_rate: write,
        min_rate_window: WINDOW,
        body_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(5),
        max_body_size: 64 << 20,
        ..HttpConfig::default()
    }
}

/// Sends `total` body bytes in pieces of `piece` every `every`, on a thread; stops early when
/// the server stops taking them.
fn trickle(
    s: &TcpStream,
    total: usize,
    piece: usize,
    every: Duration,
) -> thread::JoinHandle<usize> {
    let mut s = s.try_clone().unwrap();
    thread::spawn(move || {
        let mut sent = 0;
        while sent < total {
            let n = piece.min(total - sent);
            if s.write_all(&vec![b'b'; n]).is_err() {
                break;
            }
            sent += n;
            thread::sleep(every);
        }
        sent
    })
}

fn post_head(len: usize) -> Vec<u8> {
    format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n").into_bytes()
}

#[test]
fn a_body_below_the_minimum_rate_gets_408() {
    // 1,000 bytes/s against a minimum of 2,000: each 400 ms window needs 800 bytes.
    let server = Server::start(rated(2000, 0));
    let mut c = server.connect();
    c.send(&post_head(100_000));
    let t0 = Instant::now();
    let writer = trickle(&c.s, 100_000, 50, Duration::from_millis(50));
    let r = c.response(false).unwrap();
    let took = t0.elapsed();
    assert_eq!((r.status, r.closes()), (408, true));
    assert!(
        took >= WINDOW - Duration::from_millis(50) && took < Duration::from_secs(2),
        "408 after {took:?} with a {WINDOW:?} window"
    );
    c.s.shutdown(std::net::Shutdown::Both).unwrap();
    let sent = writer.join().unwrap();
    assert!(sent < 100_000);
    eprintln!("a body at 1,000 B/s against 2,000: 408 after {took:?} and {sent} bytes");
}

#[test]
fn a_body_above_the_minimum_rate_completes() {
    // 12,000 bytes/s for a second, three windows, against a minimum of 2,000.
    let server = Server::start(rated(2000, 0));
    let mut c = server.connect();
    c.send(&post_head(12_000));
    let t0 = Instant::now();
    let writer = trickle(&c.s, 12_000, 600, Duration::from_millis(50));
    let r = c.response(false).unwrap();
    assert_eq!((r.status, r.body.len()), (200, 12_000));
    eprintln!(
        "a body at 12,000 B/s against 2,000: 200 after {:?}",
        t0.elapsed()
    );
    assert_eq!(writer.join().unwrap(), 12_000);
}

/// A client with a small receive buffer, so that what the kernel holds for it is small.
fn small_window_client(server: &Server) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(8 * 1024).unwrap();
    s.connect(&server.addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Reads `piece` bytes every `every` until the server ends the connection, `enough` says the
/// bytes are all there, or `limit` passes; returns the bytes and whether the server ended it.
fn read_slowly(
    s: &mut TcpStream,
    piece: usize,
    every: Duration,
    enough: impl Fn(&[u8]) -> bool,
    limit: Duration,
) -> (Vec<u8>, bool) {
    let t0 = Instant::now();
    let mut buf = vec![0u8; piece];
    let mut got = Vec::new();
    while t0.elapsed() < limit && !enough(&got) {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (got, true),
            Err(e) => panic!("reading: {e}"),
        }
        thread::sleep(every);
    }
    (got, false)
}

/// A whole response with an `n`-byte body has arrived.
fn has_body(n: usize) -> impl Fn(&[u8]) -> bool {
    move |got| memchr::memmem::find(got, b"\r\n\r\n").is_some_and(|h| got.len() - h - 4 >= n)
}

#[test]
fn a_client_reading_below_the_minimum_rate_is_disconnected() {
    // 20 KB/s against a minimum of 100 KB/s, for a 20 MB body.
    let server = Server::start(rated(0, 100_000));
    let mut s = small_window_client(&server);
    s.write_all(&get("/big?20000000")).unwrap();
    let every = Duration::from_millis(50);
    let t0 = Instant::now();
    let (got, ended) = read_slowly(&mut s, 1000, every, |_| false, Duration::from_secs(4));
    assert!(ended, "still connected after 4 s, {} bytes read", got.len());
    assert!(got.len() < 20_000_000, "{}", got.len());
    let took = t0.elapsed();
    eprintln!(
        "a reader at 20 KB/s against 100 KB/s: reset after {took:?} and {} bytes",
        got.len()
    );
}

#[test]
fn a_client_reading_above_the_minimum_rate_gets_everything() {
    // 16 KiB every 10 ms (at most 1.6 MB/s) against a minimum of 100 KB/s, for 2 MB: several
    // windows.
    let server = Server::start(rated(0, 100_000));
    let mut s = small_window_client(&server);
    s.write_all(&get("/big?2000000")).unwrap();
    let every = Duration::from_millis(10);
    let t0 = Instant::now();
    let (got, ended) = read_slowly(
        &mut s,
        16 * 1024,
        every,
        has_body(2_000_000),
        Duration::from_secs(10),
    );
    assert!(
        !ended && has_body(2_000_000)(&got),
        "cut after {} bytes",
        got.len()
    );
    let took = t0.elapsed();
    eprintln!("a reader of 2 MB at up to 1.6 MB/s against 100 KB/s: all of it in {took:?}");
    let mut c = Client::from_stream(s);
    assert!(!c.closed(), "the connection stays open");
}
