//! The PROXY protocol step (issue 20, item 4): with `proxy_protocol` on, each connection must
//! start with a valid version 1 or 2 header from an allowed source; the handler then sees the
//! client's address and the TLVs. Anything else is closed without a response, within bounds.

use std::io::{Read, Write};
use std::net::{Ipv6Addr, Shutdown};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use prefork::http::proxy::crc32c;
use prefork::{Cidr, Handler, HttpConfig, Request, Response};

use crate::support::*;

/// Answers with what the handler sees of the connection: `peer=ADDR`, the header's version
/// and every TLV as `tlv=TYPE:VALUE`, one per line.
struct Peer;

impl Handler for Peer {
    fn handle(&self, req: &Request<'_>, resp: &mut Response) {
        let mut text = match req.peer_addr() {
            Some(a) => format!("peer={a}\n"),
            None => "peer=?\n".to_string(),
        };
        if let Some(h) = req.proxy_header() {
            text += &format!("version={}\n", h.version());
            for t in h.tlvs() {
                text += &format!("tlv={:#04x}:{}\n", t.kind, String::from_utf8_lossy(t.value));
            }
        }
        text += &format!("path={}\n", req.path());
        resp.write(text.as_bytes());
    }
}

fn proxied() -> HttpConfig {
    HttpConfig {
        proxy_protocol: true,
        proxy_timeout: Duration::from_millis(300),
        ..HttpConfig::default()
    }
}

fn start(cfg: HttpConfig) -> Server {
    Server::start_with(Arc::new(Peer), cfg, Opts::default())
}

fn v2(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[ver_cmd, fam]);
    h.extend_from_slice(&(block.len() as u16).to_be_bytes());
    h.extend_from_slice(block);
    h
}

fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut t = vec![kind];
    t.extend_from_slice(&(value.len() as u16).to_be_bytes());
    t.extend_from_slice(value);
    t
}

/// TCP over IPv4 from 198.51.100.20:40000 to 192.0.2.1:443, then `tlvs`.
fn v2_inet4(tlvs: &[u8]) -> Vec<u8> {
    let mut block = vec![198, 51, 100, 20, 192, 0, 2, 1];
    block.extend_from_slice(&40000u16.to_be_bytes());
    block.extend_from_slice(&443u16.to_be_bytes());
    block.extend_from_slice(tlvs);
    v2(0x21, 0x11, &block)
}

/// `v2_inet4(tlvs)` with a PP2_TYPE_CRC32C TLV last, holding the right checksum.
fn v2_inet4_crc(tlvs: &[u8]) -> Vec<u8> {
    let mut all = tlvs.to_vec();
    all.extend_from_slice(&tlv(0x03, &[0; 4]));
    let mut h = v2_inet4(&all);
    let crc = crc32c(&h);
    let n = h.len();
    h[n - 4..].copy_from_slice(&crc.to_be_bytes());
    h
}

fn body(r: &Resp) -> String {
    String::from_utf8(r.body.clone()).unwrap()
}

/// Sends `bytes` and reads one response.
fn ask(server: &Server, bytes: &[u8]) -> (Resp, Client) {
    let mut c = server.connect();
    c.send(bytes);
    let r = c.response(false).expect("no response");
    (r, c)
}

fn with_get(header: &[u8]) -> Vec<u8> {
    let mut b = header.to_vec();
    b.extend_from_slice(&get("/p"));
    b
}

/// Reads until the server closes; asserts nothing came and that the close came within
/// `lo..hi` of `t0`.
fn closed_silently(c: &mut Client, t0: Instant, lo: Duration, hi: Duration) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        assert!(t0.elapsed() < IO_TIMEOUT, "the connection stayed open");
    }
    let took = t0.elapsed();
    assert!(
        got.is_empty(),
        "a response to a refused connection: {got:?}"
    );
    assert!(
        took >= lo && took <= hi,
        "closed after {took:?}, expected {lo:?}..{hi:?}"
    );
}

fn refused_at_once(server: &Server, bytes: &[u8]) {
    let mut c = server.connect();
    let t0 = Instant::now();
    c.send(bytes);
    closed_silently(&mut c, t0, Duration::ZERO, Duration::from_millis(200));
}

fn log_lines(server: &Server) -> Vec<String> {
    server.log.0.lock().unwrap().clone()
}

#[test]
fn v1_tcp4_names_the_client() {
    let server = start(proxied());
    let (r, mut c) = ask(
        &server,
        &with_get(b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 8080\r\n"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(body(&r), "peer=203.0.113.7:51234\nversion=1\npath=/p\n");
    // Later requests on the connection keep the header's client.
    c.send(&get("/again"));
    let r = c.response(false).unwrap();
    assert_eq!(body(&r), "peer=203.0.113.7:51234\nversion=1\npath=/again\n");
}

#[test]
fn v1_tcp6_names_the_client() {
    let server = start(proxied());
    let (r, _) = ask(
        &server,
        &with_get(b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 443\r\n"),
    );
    assert_eq!(body(&r), "peer=[2001:db8::7]:65535\nversion=1\npath=/p\n");
}

#[test]
fn v1_unknown_keeps_the_socket_peer() {
    let server = start(proxied());
    let (r, c) = ask(&server, &with_get(b"PROXY UNKNOWN\r\n"));
    let me = c.s.local_addr().unwrap();
    assert_eq!(body(&r), format!("peer={me}\nversion=1\npath=/p\n"));
}

#[test]
fn v2_inet4_names_the_client_and_shows_its_tlvs() {
    let server = start(proxied());
    let mut tlvs = tlv(0x02, b"example.test");
    tlvs.extend_from_slice(&tlv(0xE5, b"vpce-0abc"));
    tlvs.extend_from_slice(&tlv(0xE5, b"second"));
    let (r, _) = ask(&server, &with_get(&v2_inet4(&tlvs)));
    assert_eq!(
        body(&r),
        "peer=198.51.100.20:40000\nversion=2\ntlv=0x02:example.test\ntlv=0xe5:vpce-0abc\n\
         tlv=0xe5:second\npath=/p\n"
    );
}

#[test]
fn v2_inet6_names_the_client() {
    let server = start(proxied());
    let mut block = Vec::new();
    block.extend_from_slice(&"2001:db8::42".parse::<Ipv6Addr>().unwrap().octets());
    block.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    block.extend_from_slice(&[0x1f, 0x90, 0x01, 0xbb]);
    let (r, _) = ask(&server, &with_get(&v2(0x21, 0x21, &block)));
    assert_eq!(body(&r), "peer=[2001:db8::42]:8080\nversion=2\npath=/p\n");
}

#[test]
fn v2_local_keeps_the_socket_peer() {
    // A balancer's health check: LOCAL, AF_UNSPEC, no addresses.
    let server = start(proxied());
    let (r, c) = ask(&server, &with_get(&v2(0x20, 0x00, &[])));
    let me = c.s.local_addr().unwrap();
    assert_eq!(body(&r), format!("peer={me}\nversion=2\npath=/p\n"));
    // LOCAL with addresses: they are discarded.
    let (r, c) = ask(&server, &with_get(&v2(0x20, 0x11, &v2_inet4(&[])[16..])));
    let me = c.s.local_addr().unwrap();
    assert_eq!(body(&r), format!("peer={me}\nversion=2\npath=/p\n"));
}

#[test]
fn v2_unix_keeps_the_socket_peer() {
    let server = start(proxied());
    let mut block = vec![0u8; 216];
    block[..8].copy_from_slice(b"/run/lb0");
    let (r, c) = ask(&server, &with_get(&v2(0x21, 0x31, &block)));
    let me = c.s.local_addr().unwrap();
    assert_eq!(body(&r), format!("peer={me}\nversion=2\npath=/p\n"));
}

#[test]
fn v2_with_a_good_crc32c_is_served() {
    let server = start(proxied());
    let header = v2_inet4_crc(&tlv(0x05, b"id-1"));
    let (r, _) = ask(&server, &with_get(&header));
    let crc = &header[header.len() - 4..];
    let shown = format!("tlv=0x03:{}\n", String::from_utf8_lossy(crc));
    assert_eq!(
        body(&r),
        format!("peer=198.51.100.20:40000\nversion=2\ntlv=0x05:id-1\n{shown}path=/p\n")
    );
}

#[test]
fn v2_with_a_bad_crc32c_is_closed() {
    let server = start(proxied());
    let mut header = v2_inet4_crc(&tlv(0x05, b"id-1"));
    let n = header.len();
    header[n - 1] ^= 1;
    refused_at_once(&server, &with_get(&header));
    // Or a changed address under a right checksum of the original.
    let mut header = v2_inet4_crc(&[]);
    header[19] ^= 1;
    refused_at_once(&server, &with_get(&header));
    assert!(
        log_lines(&server)[0].contains("CRC32C does not match"),
        "{:?}",
        log_lines(&server)
    );
}

#[test]
fn a_missing_header_is_closed_at_once() {
    let server = start(proxied());
    refused_at_once(&server, &get("/"));
    let lines = log_lines(&server);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("warn: closed a connection from 127.0.0.1:")
            && lines[0].contains("does not start with a PROXY protocol header")
            && lines[0].ends_with("(further refusals are logged at debug level)"),
        "{lines:?}"
    );
    // The next refusal is a debug line.
    refused_at_once(&server, b"\x16\x03\x01\x02\x00");
    assert!(log_lines(&server)[1].starts_with("debug: "));
}

#[test]
fn malformed_headers_are_closed_at_once() {
    let server = start(proxied());
    for bad in [
        &b"PROXY TCP4 203.0.113.7 192.0.2.1 51234\r\n"[..],
        b"PROXY TCP4 203.0.113.07 192.0.2.1 51234 80\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 051234 80\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 1 80\n",
        b"PROXY TCP9 203.0.113.7 192.0.2.1 1 80\r\n",
        b"PROXY  TCP4",
        b"\r\n\r\n\0\r\nQUIT\n\x11\x11\x00\x0c",
        b"\r\n\r\n\0\r\nQUIT\n\x23\x11\x00\x0c",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x41\x00\x0c",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x10\x01",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04\x01\x02\x03\x04",
    ] {
        let mut c = server.connect();
        let t0 = Instant::now();
        c.send(&with_get(bad));
        closed_silently(&mut c, t0, Duration::ZERO, Duration::from_millis(200));
    }
    // A line without its CRLF in 107 bytes.
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(120, b'a');
    refused_at_once(&server, &long);
    // TLVs that overrun the header.
    let mut header = v2_inet4(&[0xE0, 0x00, 0x09, b'x']);
    header.extend_from_slice(b"GET / HT");
    refused_at_once(&server, &header);
}

#[test]
fn a_truncated_header_is_closed_when_the_peer_finishes() {
    let server = start(proxied());
    let header = v2_inet4(&tlv(0x02, b"a.test"));
    for cut in [5, 15, 20, header.len() - 1] {
        let mut c = server.connect();
        let t0 = Instant::now();
        c.send(&header[..cut]);
        c.s.shutdown(Shutdown::Write).unwrap();
        closed_silently(&mut c, t0, Duration::ZERO, Duration::from_millis(200));
    }
    let mut c = server.connect();
    let t0 = Instant::now();
    c.send(b"PROXY TCP4 203.0.113.7 192.0.2.1 5");
    c.s.shutdown(Shutdown::Write).unwrap();
    closed_silently(&mut c, t0, Duration::ZERO, Duration::from_millis(200));
}

#[test]
fn a_trickled_header_is_closed_at_the_deadline() {
    let server = start(proxied());
    let mut c = server.connect();
    let t0 = Instant::now();
    // A valid header, one byte every 40 ms: it would take 1.8 s, the deadline is 300 ms.
    let line = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 8080\r\n";
    let mut sent = 0;
    for b in line {
        if c.s.write_all(std::slice::from_ref(b)).is_err() {
            break;
        }
        sent += 1;
        thread::sleep(Duration::from_millis(40));
        if t0.elapsed() > Duration::from_millis(600) {
            break;
        }
    }
    assert!(sent < line.len(), "the whole header went out");
    closed_silently(
        &mut c,
        t0,
        Duration::from_millis(250),
        Duration::from_millis(1500),
    );
    assert!(
        log_lines(&server)[0].contains("before the deadline"),
        "{:?}",
        log_lines(&server)
    );
}

#[test]
fn a_silent_connection_is_closed_at_the_deadline() {
    let server = start(proxied());
    let mut c = server.connect();
    closed_silently(
        &mut c,
        Instant::now(),
        Duration::from_millis(250),
        Duration::from_millis(1500),
    );
}

#[test]
fn a_header_split_across_segments_is_read_whole() {
    let server = start(proxied());
    let mut c = server.connect();
    let header = v2_inet4_crc(&tlv(0x02, b"split.test"));
    c.send_bytewise(&header);
    c.send(&get("/p"));
    let r = c.response(false).unwrap();
    assert!(
        body(&r).starts_with("peer=198.51.100.20:40000\nversion=2\ntlv=0x02:split.test\n"),
        "{}",
        body(&r)
    );
    let mut c = server.connect();
    c.send_bytewise(b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 8080\r\n");
    c.send(&get("/p"));
    assert!(body(&c.response(false).unwrap()).starts_with("peer=203.0.113.7:51234\n"));
}

#[test]
fn pipelined_requests_right_after_the_header_are_all_answered() {
    let server = start(proxied());
    let mut c = server.connect();
    let mut bytes = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 8080\r\n".to_vec();
    for i in 0..3 {
        bytes.extend_from_slice(&get(&format!("/r{i}")));
    }
    // One write: the header and the requests arrive together.
    c.send(&bytes);
    for i in 0..3 {
        let r = c.response(false).unwrap();
        assert_eq!(
            body(&r),
            format!("peer=203.0.113.7:51234\nversion=1\npath=/r{i}\n")
        );
    }
    // Still open for more.
    c.send(&get("/r3"));
    assert!(body(&c.response(false).unwrap()).ends_with("path=/r3\n"));
    // A request whose body follows the header in the same segment.
    let mut c = server.connect();
    let mut bytes = v2_inet4(&[]);
    bytes.extend_from_slice(b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi");
    c.send(&bytes);
    assert_eq!(c.response(false).unwrap().status, 200);
}

#[test]
fn a_header_and_nothing_else_closes_cleanly() {
    let server = start(proxied());
    let mut c = server.connect();
    let t0 = Instant::now();
    c.send(&v2_inet4(&[]));
    c.s.shutdown(Shutdown::Write).unwrap();
    closed_silently(&mut c, t0, Duration::ZERO, Duration::from_millis(200));
    assert!(log_lines(&server).is_empty(), "{:?}", log_lines(&server));
}

#[test]
fn a_source_outside_the_allowlist_is_closed_before_reading() {
    let cfg = HttpConfig {
        proxy_allow: Cidr::parse_list("10.0.0.0/8, 2001:db8::/32").unwrap(),
        ..proxied()
    };
    let server = start(cfg);
    // Even with a valid header: the source decides.
    refused_at_once(
        &server,
        &with_get(b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 8080\r\n"),
    );
    let lines = log_lines(&server);
    assert!(
        lines[0].contains("127.0.0.1:") && lines[0].contains("not in proxy_allow"),
        "{lines:?}"
    );
    let cfg = HttpConfig {
        proxy_allow: Cidr::parse_list("127.0.0.1").unwrap(),
        ..proxied()
    };
    let server = start(cfg);
    let (r, _) = ask(
        &server,
        &with_get(b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 8080\r\n"),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn handler_threads_see_the_header_too() {
    let cfg = HttpConfig {
        handler_threads: 2,
        ..proxied()
    };
    let server = start(cfg);
    let (r, _) = ask(&server, &with_get(&v2_inet4(&tlv(0xE0, b"t"))));
    assert_eq!(
        body(&r),
        "peer=198.51.100.20:40000\nversion=2\ntlv=0xe0:t\npath=/p\n"
    );
}

#[test]
fn without_the_option_a_header_is_not_guessed() {
    let server = start(HttpConfig::default());
    let mut c = server.connect();
    c.send(&with_get(
        b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 8080\r\n",
    ));
    let r = c.response(false).unwrap();
    assert_eq!(r.status, 400);
    c.expect_closed();
    let (r, c) = ask(&server, &get("/plain"));
    let me = c.s.local_addr().unwrap();
    assert_eq!(body(&r), format!("peer={me}\npath=/plain\n"));
}

#[test]
fn a_drain_waits_for_a_header_in_progress_briefly() {
    let server = start(HttpConfig {
        proxy_timeout: Duration::from_secs(5),
        ..proxied()
    });
    let mut c = server.connect();
    c.send(b"PROXY TCP4 203.0.113.7 ");
    thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    server.stop();
    c.send(b"192.0.2.1 51234 8080\r\n");
    c.send(&get("/during-drain"));
    let r = c.response(false).unwrap();
    assert_eq!(
        body(&r),
        "peer=203.0.113.7:51234\nversion=1\npath=/during-drain\n"
    );
    assert!(r.closes());
    // The client's close ends the server's lingering close, and with it the drain.
    drop(c);
    server.join(Duration::from_secs(5));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}
