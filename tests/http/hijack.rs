//! Taking a connection over (`Response::hijack`): a 101 and a raw echo protocol after it, the
//! bytes read past the request handed over first, pipelined responses before it written first,
//! and the connection counted toward max_connections until its new owner closes it.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use prefork::{ErrorKind, Handler, Hijacked, HttpConfig, Request, Response};

use crate::support::*;

/// Echoes every byte until the client closes, leftover bytes first.
fn echo(mut conn: Hijacked) {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// `/upgrade` switches to the echo protocol; `/raw` answers 200, then writes `raw!` on the
/// socket and closes it; `/later-upgrade` switches from a deferred response; `/bad101` sets
/// 101 without taking the connection; anything else answers `plain`.
struct Upgrader;

impl Handler for Upgrader {
    fn handle(&self, req: &Request<'_>, resp: &mut Response) {
        match req.path() {
            "/upgrade" => {
                resp.hijack(echo).unwrap();
                resp.set_status(101).unwrap();
                resp.add_header(b"Upgrade", b"echo").unwrap();
                let again = resp.hijack(echo).unwrap_err();
                assert_eq!(again.kind(), ErrorKind::InvalidState);
            }
            "/raw" => {
                resp.hijack(|mut conn: Hijacked| {
                    conn.write_all(b"raw!").unwrap();
                })
                .unwrap();
                resp.write(b"then raw");
            }
            "/later-upgrade" => {
                let mut d = resp.defer().unwrap();
                thread::spawn(move || {
                    thread::sleep(Duration::from_millis(50));
                    d.hijack(echo).unwrap();
                    d.set_status(101).unwrap();
                    d.add_header(b"Upgrade", b"echo").unwrap();
                    d.complete();
                });
            }
            "/bad101" => {
                let refused = resp.set_status(101).unwrap_err();
                assert_eq!(refused.kind(), ErrorKind::InvalidArgument);
                resp.write(b"101 refused");
            }
            path => {
                // The probe of `Client::closed` needs its path back.
                resp.add_header(b"X-Path", path.as_bytes()).unwrap();
                resp.write(b"plain");
            }
        }
    }
}

fn start(cfg: HttpConfig) -> Server {
    Server::start_with(Arc::new(Upgrader), cfg, Opts::default())
}

const UPGRADE: &[u8] =
    b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";
const SWITCHED: &str = "HTTP/1.1 101 Switching Protocols\r\nDate: <date>\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";

#[test]
fn an_upgrade_hands_over_the_connection_with_the_bytes_read_past_the_request() {
    let server = start(cfg());
    let mut c = server.connect();
    // The new protocol's first bytes come with the request, in one segment.
    let mut first = UPGRADE.to_vec();
    first.extend_from_slice(b"hello");
    c.send(&first);
    let r = c.response(false).unwrap();
    assert_eq!(r.status, 101);
    let got = c.received();
    assert!(got.starts_with(SWITCHED), "{got:?}");
    assert_eq!(c.bytes(5), b"hello");
    c.send(b"and more");
    assert_eq!(c.bytes(8), b"and more");
    c.s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(c.rest(), b"", "the echo ends at the client's close");
}

#[test]
fn pipelined_responses_before_the_upgrade_are_written_first() {
    let server = start(cfg());
    let mut c = server.connect();
    let mut batch = get("/");
    batch.extend_from_slice(&get("/raw"));
    batch.extend_from_slice(b"GET /never-parsed HTTP/1.1\r\n\r\n");
    c.send(&batch);
    let rs = collect(&mut c, 2, vec![false; 2]);
    assert_eq!(rs[0].body, b"plain");
    assert_eq!(
        (rs[1].status, rs[1].body.as_slice()),
        (200, &b"then raw"[..])
    );
    assert!(
        rs[1].closes(),
        "the HTTP exchange ends with the response before a hand-over"
    );
    // The new owner wrote its bytes and dropped the connection; the request after /raw was
    // its to read, and the library never answered it.
    assert_eq!(c.rest(), b"raw!");
}

#[test]
fn a_deferred_response_may_take_the_connection_over() {
    let server = start(cfg());
    let mut c = server.connect();
    let mut first = b"GET /later-upgrade HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
    first.extend_from_slice(b"early");
    c.send(&first);
    assert_eq!(c.response(false).unwrap().status, 101);
    assert_eq!(c.bytes(5), b"early");
}

#[test]
fn status_101_needs_a_takeover() {
    let server = start(cfg());
    let mut c = server.connect();
    c.send(&get("/bad101"));
    let r = c.response(false).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"101 refused"[..]));
}

#[test]
fn a_taken_connection_counts_toward_max_connections_until_it_closes() {
    let server = start(HttpConfig {
        max_connections: 2,
        ..cfg()
    });
    let mut upgraded = server.connect();
    upgraded.send(UPGRADE);
    assert_eq!(upgraded.response(false).unwrap().status, 101);
    let mut second = server.connect();
    second.send(&get("/"));
    assert_eq!(second.response(false).unwrap().body, b"plain");
    // The third waits in the backlog: the upgraded connection still counts.
    let mut third = server.connect();
    third.send(&get("/"));
    third
        .s
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut probe = [0u8; 1];
    let early = third.s.read(&mut probe);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the third connection was served while two count: {early:?}"
    );
    third.s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // Its new owner closes it (the echo ends at the client's close): room for the third.
    let t0 = Instant::now();
    drop(upgraded);
    assert_eq!(third.response(false).unwrap().body, b"plain");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}
