//! Parsing a complete request head: httparse for the syntax, then the checks httparse leaves to
//! the server (RFC 9112): the version (505 vs 400), the method's length (501), the
//! request-target's bytes and form, Host, and the message framing (RFC 9112 §6: Content-Length
//! and Transfer-Encoding).
//!
//! The scanner (`scan.rs`) has already found the head's end, rejected bare LFs and enforced the
//! size caps, so everything here sees one complete head.

use std::mem::MaybeUninit;

use super::{Status, bytes};

/// The longest method the engine lets through to the handler. RFC 9110 §9.1 answers a method
/// the server does not implement with 501, and no server implements one this long: the
/// longest in the HTTP Method Registry (RFC 9110 §16.1.1), `UPDATEREDIRECTREF`, has 17
/// bytes. A longer method gets 501 and the connection is closed, also when it makes the
/// request line break its cap (`scan.rs`): a 414 would ask the client to shorten a URI that is
/// not the problem.
pub(crate) const MAX_METHOD_LEN: usize = 32;

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

/// What the engine needs to know about a request beyond what the handler sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReqInfo {
    pub minor: u8,
    pub is_head: bool,
    pub body: BodyKind,
    /// The client allows another request on this connection.
    pub keep_alive: bool,
    /// The framing is suspect (Transfer-Encoding in HTTP/1.0): answer, then close.
    pub close_after: bool,
    /// HTTP/1.1 `Expect: 100-continue`.
    pub expect_continue: bool,
}

impl ReqInfo {
    /// A placeholder for sessions with no request in progress.
    pub(crate) const NONE: ReqInfo = ReqInfo {
        minor: 1,
        is_head: false,
        body: BodyKind::None,
        keep_alive: false,
        close_after: false,
        expect_continue: false,
    };
}

/// A 256-entry membership table: one load per byte on the hot path.
const fn byte_table(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

static TCHAR: [bool; 256] = byte_table(b"!#$%&'*+-.^_`|~");
static HOST: [bool; 256] = byte_table(b"-._~!$&'()*+,;=%:[]");

/// RFC 9110 §5.6.2 tchar.
pub(crate) fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

/// Checks the HTTP-version of the request line. httparse knows only `HTTP/1.0` and `HTTP/1.1`;
/// RFC 9112 §2.3 asks to serve a higher 1.x minor version as 1.1, so its minor digit is
/// rewritten to `1` in place. Another major version is a 505; anything not shaped like
/// `HTTP/D.D` is a 400.
/// `line_len` is the request line's length without its CRLF.
#[inline(always)]
pub(crate) fn check_version(head: &mut [u8], line_len: usize) -> Result<(), Status> {
    let line = &head[..line_len];
    // The usual ` HTTP/1.1` or ` HTTP/1.0` in two comparisons: the two differ only in bit 0
    // of the last byte ('1' is 0x31, '0' is 0x30).
    if let Some([b' ', version @ ..]) = line.last_chunk::<9>()
        && u64::from_le_bytes(*version) | (1 << 56) == u64::from_le_bytes(*b"HTTP/1.1")
    {
        return Ok(());
    }
    check_other_version(head, line_len)
}

/// The whole check, which `check_version` falls back to for anything but ` HTTP/1.1` and
/// ` HTTP/1.0` at the line's end (the tests hold the fast path to it).
#[cold]
fn check_other_version(head: &mut [u8], line_len: usize) -> Result<(), Status> {
    let line = &head[..line_len];
    let sp = memchr::memrchr(b' ', line).ok_or(Status::BAD_REQUEST)?;
    let v = &line[sp + 1..];
    if v == b"HTTP/1.1" || v == b"HTTP/1.0" {
        return Ok(());
    }
    match v {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            if *major != b'1' {
                return Err(Status::VERSION_NOT_SUPPORTED);
            }
            head[sp + 1 + 7] = b'1';
            Ok(())
        }
        _ => Err(Status::BAD_REQUEST),
    }
}

/// Runs httparse over a complete head (after `check_version`). `slots` must hold at least
/// `max_headers` entries.
// Once per request; LLVM left it out of Session::process in the cdylib (callgrind).
#[inline(always)]
pub(crate) fn parse_head<'b, 'h>(
    head: &'b [u8],
    slots: &'h mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<httparse::Request<'h, 'b>, Status> {
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, slots) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => Ok(req),
        Err(httparse::Error::TooManyHeaders) => Err(Status::HEADER_FIELDS_TOO_LARGE),
        _ => Err(Status::BAD_REQUEST),
    }
}

/// The checks httparse does not make, and the request's framing.
// Once per request; LLVM left it out of Session::process in the cdylib (callgrind).
#[inline(always)]
pub(crate) fn analyze(req: &httparse::Request<'_, '_>) -> Result<ReqInfo, Status> {
    const BAD: Status = Status::BAD_REQUEST;
    let method = req.method.ok_or(BAD)?;
    let target = req.path.ok_or(BAD)?;
    let minor = req.version.ok_or(BAD)?;

    if method.len() > MAX_METHOD_LEN {
        return Err(Status::NOT_IMPLEMENTED);
    }
    // httparse lets bytes >= 0x80 through, and `#`: RFC 3986 has no place for the first, and
    // a fragment is never part of a request-target (RFC 9112 §3.2, RFC 9110 §7.1).
    if bytes::has_high_or(target.as_bytes(), b'#') {
        return Err(BAD);
    }
    if method == "CONNECT" {
        // Tunnels change the connection's framing after the response; not supported.
        return Err(Status::NOT_IMPLEMENTED);
    }
    // Whether the Host field supplies the target URI's authority (RFC 9112 §3.3): it does for
    // origin-form and asterisk-form; an absolute-form target carries its own, and a server
    // ignores Host then (RFC 9112 §3.2.2).
    let authority_from_host = match target.as_bytes() {
        [b'/', ..] => true,
        b"*" if method == "OPTIONS" => true,
        t if is_absolute_form(t) => false,
        _ => return Err(BAD),
    };

    let mut hosts = 0usize;
    let mut empty_host = false;
    let mut content_length: Option<u64> = None;
    let mut te = TeState::default();
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                hosts += 1;
                if !h.value.iter().all(|&b| is_host_byte(b)) {
                    return Err(BAD);
                }
                // An empty host, with or without a port.
                empty_host = matches!(h.value, [] | [b':', ..]);
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                expect_continue |= h.value.eq_ignore_ascii_case(b"100-continue");
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in h.value.split(|&b| b == b',').map(trim_ows) {
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                // RFC 9112 §6.3: a list of identical values is that value; anything else is
                // an unrecoverable framing error.
                for item in h.value.split(|&b| b == b',') {
                    let n = parse_decimal(trim_ows(item)).ok_or(BAD)?;
                    if content_length.is_some_and(|prev| prev != n) {
                        return Err(BAD);
                    }
                    content_length = Some(n);
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => te.add(h.value)?,
            _ => {}
        }
    }

    // RFC 9112 §3.2: exactly one Host in HTTP/1.1, never more than one. An empty one would
    // make the target URI an `http` URI with an empty host, which RFC 9110 §4.2.1 says to
    // reject as invalid (so a Host field sent empty is a 400, in HTTP/1.0 too; HTTP/1.0
    // without Host stays valid: the server's own name is the authority, RFC 9112 §3.3).
    if hosts > 1 || (minor == 1 && hosts == 0) || (empty_host && authority_from_host) {
        return Err(BAD);
    }

    let mut close_after = false;
    let body = if te.present {
        // RFC 9112 §6.1/§6.3: CL with TE is a smuggling attempt; chunked must be the final
        // coding and appear once; other codings are not implemented.
        if content_length.is_some() || te.chunked > 1 || !te.last_chunked {
            return Err(BAD);
        }
        if te.other {
            return Err(Status::NOT_IMPLEMENTED);
        }
        // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing: close after.
        close_after = minor == 0;
        BodyKind::Chunked
    } else {
        match content_length {
            Some(0) | None => BodyKind::None,
            Some(n) => BodyKind::Length(n),
        }
    };

    Ok(ReqInfo {
        minor,
        is_head: method == "HEAD",
        body,
        keep_alive: if minor == 1 {
            !close
        } else {
            keep_alive_token && !close
        },
        close_after,
        expect_continue: expect_continue && minor == 1,
    })
}

#[derive(Default)]
struct TeState {
    present: bool,
    chunked: usize,
    last_chunked: bool,
    other: bool,
}

impl TeState {
    fn add(&mut self, value: &[u8]) -> Result<(), Status> {
        self.present = true;
        for item in value.split(|&b| b == b',') {
            let coding = trim_ows(item);
            if coding.eq_ignore_ascii_case(b"chunked") {
                self.chunked += 1;
                self.last_chunked = true;
                continue;
            }
            // A coding is a token, optionally with parameters; an empty list element or
            // anything else is malformed.
            let name_end = coding
                .iter()
                .position(|&b| b == b';')
                .unwrap_or(coding.len());
            let name = trim_ows(&coding[..name_end]);
            if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
                return Err(Status::BAD_REQUEST);
            }
            self.other = true;
            self.last_chunked = false;
        }
        Ok(())
    }
}

/// `scheme "://" ...` with an RFC 3986 scheme, and for `http` and `https` a host that is not
/// empty: RFC 9110 §4.2.1 (and §4.2.2) says to reject such a URI as invalid.
fn is_absolute_form(t: &[u8]) -> bool {
    let Some(colon) = t.iter().position(|&b| b == b':') else {
        return false;
    };
    let scheme = &t[..colon];
    let well_formed = !scheme.is_empty()
        && scheme[0].is_ascii_alphabetic()
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && t[colon..].starts_with(b"://");
    if !well_formed {
        return false;
    }
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return true;
    }
    // RFC 3986 §3.2: the authority ends at the path or the query; the host follows any
    // userinfo and ends at a port.
    let rest = &t[colon + 3..];
    let authority = &rest[..rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len())];
    let host = match memchr::memrchr(b'@', authority) {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    !matches!(host, [] | [b':', ..])
}

/// Bytes allowed in a Host value: RFC 3986 reg-name, IP literals and a port.
fn is_host_byte(b: u8) -> bool {
    HOST[b as usize]
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `1*DIGIT` as a u64; no sign, no whitespace, no overflow.
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(head: &str) -> Result<ReqInfo, Status> {
        let mut buf = head.as_bytes().to_vec();
        let line_len = head.find("\r\n").unwrap();
        check_version(&mut buf, line_len)?;
        let mut slots = vec![MaybeUninit::uninit(); 16];
        let req = parse_head(&buf, &mut slots)?;
        analyze(&req)
    }

    fn status(head: &str) -> u16 {
        match run(head) {
            Ok(_) => 200,
            Err(s) => s.0,
        }
    }

    #[test]
    fn versions() {
        assert_eq!(run("GET / HTTP/1.2\r\nHost: a\r\n\r\n").unwrap().minor, 1);
        assert_eq!(status("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505);
        assert_eq!(status("GET / HTTP/0.9\r\n\r\n"), 505);
        assert_eq!(status("GET / HTTP/1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("GET / http/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.10\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("GET /\r\nHost: a\r\n\r\n"), 400);
    }

    #[test]
    fn version_fast_path_agrees_with_the_full_check() {
        // Every one-bit change of the fast path's ` HTTP/1.1`, on request lines of several
        // lengths (the fast path reads the last 9 bytes): both paths give the same verdict and
        // leave the same bytes.
        for target in ["/", "/abcdefgh"] {
            let good = format!("GET {target} HTTP/1.1");
            let version_at = good.len() - 9;
            for i in version_at..good.len() {
                for bit in 0..8 {
                    let mut fast = good.clone().into_bytes();
                    fast[i] ^= 1 << bit;
                    let mut full = fast.clone();
                    let len = fast.len();
                    assert_eq!(
                        check_version(&mut fast, len),
                        check_other_version(&mut full, len),
                        "{:?}",
                        String::from_utf8_lossy(&full)
                    );
                    assert_eq!(fast, full);
                }
            }
        }
        for short in ["", "HTTP/1.1", "x", "GET / HTTP/1"] {
            let mut buf = short.as_bytes().to_vec();
            let mut full = buf.clone();
            assert_eq!(
                check_version(&mut buf, short.len()),
                check_other_version(&mut full, short.len())
            );
        }
    }

    #[test]
    fn framing() {
        let ok = |h: &str| run(h).unwrap().body;
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"),
            BodyKind::Length(5)
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n"),
            BodyKind::Length(5)
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            BodyKind::Chunked
        );
        for bad_cl in [
            "+5",
            "-5",
            "0x5",
            "5 5",
            "5,",
            "",
            "5, 6",
            "18446744073709551616",
        ] {
            let h = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {bad_cl}\r\n\r\n");
            assert_eq!(status(&h), 400, "{bad_cl:?}");
        }
        let te = |v: &str| {
            status(&format!(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {v}\r\n\r\n"
            ))
        };
        assert_eq!(te("chunked, gzip"), 400);
        assert_eq!(te("chunked, chunked"), 400);
        assert_eq!(te("gzip"), 400);
        assert_eq!(te("gzip, chunked"), 501);
        assert_eq!(te("chunked;x=1"), 400);
        assert_eq!(te(", chunked"), 400);
        assert_eq!(
            status(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            501
        );
        assert_eq!(
            status(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            400
        );
        let v10 = run("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert!(v10.close_after && !v10.keep_alive);
    }

    #[test]
    fn targets_and_hosts() {
        assert_eq!(status("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
        assert_eq!(status("GET * HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("GET http://a/b HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
        assert_eq!(status("GET a.example:80 HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(
            status("CONNECT a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n"),
            501
        );
        assert_eq!(status("GET /\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.0\r\n\r\n"), 200);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), 400);
        // RFC 9110 §4.2.1: an empty host makes the target URI invalid, unless the target
        // carries its own authority (RFC 9112 §3.2.2).
        assert_eq!(status("GET / HTTP/1.1\r\nHost: \r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: :80\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.0\r\nHost: \r\n\r\n"), 400);
        assert_eq!(status("OPTIONS * HTTP/1.1\r\nHost: \r\n\r\n"), 400);
        assert_eq!(status("GET http://a/b HTTP/1.1\r\nHost: \r\n\r\n"), 200);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a:\r\n\r\n"), 200);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"), 200);
    }

    #[test]
    fn absolute_form_hosts() {
        for bad in [
            "http:///p",
            "HTTP://?q",
            "https://",
            "http://:80/p",
            "http://user@/p",
            "http://user@:80/p",
        ] {
            let h = format!("GET {bad} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(status(&h), 400, "{bad}");
        }
        for good in [
            "http://a",
            "https://a:443/p?q",
            "http://user@a/p",
            "http://[::1]:80/",
            // RFC 9110 §4.2.1 speaks of http and https URIs only.
            "urn:///x",
        ] {
            let h = format!("GET {good} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(status(&h), 200, "{good}");
        }
    }

    #[test]
    fn fragments() {
        for bad in [
            "/#",
            "/p#f",
            "/p?q#f",
            "/?#",
            "http://a/p#f",
            "/a/path/longer/than/8#",
        ] {
            let h = format!("GET {bad} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(status(&h), 400, "{bad}");
        }
        // `%23` is an escaped `#`, data of the path.
        assert_eq!(status("GET /p%23f HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
    }

    #[test]
    fn method_length() {
        let line = |m: &str| status(&format!("{m} / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert_eq!(line(&"M".repeat(MAX_METHOD_LEN)), 200);
        assert_eq!(line(&"M".repeat(MAX_METHOD_LEN + 1)), 501);
        assert_eq!(line("UPDATEREDIRECTREF"), 200);
        // A malformed method is a 400 whatever its length.
        assert_eq!(line(&format!("{}(", "M".repeat(MAX_METHOD_LEN))), 400);
    }

    #[test]
    fn connection_semantics() {
        let info = |h: &str| run(h).unwrap();
        assert!(info("GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive);
        assert!(!info("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, close\r\n\r\n").keep_alive);
        assert!(!info("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(info("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(info("GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\r\n").expect_continue);
        assert!(!info("GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue);
        assert!(info("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").is_head);
    }
}
