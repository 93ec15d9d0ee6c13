//! Response encoding: small copies into the connection's output buffer, no formatting
//! machinery. Every response carries a Date (RFC 9110 §6.6.1) and either Content-Length,
//! `Transfer-Encoding: chunked` or (HTTP/1.0 streams only) `Connection: close`, except the
//! 1xx, 204 and 304 responses, which have none of them and no body.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};

use super::date::DATE_LEN;
use super::status::write_status_line;
use super::{Response, Status};
use crate::log::{Level, Logger};

/// Set once this process has logged a body dropped from a 1xx, 204 or 304 response: a handler
/// that does it does so on every request, and one line says all there is to say.
static DROPPED_BODY_LOGGED: AtomicBool = AtomicBool::new(false);

/// How the request shapes its response.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reply {
    pub minor: u8,
    pub is_head: bool,
    /// The connection closes after this response (decided by the request and the engine; the
    /// handler may still ask for it).
    pub close: bool,
}

/// A streamed body still to be sent after the head.
pub(crate) struct Streaming {
    pub source: Box<dyn Read + Send>,
    pub chunked: bool,
}

/// What `encode` decided.
pub(crate) struct Encoded {
    pub close: bool,
    pub stream: Option<Streaming>,
}

/// Bytes a response head may need beyond the handler's header lines: the longest status line
/// (under 64 bytes), Date (37), Content-Length (38) or Transfer-Encoding (28), Connection (24)
/// and the final CRLF.
const HEAD_OVERHEAD: usize = 64 + 37 + 38 + 24 + 2;

/// Appends the status line, headers and (buffered) body of `resp`, which is left with its
/// buffers for reuse by the caller.
pub(crate) fn encode(
    out: &mut Vec<u8>,
    resp: &mut Response,
    reply: Reply,
    date: &[u8; DATE_LEN],
    log: &dyn Logger,
) -> Encoded {
    let status = resp.status;
    // RFC 9110 §6.4.1 and RFC 9112 §6.3: a 1xx, 204 or 304 response ends with its head, and
    // RFC 9110 §8.6 and RFC 9112 §6.1 forbid Content-Length and Transfer-Encoding in 1xx and
    // 204 (the 304's Content-Length is optional: never sending it is simplest). Handlers
    // cannot set 1xx statuses today (`Response::set_status`); the rule covers them anyway.
    // (Behind the test for 200, the status of nearly every response: one comparison then.)
    let bodiless_status = status != 200 && (status < 200 || status == 204 || status == 304);
    let mut close = reply.close || resp.close;
    let mut stream = resp.stream.take();
    if bodiless_status {
        stream = drop_body(status, stream, &resp.body, log);
    }
    let chunked = stream.is_some() && reply.minor == 1;
    if stream.is_some() && !chunked && !reply.is_head {
        // HTTP/1.0 has no chunked coding: the end of the body is the end of the connection.
        close = true;
    }

    // One reservation for the whole response: then no copy below can grow the buffer.
    out.reserve(HEAD_OVERHEAD + resp.headers.len() + resp.body.len());
    write_status_and_date(out, status, date);
    if chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    } else if stream.is_none() && !bodiless_status {
        out.extend_from_slice(b"Content-Length: ");
        write_decimal(out, resp.body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if reply.minor == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(&resp.headers);
    out.extend_from_slice(b"\r\n");

    if reply.is_head {
        stream = None;
    } else if stream.is_none() && !bodiless_status {
        out.extend_from_slice(&resp.body);
    }
    Encoded {
        close,
        stream: stream.map(|source| Streaming { source, chunked }),
    }
}

/// Drops the body of a response that cannot have one (`stream` unread, the buffered body left
/// unsent) and logs, once per process, that a handler gave it one. Out of line: it holds the
/// stream's drop and the log's formatting, which the 200s of the hot path never need.
#[cold]
#[inline(never)]
fn drop_body(
    status: u16,
    stream: Option<Box<dyn Read + Send>>,
    body: &[u8],
    log: &dyn Logger,
) -> Option<Box<dyn Read + Send>> {
    if (stream.is_some() || !body.is_empty()) && !DROPPED_BODY_LOGGED.swap(true, Ordering::Relaxed)
    {
        log.log(
            Level::Warn,
            &format!(
                "a request handler set a body on a {status} response; a 1xx, 204 or 304 \
                 response has no body (RFC 9110 §6.4.1), so it was dropped (logged once per \
                 process)"
            ),
        );
    }
    None
}

/// A 101 (Switching Protocols) response: its head only, with `Connection: Upgrade` (RFC 9110
/// §7.8: a sender of Upgrade sends the "upgrade" connection option too), after which the
/// connection speaks the handler's protocol. A body set for it is dropped, as for a 204.
#[cold]
pub(crate) fn encode_switching(
    out: &mut Vec<u8>,
    resp: &mut Response,
    date: &[u8; DATE_LEN],
    log: &dyn Logger,
) {
    drop_body(101, resp.stream.take(), &resp.body, log);
    out.reserve(HEAD_OVERHEAD + resp.headers.len());
    write_status_and_date(out, 101, date);
    out.extend_from_slice(b"Connection: Upgrade\r\n");
    out.extend_from_slice(&resp.headers);
    out.extend_from_slice(b"\r\n");
}

/// An engine-made error response; the connection always closes after it.
pub(crate) fn encode_error(out: &mut Vec<u8>, status: Status, date: &[u8; DATE_LEN]) {
    write_status_and_date(out, status.0, date);
    out.extend_from_slice(b"Content-Length: 0\r\nConnection: close\r\n\r\n");
}

/// Appends the status line and the Date line that every response starts with. A 200, the
/// status of most responses, is one constant copy with the start of the Date line.
#[inline(always)]
fn write_status_and_date(out: &mut Vec<u8>, status: u16, date: &[u8; DATE_LEN]) {
    if status == 200 {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nDate: ");
    } else {
        write_status_line(out, status);
        out.extend_from_slice(b"Date: ");
    }
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n");
}

/// The interim response to `Expect: 100-continue`.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Appends one chunk (RFC 9112 §7.1) holding `data`, which must not be empty.
pub(crate) fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    write_hex(out, data.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk with no trailers.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

pub(crate) fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn write_hex(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::testing::Quiet;

    const DATE: &[u8; DATE_LEN] = b"Thu, 01 Jan 1970 00:00:00 GMT";

    fn run(resp: &mut Response, minor: u8, is_head: bool, close: bool) -> (String, Encoded) {
        let mut out = Vec::new();
        let e = encode(
            &mut out,
            resp,
            Reply {
                minor,
                is_head,
                close,
            },
            DATE,
            &Quiet,
        );
        (String::from_utf8(out).unwrap(), e)
    }

    #[test]
    fn decimal_and_hex() {
        let mut out = Vec::new();
        for n in [0, 9, 10, 4096, u64::MAX] {
            write_decimal(&mut out, n);
            out.push(b' ');
        }
        assert_eq!(out, b"0 9 10 4096 18446744073709551615 ");
        out.clear();
        encode_chunk(&mut out, &[b'x'; 26]);
        assert!(out.starts_with(b"1a\r\nxxx"));
    }

    #[test]
    fn buffered_bodies() {
        let mut r = Response::default();
        r.write(b"hi");
        r.add_header(b"X-A", b"1").unwrap();
        let (s, e) = run(&mut r, 1, false, false);
        assert_eq!(
            s,
            "HTTP/1.1 200 OK\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nhi"
        );
        assert!(!e.close && e.stream.is_none());
        let (s, _) = run(&mut r, 1, true, false);
        assert!(s.ends_with("Content-Length: 2\r\nX-A: 1\r\n\r\n"), "{s}");
        let (s, _) = run(&mut r, 0, false, false);
        assert!(s.contains("Connection: keep-alive\r\n"), "{s}");
        let (s, e) = run(&mut r, 0, false, true);
        assert!(s.contains("Connection: close\r\n") && e.close, "{s}");
        r.set_status(204).unwrap();
        let (s, _) = run(&mut r, 1, false, false);
        assert!(!s.contains("Content-Length") && !s.ends_with("hi"), "{s}");
    }

    #[test]
    fn bodiless_statuses_drop_the_body_and_its_framing() {
        for status in [204, 304] {
            for minor in [0, 1] {
                for is_head in [false, true] {
                    let mut r = Response::default();
                    r.set_status(status).unwrap();
                    r.write(b"dropped");
                    let (s, e) = run(&mut r, minor, is_head, false);
                    let ka = if minor == 0 {
                        "Connection: keep-alive\r\n"
                    } else {
                        ""
                    };
                    let line = if status == 204 {
                        "204 No Content"
                    } else {
                        "304 Not Modified"
                    };
                    assert_eq!(
                        s,
                        format!(
                            "HTTP/1.1 {line}\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n{ka}\r\n"
                        ),
                        "{status} HTTP/1.{minor} head={is_head}"
                    );
                    assert!(!e.close && e.stream.is_none());
                    // A stream is dropped unread; HTTP/1.0 does not close for it.
                    r.set_status(status).unwrap();
                    r.set_body_stream(std::io::repeat(b'x'));
                    let (s2, e) = run(&mut r, minor, is_head, false);
                    assert_eq!(s2, s);
                    assert!(!e.close && e.stream.is_none());
                }
            }
        }
        // 1xx: `Response::set_status` refuses them, the encoder would still send no framing.
        let mut r = Response {
            status: 103,
            ..Response::default()
        };
        r.write(b"x");
        let (s, _) = run(&mut r, 1, false, false);
        assert_eq!(
            s,
            "HTTP/1.1 103 \r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\n"
        );
    }

    #[test]
    fn streamed_bodies() {
        let mut r = Response::default();
        r.set_body_stream(std::io::empty());
        let (s, e) = run(&mut r, 1, false, false);
        assert!(s.contains("Transfer-Encoding: chunked\r\n") && !e.close);
        assert!(e.stream.is_some_and(|s| s.chunked));
        r.set_body_stream(std::io::empty());
        let (s, e) = run(&mut r, 0, false, false);
        assert!(s.contains("Connection: close\r\n") && !s.contains("Content-Length") && e.close);
        assert!(e.stream.is_some_and(|s| !s.chunked));
        r.set_body_stream(std::io::empty());
        let (_, e) = run(&mut r, 1, true, false);
        assert!(e.stream.is_none());
    }
}
