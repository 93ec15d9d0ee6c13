//! Head scanning, parsing and framing checks on arbitrary bytes: no panic, and whatever the
//! engine accepts, the lenient httparse accepts too with the same fields (our checks only ever
//! narrow what httparse allows).
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let cfg = common::small_config();
    let Ok(n) = prefork::http::testing::check_head(data, &cfg) else {
        return;
    };
    assert!(n <= data.len());
    let head = &data[..n];
    assert!(
        head.ends_with(b"\r\n\r\n"),
        "accepted head without CRLF CRLF: {head:?}"
    );
    assert!(
        head.len()
            <= cfg.max_head_size
                + 2 * head
                    .iter()
                    .take_while(|&&b| b == b'\r' || b == b'\n')
                    .count()
    );
    assert!(
        !head.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
        "bare LF accepted"
    );
    let mut slots = [httparse::EMPTY_HEADER; 16];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(head) {
        Ok(httparse::Status::Complete(m)) => {
            assert_eq!(m, n, "httparse disagrees on the head's end");
            let target = req.path.unwrap();
            assert!(
                target.bytes().all(|b| (0x21..0x7f).contains(&b)),
                "bad target accepted"
            );
            assert!(req.headers.len() <= cfg.max_headers);
            let hosts = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("host"))
                .count();
            assert!(hosts <= 1, "repeated Host accepted");
        }
        other => {
            // The only head we accept that httparse rejects: a 1.x minor version above 1, which
            // RFC 9112 §2.3 says to serve as HTTP/1.1.
            let start = head
                .iter()
                .position(|&b| b != b'\r' && b != b'\n')
                .unwrap_or(0);
            let line = head[start..].split(|&b| b == b'\r').next().unwrap();
            assert!(
                line.len() >= 8 && line[line.len() - 8..].starts_with(b"HTTP/1."),
                "accepted what httparse rejects ({other:?}): {head:?}"
            );
        }
    }
});
