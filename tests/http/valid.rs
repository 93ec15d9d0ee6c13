//! Valid traffic: keep-alive, pipelining, bodies, Expect, HEAD, HTTP/1.0, split writes,
//! streaming, handler behaviour.

use std::net::Shutdown;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::case;
use crate::support::*;

#[test]
fn simple_get() {
    let r = check(&get("/a?b=c"), &[200], false);
    let r = &r[0];
    assert_eq!(r.header("x-path"), Some("/a"));
    assert_eq!(r.header("x-query"), Some("b=c"));
    assert_eq!(r.header("x-host"), Some("t"));
    assert_eq!(r.header("content-length"), Some("0"));
    assert_eq!(r.count("date"), 1);
    let date = r.header("date").unwrap();
    assert_eq!(date.len(), 29, "{date}");
    assert!(
        date.ends_with(" GMT") && date.as_bytes()[3] == b',',
        "{date}"
    );
    assert!(r.header("connection").is_none());
}

#[test]
fn keep_alive_sequential_requests() {
    let server = Server::start(cfg());
    let mut c = server.connect();
    for i in 0..5 {
        c.send(&get(&format!("/{i}")));
        let r = c.response(false).unwrap();
        assert_eq!(
            (r.status, r.header("x-path")),
            (200, Some(format!("/{i}").as_str()))
        );
    }
    assert!(!c.closed());
}

#[test]
fn pipelined_depth_16_in_order() {
    let mut batch = Vec::new();
    for i in 0..16 {
        batch.extend_from_slice(&get(&format!("/{i}")));
    }
    let rs = check(&batch, &[200; 16], false);
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(r.header("x-path"), Some(format!("/{i}").as_str()));
    }
}

#[test]
fn pipelined_mixed_bodies() {
    let batch = b"POST /1 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc\
GET /2 HTTP/1.1\r\nHost: t\r\n\r\n\
POST /3 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n1\r\nf\r\n0\r\n\r\n\
GET /4 HTTP/1.1\r\nHost: t\r\n\r\n";
    let rs = check(batch, &[200, 200, 200, 200], false);
    let bodies: Vec<&[u8]> = rs.iter().map(|r| r.body.as_slice()).collect();
    assert_eq!(bodies, [&b"abc"[..], b"", b"def", b""]);
}

#[test]
fn post_with_content_length() {
    let rs = check(
        b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world",
        &[200],
        false,
    );
    assert_eq!(rs[0].body, b"hello world");
}

#[test]
fn post_chunked() {
    let rs = check(
        b"POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n",
        &[200],
        false,
    );
    assert_eq!(rs[0].body, b"Wikipedia");
}

#[test]
fn chunked_with_extensions() {
    let rs = check(
        b"POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4;name=value;flag\r\nWiki\r\n5 ; q=\"a \\\" b\"\r\npedia\r\n0;end\r\n\r\n",
        &[200],
        false,
    );
    assert_eq!(rs[0].body, b"Wikipedia");
}

#[test]
fn chunked_with_trailers() {
    let rs = check(
        b"POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Checksum: 123\r\nX-Other: a b\r\n\r\n",
        &[200],
        false,
    );
    assert_eq!(rs[0].body, b"abc");
}

#[test]
fn expect_100_continue_before_the_body() {
    let server = Server::start(cfg());
    let mut c = server.connect();
    c.send(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    let interim = c.response(false).unwrap();
    assert_eq!(interim.status, 100);
    c.send(b"body");
    let r = c.response(false).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"body"[..]));
    assert!(!c.closed());
}

#[test]
fn expect_100_continue_chunked() {
    let server = Server::start(cfg());
    let mut c = server.connect();
    c.send(b"POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(c.response(false).unwrap().status, 100);
    c.send(b"2\r\nok\r\n0\r\n\r\n");
    let r = c.response(false).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    assert!(!c.closed());
}

// The body came with the head: no interim response is needed (RFC 9110 §10.1.1).
case!(
    expect_with_body_already_sent,
    b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nok",
    [200],
    open
);

// HTTP/1.0 clients never get 100 Continue.
case!(
    expect_ignored_in_http10,
    b"POST /e HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\nConnection: keep-alive\r\n\r\nok",
    [200],
    open
);

#[test]
fn head_has_headers_but_no_body() {
    let server = Server::start(cfg());
    let mut c = server.connect();
    c.send(b"HEAD /big?1234 HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.response(true).unwrap();
    assert_eq!((r.status, r.header("content-length")), (200, Some("1234")));
    // The next response starts right away: no body bytes were sent.
    assert!(!c.closed());
}

#[test]
fn head_of_a_stream_has_no_body() {
    let server = Server::start(cfg());
    let mut c = server.connect();
    c.send(b"HEAD /stream?3 HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.response(true).unwrap();
    assert_eq!(
        (r.status, r.header("transfer-encoding")),
        (200, Some("chunked"))
    );
    assert!(!c.closed());
}

#[test]
fn http10_closes_by_default() {
    let rs = check(b"GET / HTTP/1.0\r\n\r\n", &[200], true);
    assert!(rs[0].closes());
    assert_eq!(rs[0].header("x-version"), Some("0"));
}

#[test]
fn http10_keep_alive() {
    let rs = check(
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        &[200],
        false,
    );
    assert_eq!(rs[0].header("connection"), Some("keep-alive"));
}

#[test]
fn http11_connection_close() {
    let rs = check(
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        &[200],
        true,
    );
    assert_eq!(rs[0].count("connection"), 1);
    assert!(rs[0].closes());
}

#[test]
fn request_split_into_one_byte_writes() {
    let server = Server::start(cfg());
    let mut c = server.connect();
    c.send_bytewise(
        b"\r\nPOST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n\
GET /2 HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
    );
    let a = c.response(false).unwrap();
    let b = c.response(false).unwrap();
    assert_eq!((a.status, a.body.as_slice()), (200, &b"abc"[..]));
    assert_eq!(
        (b.status, b.body.as_slice(), b.header("x-path")),
        (200, &b"hi"[..], Some("/2"))
    );
    assert!(!c.closed());
}

case!(
    leading_empty_lines_ignored,
    b"\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
    [200],
    open
);

#[test]
fn absolute_form_target() {
    let rs = check(
        b"GET http://example.com/p/q?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
        &[200],
        false,
    );
    assert_eq!(rs[0].header("x-path"), Some("/p/q"));
    assert_eq!(rs[0].header("x-query"), Some("x=1"));
}

case!(
    options_asterisk,
    b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
    [200],
    open
);

#[test]
fn http12_is_served_as_http11() {
    let rs = check(b"GET / HTTP/1.2\r\nHost: t\r\n\r\n", &[200], false);
    assert_eq!(rs[0].header("x-version"), Some("1"));
}

case!(
    identical_content_lengths,
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    [200],
    open
);
case!(
    content_length_list_of_one_value,
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc",
    [200],
    open
);
case!(
    transfer_encoding_is_case_insensitive,
    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: CHUNKED\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    [200],
    open
);
case!(
    obs_text_in_header_value,
    b"GET / HTTP/1.1\r\nHost: t\r\nX-Name: caf\xc3\xa9\r\n\r\n",
    [200],
    open
);
case!(
    body_on_a_get,
    b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok",
    [200],
    open
);

#[test]
fn streamed_body_is_chunked_for_http11() {
    let rs = check(b"GET /stream?5 HTTP/1.1\r\nHost: t\r\n\r\n", &[200], false);
    assert!(rs[0].chunked);
    assert_eq!(rs[0].body.len(), 5000);
}

#[test]
fn streamed_body_is_close_delimited_for_http10() {
    let server = Server::start(cfg());
    let mut c = server.connect();
    c.send(b"GET /stream?3 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.response(false).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.closes() && r.header("content-length").is_none() && !r.chunked);
    assert_eq!(r.body.len(), 3000);
    assert!(c.closed());
}

#[test]
fn status_204_has_no_body_or_length() {
    let rs = check(
        b"POST /status?204 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
        &[204],
        false,
    );
    assert!(rs[0].header("content-length").is_none());
}

#[test]
fn handler_asks_for_close() {
    let rs = check(&get("/close"), &[200], true);
    assert_eq!(rs[0].count("connection"), 1);
}

#[test]
fn handler_panic_is_a_500_and_the_child_keeps_serving() {
    let server = Server::start(cfg());
    let mut c = server.connect();
    c.send(&get("/panic"));
    c.send(&get("/after"));
    let r = c.response(false).unwrap();
    assert_eq!(r.status, 500);
    assert!(r.closes());
    c.expect_closed();
    let mut d = server.connect();
    d.send(&get("/again"));
    assert_eq!(d.response(false).unwrap().status, 200);
    assert!(
        server
            .log
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("panicked"))
    );
}

#[test]
fn half_closed_client_gets_its_responses() {
    let server = Server::start(cfg());
    let mut c = server.connect();
    c.send(&get("/1"));
    c.send(&get("/2"));
    c.s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(c.response(false).unwrap().header("x-path"), Some("/1"));
    assert_eq!(c.response(false).unwrap().header("x-path"), Some("/2"));
    assert!(
        c.response(false).is_none(),
        "closed after the last response"
    );
}

#[test]
fn handler_threads_keep_per_connection_order() {
    let mut cfg = cfg();
    cfg.handler_threads = 4;
    let server = Server::start_with(Arc::new(Echo), cfg, Opts::default());
    let mut c = server.connect();
    let mut batch = Vec::new();
    for (i, ms) in [60, 1, 30, 0].iter().enumerate() {
        batch
            .extend_from_slice(format!("GET /sleep?{ms} HTTP/1.1\r\nHost: {i}\r\n\r\n").as_bytes());
    }
    c.send(&batch);
    let rs = collect(&mut c, 4, vec![false; 4]);
    let hosts: Vec<_> = rs
        .iter()
        .map(|r| r.header("x-host").unwrap().to_string())
        .collect();
    assert_eq!(hosts, ["0", "1", "2", "3"]);
    assert!(!c.closed());
}

#[test]
fn handler_threads_do_not_block_other_connections() {
    let mut cfg = cfg();
    cfg.handler_threads = 2;
    let server = Server::start_with(Arc::new(Echo), cfg, Opts::default());
    let mut slow = server.connect();
    slow.send(&get("/sleep?800"));
    std::thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    let mut fast = server.connect();
    fast.send(&get("/fast"));
    assert_eq!(fast.response(false).unwrap().status, 200);
    assert!(
        t0.elapsed() < Duration::from_millis(600),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(slow.response(false).unwrap().status, 200);
}

#[test]
fn handler_thread_panic_is_a_500() {
    let mut cfg = cfg();
    cfg.handler_threads = 1;
    let server = Server::start_with(Arc::new(Echo), cfg, Opts::default());
    let mut c = server.connect();
    c.send(&get("/panic"));
    assert_eq!(c.response(false).unwrap().status, 500);
    c.expect_closed();
    let mut d = server.connect();
    d.send(&get("/ok"));
    assert_eq!(d.response(false).unwrap().status, 200);
}

#[test]
fn body_of_exactly_the_cap() {
    let mut cfg = cfg();
    cfg.max_body_size = 256 * 1024;
    let body = vec![b'z'; 256 * 1024];
    let mut req = format!(
        "POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let rs = check_with(cfg, &req, &[200], false);
    assert_eq!(rs[0].body, body);
}

#[test]
fn many_connections_at_once() {
    let server = Server::start(cfg());
    let mut clients: Vec<Client> = (0..50).map(|_| server.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&get(&format!("/{i}")));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(
            c.response(false).unwrap().header("x-path"),
            Some(format!("/{i}").as_str())
        );
    }
}

#[test]
fn failing_stream_truncates_the_body_and_closes() {
    use std::io::Read;
    let server = Server::start(cfg());
    let mut c = server.connect();
    c.send(b"GET /stream-fail?2 HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut raw = Vec::new();
    let _ = c.s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("Transfer-Encoding: chunked\r\n"));
    assert!(
        text.contains(&"b".repeat(1000)) && text.contains(&"a".repeat(1000)),
        "the data before the failure is sent"
    );
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "no last chunk: the client sees a truncated body"
    );
    assert!(
        server
            .log
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("stream failed"))
    );
    let mut d = server.connect();
    d.send(&get("/after"));
    assert_eq!(d.response(false).unwrap().status, 200);
}

// RFC 9110 §10.1.1 lets a server ignore expectations it does not know.
case!(
    unknown_expectation_is_ignored,
    b"POST /e HTTP/1.1\r\nHost: t\r\nExpect: x-foo\r\nContent-Length: 2\r\n\r\nok",
    [200],
    open
);

// `close` wins over `keep-alive` in the same request.
case!(
    http10_close_beats_keep_alive,
    b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
    [200],
    closed
);

// Header names are case-insensitive (RFC 9110 §5.1).
case!(
    header_names_are_case_insensitive,
    b"POST /e HTTP/1.1\r\nhOsT: t\r\ncontent-LENGTH: 2\r\n\r\nok",
    [200],
    open
);

// Content-Length: 0 with Expect: nothing to wait for, no interim response.
case!(
    expect_with_empty_body,
    b"POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
    [200],
    open
);
