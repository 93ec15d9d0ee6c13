//! Every size cap (414, 431, 413), the connection cap and output backpressure.

use std::io::Read;
use std::time::Duration;

use prefork::HttpConfig;

use crate::support::*;

fn small() -> HttpConfig {
    HttpConfig {
        max_request_line: 1024,
        max_head_size: 2048,
        max_headers: 10,
        max_body_size: 1000,
        max_chunk_ext_size: 64,
        max_trailer_size: 64,
        ..HttpConfig::default()
    }
}

fn target_of_line_len(len: usize) -> Vec<u8> {
    // "GET " + target + " HTTP/1.1" is the line.
    let path = format!("/{}", "a".repeat(len - 4 - 9 - 1));
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

#[test]
fn request_line_over_the_cap_is_414() {
    check_with(small(), &target_of_line_len(1025), &[414], true);
}

#[test]
fn request_line_at_the_cap_is_served() {
    check_with(small(), &target_of_line_len(1024), &[200], false);
}

#[test]
fn request_line_without_end_is_414_before_the_head_ends() {
    // No CRLF at all yet: the engine must not wait for one.
    let server = Server::start(small());
    let mut c = server.connect();
    c.send(format!("GET /{}", "a".repeat(1100)).as_bytes());
    assert_eq!(c.response(false).unwrap().status, 414);
    c.expect_closed();
}

#[test]
fn head_over_the_cap_is_431() {
    let req = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "b".repeat(2100)
    );
    check_with(small(), req.as_bytes(), &[431], true);
}

#[test]
fn head_over_the_cap_without_end_is_431() {
    let server = Server::start(small());
    let mut c = server.connect();
    c.send(format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}", "b".repeat(2100)).as_bytes());
    assert_eq!(c.response(false).unwrap().status, 431);
    c.expect_closed();
}

#[test]
fn too_many_headers_is_431() {
    let mut req = String::from("GET / HTTP/1.1\r\nHost: t\r\n");
    for i in 0..10 {
        req.push_str(&format!("X-{i}: v\r\n"));
    }
    req.push_str("\r\n");
    check_with(small(), req.as_bytes(), &[431], true);
}

#[test]
fn headers_at_the_count_cap_are_served() {
    let mut req = String::from("GET / HTTP/1.1\r\nHost: t\r\n");
    for i in 0..9 {
        req.push_str(&format!("X-{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let rs = check_with(small(), req.as_bytes(), &[200], false);
    assert_eq!(rs[0].header("x-headers"), Some("10"));
}

#[test]
fn declared_body_over_the_cap_is_413_before_reading_it() {
    let server = Server::start(small());
    let mut c = server.connect();
    // Only the head is sent: the answer must not wait for the body.
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n");
    assert_eq!(c.response(false).unwrap().status, 413);
    c.expect_closed();
}

#[test]
fn declared_body_over_the_cap_with_expect_gets_no_100() {
    let server = Server::start(small());
    let mut c = server.connect();
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n");
    let rs = collect(&mut c, 2, vec![false]);
    let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [413]);
    c.expect_closed();
}

#[test]
fn chunked_body_over_the_cap_is_413() {
    let mut req = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        req.extend_from_slice(format!("190\r\n{}\r\n", "c".repeat(400)).as_bytes());
    }
    req.extend_from_slice(b"0\r\n\r\n");
    check_with(small(), &req, &[413], true);
}

#[test]
fn chunked_body_at_the_cap_is_served() {
    let mut req = b"POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..2 {
        req.extend_from_slice(format!("1f4\r\n{}\r\n", "c".repeat(500)).as_bytes());
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let rs = check_with(small(), &req, &[200], false);
    assert_eq!(rs[0].body.len(), 1000);
}

#[test]
fn chunk_extensions_over_the_cap_are_400() {
    let ext = format!(";{}", "e".repeat(70));
    let req = format!(
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1{ext}\r\nx\r\n0\r\n\r\n"
    );
    check_with(small(), req.as_bytes(), &[400], true);
}

#[test]
fn trailers_over_the_cap_are_431() {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nX-T: {}\r\n\r\n",
        "t".repeat(70)
    );
    check_with(small(), req.as_bytes(), &[431], true);
}

#[test]
fn accept_pauses_at_max_connections() {
    let cfg = HttpConfig {
        max_connections: 2,
        ..HttpConfig::default()
    };
    let server = Server::start(cfg);
    let mut a = server.connect();
    let mut b = server.connect();
    a.send(&get("/a"));
    b.send(&get("/b"));
    assert_eq!(a.response(false).unwrap().status, 200);
    assert_eq!(b.response(false).unwrap().status, 200);
    // The third connection completes in the kernel's backlog but is not served yet.
    let mut c = server.connect();
    c.s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    c.send(&get("/c"));
    let mut byte = [0u8; 1];
    let e =
        c.s.read(&mut byte)
            .expect_err("served above max_connections");
    assert!(matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));
    // Closing one lets it in.
    drop(a);
    c.s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    assert_eq!(c.response(false).unwrap().header("x-path"), Some("/c"));
    assert!(!b.closed());
}

#[test]
fn output_backpressure_keeps_serving_others() {
    let cfg = HttpConfig {
        max_output_buffer: 64 * 1024,
        ..HttpConfig::default()
    };
    let server = Server::start(cfg);
    // This client pipelines 200 requests for 100 KB each and reads nothing for a while.
    let mut hog = server.connect();
    let mut batch = Vec::new();
    for _ in 0..200 {
        batch.extend_from_slice(&get("/big?100000"));
    }
    hog.send(&batch);
    std::thread::sleep(Duration::from_millis(200));
    let mut other = server.connect();
    other.send(&get("/x"));
    assert_eq!(other.response(false).unwrap().status, 200);
    // Then it reads everything, intact and in order.
    for _ in 0..200 {
        let r = hog.response(false).unwrap();
        assert_eq!((r.status, r.body.len()), (200, 100_000));
    }
    assert!(!hog.closed());
}
