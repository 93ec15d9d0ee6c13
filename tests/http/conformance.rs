//! The conformance rules of issue 19 (item 4), each checked on the wire with the exact bytes:
//! fragments in the request-target, empty hosts, over-long methods, and the responses that
//! never carry Content-Length, Transfer-Encoding or a body (1xx, 204, 304), HEAD beside them.

use std::sync::Arc;

use prefork::{Handler, HttpConfig, Request, Response};

use crate::case;
use crate::support::*;

/// The head fields `support::Echo` adds for an origin-form `target` sent with `fields` header
/// fields, among them `Host: t` (or `host`).
fn echoed(method: &str, target: &str, minor: u8, fields: usize, host: Option<&str>) -> String {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut s = format!(
        "X-Method: {method}\r\nX-Target: {target}\r\nX-Path: {path}\r\nX-Query: {query}\r\n\
         X-Version: {minor}\r\nX-Headers: {fields}\r\n"
    );
    if let Some(host) = host {
        s.push_str(&format!("X-Host: {host}\r\n"));
    }
    s
}

// ---- RFC 9112 §3.2, RFC 9110 §7.1: a request-target never holds a fragment (`#` starts one,
// RFC 3986 §3.5), so `#` in it is a 400.

case!(
    fragment_in_origin_form,
    b"GET /p#f HTTP/1.1\r\nHost: t\r\n\r\n",
    [400],
    closed,
    engine_error("400 Bad Request")
);
case!(
    empty_fragment,
    b"GET /# HTTP/1.1\r\nHost: t\r\n\r\n",
    [400],
    closed,
    engine_error("400 Bad Request")
);
case!(
    fragment_after_a_query,
    b"GET /p?q=1#f HTTP/1.1\r\nHost: t\r\n\r\n",
    [400],
    closed,
    engine_error("400 Bad Request")
);
case!(
    fragment_at_the_end_of_a_long_target,
    b"GET /a/target/longer/than/a/word?and=a&query#f HTTP/1.1\r\nHost: t\r\n\r\n",
    [400],
    closed,
    engine_error("400 Bad Request")
);
case!(
    fragment_in_absolute_form,
    b"GET http://t/p#f HTTP/1.1\r\nHost: t\r\n\r\n",
    [400],
    closed,
    engine_error("400 Bad Request")
);
// `%23` is a `#` as data of the path, not a fragment.
case!(
    escaped_hash_is_served,
    b"GET /p%23f HTTP/1.1\r\nHost: t\r\n\r\n",
    [200],
    open,
    format!(
        "HTTP/1.1 200 OK\r\nDate: <date>\r\nContent-Length: 0\r\n{}\r\n",
        echoed("GET", "/p%23f", 1, 1, Some("t"))
    )
);

// ---- RFC 9110 §4.2.1: an `http` URI with an empty host is invalid and is rejected. For
// origin-form and asterisk-form targets the Host field is the authority (RFC 9112 §3.3), so an
// empty one (or a port alone) is a 400, in HTTP/1.0 too. An absolute-form target carries its
// own authority and Host is ignored (RFC 9112 §3.2.2); its own host must not be empty.

case!(
    empty_host,
    b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
    [400],
    closed,
    engine_error("400 Bad Request")
);
case!(
    host_of_whitespace_only,
    b"GET / HTTP/1.1\r\nHost: \t \r\n\r\n",
    [400],
    closed,
    engine_error("400 Bad Request")
);
case!(
    host_of_a_port_only,
    b"GET / HTTP/1.1\r\nHost: :8080\r\n\r\n",
    [400],
    closed,
    engine_error("400 Bad Request")
);
case!(
    empty_host_in_http10,
    b"GET / HTTP/1.0\r\nHost: \r\n\r\n",
    [400],
    closed,
    engine_error("400 Bad Request")
);
case!(
    empty_host_with_options_asterisk,
    b"OPTIONS * HTTP/1.1\r\nHost: \r\n\r\n",
    [400],
    closed,
    engine_error("400 Bad Request")
);
// RFC 9112 §3.2: HTTP/1.0 needs no Host; the server's own name is the authority (§3.3).
case!(
    http10_without_host_is_served,
    b"GET /p HTTP/1.0\r\n\r\n",
    [200],
    closed,
    format!(
        "HTTP/1.1 200 OK\r\nDate: <date>\r\nContent-Length: 0\r\nConnection: close\r\n{}\r\n",
        echoed("GET", "/p", 0, 0, None)
    )
);
case!(
    host_with_an_empty_port_is_served,
    b"GET / HTTP/1.1\r\nHost: t:\r\n\r\n",
    [200],
    open,
    format!(
        "HTTP/1.1 200 OK\r\nDate: <date>\r\nContent-Length: 0\r\n{}\r\n",
        echoed("GET", "/", 1, 1, Some("t:"))
    )
);
case!(
    empty_host_with_absolute_form_is_served,
    b"GET http://t/p?q HTTP/1.1\r\nHost: \r\n\r\n",
    [200],
    open,
    "HTTP/1.1 200 OK\r\nDate: <date>\r\nContent-Length: 0\r\nX-Method: GET\r\n\
     X-Target: http://t/p?q\r\nX-Path: /p\r\nX-Query: q\r\nX-Version: 1\r\nX-Headers: 1\r\n\
     X-Host: \r\n\r\n"
);
case!(
    absolute_form_without_host_in_http10_is_served,
    b"GET http://t/p HTTP/1.0\r\n\r\n",
    [200],
    closed,
    "HTTP/1.1 200 OK\r\nDate: <date>\r\nContent-Length: 0\r\nConnection: close\r\n\
     X-Method: GET\r\nX-Target: http://t/p\r\nX-Path: /p\r\nX-Query: \r\nX-Version: 0\r\n\
     X-Headers: 0\r\n\r\n"
);
case!(
    absolute_form_with_an_empty_host,
    b"GET http:///p HTTP/1.1\r\nHost: t\r\n\r\n",
    [400],
    closed,
    engine_error("400 Bad Request")
);
case!(
    absolute_form_with_a_port_only,
    b"GET https://:443/p HTTP/1.1\r\nHost: t\r\n\r\n",
    [400],
    closed,
    engine_error("400 Bad Request")
);
case!(
    absolute_form_with_userinfo_and_no_host,
    b"GET http://u@/p HTTP/1.1\r\nHost: t\r\n\r\n",
    [400],
    closed,
    engine_error("400 Bad Request")
);

// ---- RFC 9110 §9.1 and §15.6.2: a method the server does not implement is a 501. None it
// could implement is longer than 32 bytes (the longest registered one has 17), so a longer
// method is a 501 and the connection closes, also when it breaks the request-line cap: a 414
// would blame the URI.

fn method(len: usize) -> String {
    // Every tchar kind, so nothing but the length is unusual.
    "M-!#$%&'*+.^_`|~0".repeat(3)[..len].to_string()
}

#[test]
fn method_of_32_bytes_is_served() {
    let m = method(32);
    check_bytes(
        format!("{m} / HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        &[200],
        false,
        &format!(
            "HTTP/1.1 200 OK\r\nDate: <date>\r\nContent-Length: 0\r\n{}\r\n",
            echoed(&m, "/", 1, 1, Some("t"))
        ),
    );
}

#[test]
fn method_of_33_bytes_is_501() {
    check_bytes(
        format!("{} / HTTP/1.1\r\nHost: t\r\n\r\n", method(33)).as_bytes(),
        &[501],
        true,
        &engine_error("501 Not Implemented"),
    );
}

/// A request-line cap of 1024 bytes, as in `limits.rs`.
fn capped() -> HttpConfig {
    HttpConfig {
        max_request_line: 1024,
        max_head_size: 2048,
        ..HttpConfig::default()
    }
}

#[test]
fn method_over_the_request_line_cap_is_501() {
    let m = "M".repeat(1100);
    check_bytes_with(
        capped(),
        format!("{m} / HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        &[501],
        true,
        &engine_error("501 Not Implemented"),
    );
}

#[test]
fn method_over_the_request_line_cap_is_501_before_the_line_ends() {
    // No space and no line end yet: the engine must not wait for either.
    let server = Server::start(capped());
    let mut c = server.connect();
    c.send("M".repeat(1100).as_bytes());
    assert_eq!(c.response(false).unwrap().status, 501);
    assert_eq!(c.received(), engine_error("501 Not Implemented"));
    c.expect_closed();
}

#[test]
fn long_target_after_a_method_of_32_bytes_is_still_414() {
    let target = format!("/{}", "a".repeat(1100));
    check_bytes_with(
        capped(),
        format!("{} {target} HTTP/1.1\r\nHost: t\r\n\r\n", method(32)).as_bytes(),
        &[414],
        true,
        &engine_error("414 URI Too Long"),
    );
}

#[test]
fn method_longer_than_a_small_request_line_cap_is_501() {
    // A cap below 32 bytes: a method longer than the cap is what breaks it.
    let cfg = || HttpConfig {
        max_request_line: 20,
        ..HttpConfig::default()
    };
    let req = |m: &str| format!("{m} /long/enough HTTP/1.1\r\nHost: t\r\n\r\n");
    check_bytes_with(
        cfg(),
        req(&method(21)).as_bytes(),
        &[501],
        true,
        &engine_error("501 Not Implemented"),
    );
    check_bytes_with(
        cfg(),
        req(&method(20)).as_bytes(),
        &[414],
        true,
        &engine_error("414 URI Too Long"),
    );
}

// ---- RFC 9110 §6.4.1, §8.6, §15.3.5, §15.4.5 and RFC 9112 §6.1, §6.3: a 1xx, 204 or 304
// response ends with its head: no Content-Length, no Transfer-Encoding and no body, whatever
// the handler set (its body is dropped, and logged once per process: tests/http_log_once.rs).

#[test]
fn status_204_drops_the_handler_body() {
    // The pipelined request after it is answered right after the head: no body byte leaked.
    let mut req = b"POST /status?204 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc".to_vec();
    req.extend_from_slice(&get("/next"));
    check_bytes(
        &req,
        &[204, 200],
        false,
        &format!(
            "HTTP/1.1 204 No Content\r\nDate: <date>\r\n{}\r\n\
             HTTP/1.1 200 OK\r\nDate: <date>\r\nContent-Length: 0\r\n{}\r\n",
            echoed("POST", "/status?204", 1, 2, Some("t")),
            echoed("GET", "/next", 1, 1, Some("t"))
        ),
    );
}

#[test]
fn status_304_drops_the_handler_body() {
    let mut req = b"POST /status?304 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc".to_vec();
    req.extend_from_slice(&get("/next"));
    check_bytes(
        &req,
        &[304, 200],
        false,
        &format!(
            "HTTP/1.1 304 Not Modified\r\nDate: <date>\r\n{}\r\n\
             HTTP/1.1 200 OK\r\nDate: <date>\r\nContent-Length: 0\r\n{}\r\n",
            echoed("POST", "/status?304", 1, 2, Some("t")),
            echoed("GET", "/next", 1, 1, Some("t"))
        ),
    );
}

#[test]
fn status_204_and_304_drop_a_body_stream() {
    for (code, reason) in [(204, "No Content"), (304, "Not Modified")] {
        let target = format!("/status-stream?{code}");
        let mut req = get(&target);
        req.extend_from_slice(&get("/next"));
        check_bytes(
            &req,
            &[code, 200],
            false,
            &format!(
                "HTTP/1.1 {code} {reason}\r\nDate: <date>\r\n{}\r\n\
                 HTTP/1.1 200 OK\r\nDate: <date>\r\nContent-Length: 0\r\n{}\r\n",
                echoed("GET", &target, 1, 1, Some("t")),
                echoed("GET", "/next", 1, 1, Some("t"))
            ),
        );
    }
}

// An HTTP/1.0 stream is delimited by the close; a dropped one must not close the connection.
case!(
    status_304_drops_a_stream_in_http10_and_keeps_the_connection,
    b"GET /status-stream?304 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    [304],
    open,
    format!(
        "HTTP/1.1 304 Not Modified\r\nDate: <date>\r\nConnection: keep-alive\r\n{}\r\n",
        echoed("GET", "/status-stream?304", 0, 1, None)
    )
);

#[test]
fn status_204_from_a_handler_thread_drops_the_body() {
    let cfg = HttpConfig {
        handler_threads: 2,
        ..HttpConfig::default()
    };
    check_bytes_with(
        cfg,
        b"POST /status?204 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
        &[204],
        false,
        &format!(
            "HTTP/1.1 204 No Content\r\nDate: <date>\r\n{}\r\n",
            echoed("POST", "/status?204", 1, 2, Some("t"))
        ),
    );
}

// RFC 9110 §9.3.2: a HEAD response has the head a GET would get, without the body: the
// Content-Length of the body, or none at all for a 204 or 304.
case!(
    head_keeps_the_length_of_the_body_it_drops,
    b"HEAD /big?5 HTTP/1.1\r\nHost: t\r\n\r\n",
    [200],
    open,
    format!(
        "HTTP/1.1 200 OK\r\nDate: <date>\r\nContent-Length: 5\r\n{}\r\n",
        echoed("HEAD", "/big?5", 1, 1, Some("t"))
    )
);
case!(
    head_of_a_204_has_no_length,
    b"HEAD /status?204 HTTP/1.1\r\nHost: t\r\n\r\n",
    [204],
    open,
    format!(
        "HTTP/1.1 204 No Content\r\nDate: <date>\r\n{}\r\n",
        echoed("HEAD", "/status?204", 1, 1, Some("t"))
    )
);
case!(
    head_of_a_304_has_no_length,
    b"HEAD /status-stream?304 HTTP/1.1\r\nHost: t\r\n\r\n",
    [304],
    open,
    format!(
        "HTTP/1.1 304 Not Modified\r\nDate: <date>\r\n{}\r\n",
        echoed("HEAD", "/status-stream?304", 1, 1, Some("t"))
    )
);

/// Tries every 1xx status, then answers 200 with what `set_status` said (and the `X-Path` that
/// `Client::closed`'s probe looks for).
struct Interim;

impl Handler for Interim {
    fn handle(&self, req: &Request<'_>, resp: &mut Response) {
        resp.add_header(b"X-Path", req.path().as_bytes()).unwrap();
        let refused = (100..200).all(|code| resp.set_status(code).is_err());
        resp.write(if refused { b"refused" } else { b"accepted" });
    }
}

#[test]
fn a_handler_cannot_send_a_1xx_status() {
    // The engine's own 1xx (100 Continue) is the only one on the wire, and it has no framing.
    let server = Server::start_with(Arc::new(Interim), HttpConfig::default(), Opts::default());
    let mut c = server.connect();
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(c.response(false).unwrap().status, 100);
    c.send(b"ok");
    assert_eq!(c.response(false).unwrap().status, 200);
    assert_eq!(
        c.received(),
        "HTTP/1.1 100 Continue\r\n\r\n\
         HTTP/1.1 200 OK\r\nDate: <date>\r\nContent-Length: 7\r\nX-Path: /\r\n\r\nrefused"
    );
    assert!(!c.closed());
}
