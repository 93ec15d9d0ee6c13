//! A body that a handler sets on a 204 or 304 response is dropped and logged once per process
//! (issue 19; the wire side is in tests/http/conformance.rs). This binary is a process of its
//! own with this one test, so nothing else has logged it before.

#[allow(dead_code)]
#[path = "http/support.rs"]
mod support;

use support::*;

fn dropped_lines(server: &Server) -> Vec<String> {
    let log = server.log.0.lock().unwrap();
    log.iter()
        .filter(|l| l.contains("set a body"))
        .cloned()
        .collect()
}

#[test]
fn a_dropped_body_is_logged_once_per_process() {
    let server = Server::start(cfg());
    let mut c = server.connect();
    // An empty 204 is nothing to log.
    c.send(&get("/status?204"));
    assert_eq!(c.response(false).unwrap().status, 204);
    assert_eq!(dropped_lines(&server), Vec::<String>::new());
    // A buffered body on a 204 and a 304, and a stream on a 204.
    c.send(b"POST /status?204 HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\na");
    c.send(b"POST /status?304 HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nb");
    c.send(&get("/status-stream?204"));
    let statuses: Vec<u16> = collect(&mut c, 3, vec![false; 3])
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [204, 304, 204]);
    assert!(!c.closed());
    assert_eq!(
        dropped_lines(&server),
        [
            "warn: a request handler set a body on a 204 response; a 1xx, 204 or 304 response has \
          no body (RFC 9110 §6.4.1), so it was dropped (logged once per process)"
        ]
    );
    // A second server of the same process logs no more.
    drop(c);
    drop(server);
    let server = Server::start(cfg());
    let mut c = server.connect();
    c.send(b"POST /status?304 HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nc");
    assert_eq!(c.response(false).unwrap().status, 304);
    assert!(!c.closed());
    assert_eq!(dropped_lines(&server), Vec::<String>::new());
}
