//! TLS end to end: real masters and children (this binary re-executed), rustls clients, and
//! raw sockets for bad input. Every test is bounded in time and proves no process is left.
//!
//! Run one test: `cargo test --test tls -- NAME_SUBSTRING`.

#[path = "../process/harness.rs"]
#[allow(dead_code)]
mod harness;

mod client;
mod pki;
mod scenario;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::{Master, Outcome, all_gone};
use pki::{ECDSA_P256, KeyFormat, Pki, RSA_SHA256};

type Test = fn(&Env) -> Outcome;

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), $name as Test)),*]
    };
}

const SEC: Duration = Duration::from_secs(1);

/// What every test shares: one CA, and a scratch directory for certificate files.
struct Env {
    pki: Pki,
    dir: PathBuf,
}

impl Env {
    /// Writes an ECDSA leaf for `localhost` (or `names`) as `name.crt`/`name.key`.
    fn files(&self, name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        self.pki
            .leaf(names, &ECDSA_P256, KeyFormat::Pkcs8)
            .write(&self.dir, name)
    }
}

fn main() {
    if std::env::var_os("PF_SCENARIO").is_some() {
        std::process::exit(scenario::run());
    }
    harness::become_subreaper();
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let tests: &[(&str, Test)] = suite![
        serves_tls13_and_tls12_with_alpn_and_close_notify,
        handler_threads_and_pipelining_over_tls,
        a_hijack_over_tls_is_unsupported_and_the_connection_serves_on,
        every_key_type_and_format_serves,
        embedded_pem_serves,
        bad_certificates_and_keys_fail_before_any_child_starts,
        an_expired_certificate_is_a_warning,
        the_server_name_picks_the_certificate,
        a_replacement_child_needs_no_key_file,
        sessions_resume_across_children,
        bad_tls_input_gets_a_clean_close_and_frees_everything,
        proxy_protocol_header_comes_before_the_handshake,
        a_fresh_connection_gets_its_handshake_and_request_during_the_drain,
        openssl_s_client_resumes_across_children,
        curl_with_cacert,
    ];
    let dir = std::env::temp_dir().join(format!("prefork-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let env = Env {
        pki: Pki::new(),
        dir: dir.clone(),
    };
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let start = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(&env)))
            .unwrap_or_else(|_| Err("test panicked".into()));
        match result {
            Ok(()) => {
                passed += 1;
                println!(
                    "test tls::{name} ... ok ({} ms)",
                    start.elapsed().as_millis()
                );
            }
            Err(why) => {
                failed += 1;
                println!("test tls::{name} ... FAILED\n    {why}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("\ntls suite: {passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Starts a TLS master with `cert`/`key` and `extra` environment; waits for ready.
fn start(cert: &Path, key: &Path, extra: &[(&str, &str)]) -> Result<(Master, u16), String> {
    let mut env = vec![("PF_TLS_CERT", path(cert)), ("PF_TLS_KEY", path(key))];
    env.extend_from_slice(extra);
    let mut m = Master::start(&env);
    let (_, port) = m.ready()?;
    Ok((m, port))
}

fn stop(mut m: Master) -> Outcome {
    m.signal(libc::SIGTERM);
    let status = m.wait_exit(10 * SEC)?;
    ensure!(
        status.code() == Some(0),
        "master exit {status:?}; {}",
        m.context()
    );
    all_gone(&m.all_children(), 2 * SEC)?;
    Ok(())
}

fn serves_tls13_and_tls12_with_alpn_and_close_notify(env: &Env) -> Outcome {
    let (cert, key) = env.files("basic", &["localhost"]);
    let (m, port) = start(&cert, &key, &[("PF_CHILDREN", "2")])?;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let cfg = std::sync::Arc::new(client::config(&env.pki.ca_pem, &[version]));
        let r = client::get(&cfg, port, "localhost", "/")?;
        ensure!(r.status == 200 && r.body == "hello over tls", "{r:?}");
        ensure!(r.alpn.as_deref() == Some(b"http/1.1"), "alpn {:?}", r.alpn);
        ensure!(
            r.version == Some(version.version),
            "version {:?}",
            r.version
        );
        // A body larger than a record and than the socket buffer: records in several writes.
        let big = client::get(&cfg, port, "localhost", "/big")?;
        ensure!(big.body.len() == 200_000, "big body {}", big.body.len());
        // Both versions resume with the tickets (there is no per-child session cache).
        ensure!(
            big.kind == Some(rustls::HandshakeKind::Resumed),
            "{:?} did not resume: {:?}",
            version.version,
            big.kind
        );
    }
    stop(m)
}

/// Handler threads answer on their own schedule: the answer still goes out encrypted, and
/// pipelined requests on one TLS connection come back in order.
fn handler_threads_and_pipelining_over_tls(env: &Env) -> Outcome {
    use std::io::{Read, Write};
    let (cert, key) = env.files("threads", &["localhost"]);
    let (m, port) = start(&cert, &key, &[("PF_CHILDREN", "1"), ("PF_THREADS", "2")])?;
    let cfg = client::tls13(&env.pki.ca_pem);
    let sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(5 * SEC)).unwrap();
    let conn = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let batch = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(15)
        + "GET /pid HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    tls.write_all(batch.as_bytes()).unwrap();
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    ensure!(
        text.matches("HTTP/1.1 200 OK").count() == 16
            && text.matches("hello over tls").count() == 15,
        "pipelined replies: {text}"
    );
    drop(tls);
    stop(m)
}

/// A handler that tries to take over a TLS connection is refused with `Unsupported`
/// (PREFORK_ERR_UNSUPPORTED in the C ABI), answers normally, and the connection serves on:
/// inline and on handler threads.
fn a_hijack_over_tls_is_unsupported_and_the_connection_serves_on(env: &Env) -> Outcome {
    use std::io::{Read, Write};
    let (cert, key) = env.files("hijack", &["localhost"]);
    for threads in ["0", "2"] {
        let (m, port) = start(
            &cert,
            &key,
            &[("PF_CHILDREN", "1"), ("PF_THREADS", threads)],
        )?;
        let cfg = client::tls13(&env.pki.ca_pem);
        let sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(5 * SEC)).unwrap();
        let conn = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let batch = "GET /hijack HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
            .to_string()
            + "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        tls.write_all(batch.as_bytes()).unwrap();
        let mut raw = Vec::new();
        tls.read_to_end(&mut raw)
            .map_err(|e| format!("read (threads {threads}): {e}"))?;
        let text = String::from_utf8_lossy(&raw);
        ensure!(
            text.starts_with("HTTP/1.1 501 ")
                && text.contains("hijack refused: Unsupported 11")
                && text.matches("HTTP/1.1 200 OK").count() == 1
                && text.ends_with("hello over tls"),
            "threads {threads}: {text}"
        );
        drop(tls);
        stop(m)?;
    }
    Ok(())
}

fn every_key_type_and_format_serves(env: &Env) -> Outcome {
    for (alg, format, name) in [
        (&RSA_SHA256, KeyFormat::Pkcs8, "rsa-pkcs8"),
        (&RSA_SHA256, KeyFormat::Traditional, "rsa-pkcs1"),
        (&ECDSA_P256, KeyFormat::Pkcs8, "ec-pkcs8"),
        (&ECDSA_P256, KeyFormat::Traditional, "ec-sec1"),
    ] {
        let (cert, key) = env
            .pki
            .leaf(&["localhost"], alg, format)
            .write(&env.dir, name);
        let (m, port) = start(&cert, &key, &[("PF_CHILDREN", "1")])?;
        let r = client::get(&client::tls13(&env.pki.ca_pem), port, "localhost", "/")
            .map_err(|e| format!("{name}: {e}"))?;
        ensure!(r.status == 200, "{name}: {r:?}");
        stop(m)?;
    }
    Ok(())
}

fn embedded_pem_serves(env: &Env) -> Outcome {
    let (cert, key) = env.files("embed", &["localhost"]);
    let (m, port) = start(&cert, &key, &[("PF_CHILDREN", "1"), ("PF_TLS_EMBED", "1")])?;
    let r = client::get(&client::tls13(&env.pki.ca_pem), port, "localhost", "/")?;
    ensure!(r.status == 200, "{r:?}");
    stop(m)
}

/// The master fails at once, naming the file and the reason, and starts no child.
fn expect_tls_error(m: &mut Master, needles: &[&str]) -> Outcome {
    let result = m.failure()?;
    ensure!(
        result.starts_with("result err Tls "),
        "got {result:?}; {}",
        m.context()
    );
    for needle in needles {
        ensure!(result.contains(needle), "{needle:?} not in {result:?}");
    }
    ensure!(
        m.all_children().is_empty(),
        "children were started: {}",
        m.context()
    );
    Ok(())
}

fn bad_certificates_and_keys_fail_before_any_child_starts(env: &Env) -> Outcome {
    let (cert, key) = env.files("good", &["localhost"]);
    let (_, other_key) = env.files("other", &["localhost"]);
    let write = |name: &str, text: &str| {
        let p = env.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let missing = env.dir.join("does-not-exist.pem");
    let empty = write("empty.pem", "");
    let garbage = write(
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    let encrypted = write(
        "encrypted.key",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBAA==\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    let legacy_encrypted = write(
        "legacy.key",
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n",
    );
    let cases: Vec<(&Path, &Path, Vec<String>)> = vec![
        (
            &missing,
            &key,
            vec![path(&missing).into(), "cannot read it".into()],
        ),
        (
            &cert,
            &missing,
            vec![path(&missing).into(), "cannot read it".into()],
        ),
        (
            &empty,
            &key,
            vec![path(&empty).into(), "no certificate".into()],
        ),
        (&key, &key, vec![path(&key).into(), "no certificate".into()]),
        (
            &garbage,
            &key,
            vec![path(&garbage).into(), "not readable PEM".into()],
        ),
        (
            &cert,
            &cert,
            vec![path(&cert).into(), "no private key".into()],
        ),
        (
            &cert,
            &encrypted,
            vec![path(&encrypted).into(), "encrypted".into()],
        ),
        (
            &cert,
            &legacy_encrypted,
            vec![path(&legacy_encrypted).into(), "encrypted".into()],
        ),
        (
            &cert,
            &other_key,
            vec![
                path(&other_key).into(),
                "does not match".into(),
                path(&cert).into(),
            ],
        ),
    ];
    for (c, k, needles) in cases {
        let mut m = Master::start(&[("PF_TLS_CERT", path(c)), ("PF_TLS_KEY", path(k))]);
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        expect_tls_error(&mut m, &needles)?;
    }
    // A bad certificate among the SNI ones fails the same way.
    let extra = format!("{}:{}", path(&cert), path(&other_key));
    let mut m = Master::start(&[
        ("PF_TLS_CERT", path(&cert)),
        ("PF_TLS_KEY", path(&key)),
        ("PF_TLS_EXTRA", &extra),
    ]);
    expect_tls_error(&mut m, &["does not match"])
}

fn an_expired_certificate_is_a_warning(env: &Env) -> Outcome {
    let (cert, key) = env
        .pki
        .leaf_with(&["localhost"], &ECDSA_P256, KeyFormat::Pkcs8, |p| {
            p.not_before = rcgen::date_time_ymd(2001, 1, 1);
            p.not_after = rcgen::date_time_ymd(2002, 1, 1);
        })
        .write(&env.dir, "expired");
    let (m, _) = start(&cert, &key, &[("PF_CHILDREN", "1")])?;
    let warning = m
        .seen
        .iter()
        .find(|l| l.starts_with("log warn") && l.contains("expired"))
        .cloned();
    ensure!(
        warning
            .as_deref()
            .is_some_and(|w| w.contains(path(&cert)) && w.contains("2002-01-01")),
        "no expiry warning naming the file and date; {}",
        m.context()
    );
    stop(m)
}

fn the_server_name_picks_the_certificate(env: &Env) -> Outcome {
    let (cert, key) = env.files("default", &["default.test"]);
    let (a_cert, a_key) = env.files("a", &["a.test"]);
    let (w_cert, w_key) = env.files("wild", &["*.wild.test"]);
    let extra = format!(
        "{}:{},{}:{}",
        path(&a_cert),
        path(&a_key),
        path(&w_cert),
        path(&w_key)
    );
    let (m, port) = start(
        &cert,
        &key,
        &[("PF_CHILDREN", "1"), ("PF_TLS_EXTRA", &extra)],
    )?;
    let der = |p: &Path| {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_file(p)
            .unwrap()
            .to_vec()
    };
    let cfg = client::tls13(&env.pki.ca_pem);
    for (sni, want) in [
        ("default.test", &cert),
        ("a.test", &a_cert),
        ("x.wild.test", &w_cert),
    ] {
        let r = client::get(&cfg, port, sni, "/")?;
        ensure!(r.cert == der(want), "{sni}: wrong certificate");
    }
    // An unknown name gets the default, which the client then refuses by name: the server
    // answered with the first certificate.
    let unknown = client::get(&cfg, port, "unknown.test", "/");
    ensure!(
        unknown
            .as_ref()
            .is_err_and(|e| e.contains("only valid for DnsName(\"default.test\")")),
        "unknown name: {unknown:?}"
    );
    stop(m)
}

fn a_replacement_child_needs_no_key_file(env: &Env) -> Outcome {
    let (cert, key) = env.files("replace", &["localhost"]);
    let (mut m, port) = start(&cert, &key, &[("PF_CHILDREN", "1")])?;
    std::fs::remove_file(&cert).unwrap();
    std::fs::remove_file(&key).unwrap();
    let cfg = client::tls13(&env.pki.ca_pem);
    let first: i32 = client::get(&cfg, port, "localhost", "/pid")?
        .body
        .parse()
        .unwrap();
    unsafe { libc::kill(first, libc::SIGKILL) };
    m.expect("port ", 10 * SEC)?;
    let second: i32 = client::get(&cfg, port, "localhost", "/pid")?
        .body
        .parse()
        .unwrap();
    ensure!(second != first, "the same child answered");
    stop(m)
}

fn sessions_resume_across_children(env: &Env) -> Outcome {
    let (cert, key) = env.files("resume", &["localhost"]);
    let (m, port) = start(&cert, &key, &[("PF_CHILDREN", "4"), ("PF_REUSEPORT", "1")])?;
    // One client, one session store: every reconnection offers the ticket of the last.
    let cfg = client::tls13(&env.pki.ca_pem);
    let first = client::get(&cfg, port, "localhost", "/pid")?;
    ensure!(first.kind == Some(rustls::HandshakeKind::Full), "{first:?}");
    let mut pids = std::collections::BTreeSet::new();
    let (mut resumed, total) = (0, 60);
    for _ in 0..total {
        let r = client::get(&cfg, port, "localhost", "/pid")?;
        pids.insert(r.body.clone());
        if r.kind == Some(rustls::HandshakeKind::Resumed) {
            resumed += 1;
        }
    }
    println!(
        "    measure: {resumed}/{total} reconnections resumed, served by {} children",
        pids.len()
    );
    ensure!(
        pids.len() >= 3,
        "only {} children served: {pids:?}",
        pids.len()
    );
    ensure!(resumed == total, "{resumed}/{total} resumed");
    stop(m)
}

/// Reads until EOF (or a reset); returns what came and when the stream ended.
fn read_to_close(
    sock: &mut std::net::TcpStream,
    within: Duration,
) -> Result<(Vec<u8>, Duration), String> {
    use std::io::Read;
    let start = Instant::now();
    sock.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return Ok((got, start.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok((got, start.elapsed()));
            }
            Err(e) => {
                return Err(format!(
                    "not closed within {within:?} ({e}); got {} bytes",
                    got.len()
                ));
            }
        }
    }
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Waits until the child holds `want` descriptors again: every bad connection is gone.
fn fds_back_to(pid: i32, want: usize) -> Outcome {
    let deadline = Instant::now() + 3 * SEC;
    loop {
        let now = fd_count(pid);
        if now == want {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "child {pid} holds {now} descriptors, {want} before"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TLS 1.3 ClientHello of `len`-ish bytes (an unknown extension pads it), in records of at
/// most 16 KiB: what a client with a large post-quantum key share or many tickets sends.
fn client_hello(padding: usize) -> Vec<u8> {
    let mut ext = Vec::new();
    let mut put_ext = |kind: u16, data: &[u8]| {
        ext.extend_from_slice(&kind.to_be_bytes());
        ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
        ext.extend_from_slice(data);
    };
    put_ext(0x002b, &[2, 3, 4]); // supported_versions: TLS 1.3
    put_ext(0x000a, &[0, 2, 0, 0x1d]); // supported_groups: x25519
    put_ext(0x000d, &[0, 2, 4, 3]); // signature_algorithms: ecdsa_secp256r1_sha256
    let mut share = vec![0, 0x24, 0, 0x1d, 0, 0x20];
    share.extend((1..=32u8).map(|b| b.wrapping_mul(37)));
    put_ext(0x0033, &share); // key_share
    put_ext(0x7777, &vec![0u8; padding]); // unknown: ignored by the server
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut msg = vec![1];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    let mut records = Vec::new();
    for chunk in msg.chunks(16 * 1024) {
        records.extend_from_slice(&[22, 3, 1]);
        records.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        records.extend_from_slice(chunk);
    }
    records
}

/// A PROXY protocol version 2 header for a TCP over IPv4 connection from `src`.
fn proxy_v2(src: std::net::SocketAddrV4) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]); // version 2 PROXY, TCP over IPv4, 12 bytes
    h.extend_from_slice(&src.ip().octets());
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

/// `GET path` over TLS on `sock`, after `preamble` in clear; with `together`, the preamble
/// and the ClientHello go out in one write, as a balancer that buffers may send them.
fn get_after(
    env: &Env,
    mut sock: std::net::TcpStream,
    preamble: &[u8],
    together: bool,
    path: &str,
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let cfg = client::tls13(&env.pki.ca_pem);
    let mut conn = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
    sock.set_read_timeout(Some(5 * SEC)).unwrap();
    let mut first = preamble.to_vec();
    if together {
        conn.write_tls(&mut first).unwrap();
    }
    sock.write_all(&first)
        .map_err(|e| format!("preamble: {e}"))?;
    if !together {
        // Its own segment: the server reads the header, then waits for the handshake.
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("handshake or write: {e}"))?;
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw)
        .map_err(|e| format!("read (got {} bytes): {e}", raw.len()))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no head in {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    ensure!(
        tls.conn.alpn_protocol() == Some(b"http/1.1"),
        "alpn {:?}",
        tls.conn.alpn_protocol()
    );
    Ok((status, body.to_string()))
}

/// With the PROXY protocol on, a TLS connection starts with the header in clear, read off the
/// raw socket; the handshake follows it. The handler sees the header's client.
fn proxy_protocol_header_comes_before_the_handshake(env: &Env) -> Outcome {
    use std::io::Write;
    use std::net::{SocketAddrV4, TcpStream};
    let (cert, key) = env.files("proxy", &["localhost"]);
    let (mut m, port) = start(
        &cert,
        &key,
        &[
            ("PF_CHILDREN", "1"),
            ("PF_PROXY", "1"),
            ("PF_PROXY_MS", "400"),
        ],
    )?;
    let child = m.pid_list("spawn ")[0];
    let connect = || TcpStream::connect(("127.0.0.1", port)).unwrap();

    // Version 1, then the handshake in later segments.
    let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 443\r\n";
    let (status, body) = get_after(env, connect(), v1, false, "/peer")?;
    ensure!(
        (status, body.as_str()) == (200, "203.0.113.7:51234"),
        "v1: {status} {body:?}"
    );
    // What the child holds once it served (the first handshake opens what TLS needs).
    std::thread::sleep(Duration::from_millis(50));
    let fds = fd_count(child);
    // Version 2 and the ClientHello in one write: only the header is taken before TLS.
    let src: SocketAddrV4 = "198.51.100.9:40000".parse().unwrap();
    let (status, body) = get_after(env, connect(), &proxy_v2(src), true, "/peer")?;
    ensure!(
        (status, body.as_str()) == (200, "198.51.100.9:40000"),
        "v2: {status} {body:?}"
    );
    // Pipelined keep-alive requests after the header are served as usual.
    let (status, body) = get_after(env, connect(), &proxy_v2(src), true, "/")?;
    ensure!(
        status == 200 && body == "hello over tls",
        "v2 /: {status} {body:?}"
    );

    // A TLS client without the header: closed without a byte in reply.
    let mut sock = connect();
    sock.write_all(&client_hello(0)).unwrap();
    let (got, _) = read_to_close(&mut sock, 3 * SEC)?;
    ensure!(
        got.is_empty(),
        "a ClientHello for a header got {} bytes",
        got.len()
    );
    // The header, then plain HTTP: the TLS transport runs after it and refuses in clear.
    let mut sock = connect();
    let mut plain = v1.to_vec();
    plain.extend_from_slice(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    sock.write_all(&plain).unwrap();
    let (got, _) = read_to_close(&mut sock, 3 * SEC)?;
    let got = String::from_utf8_lossy(&got);
    ensure!(
        got.starts_with("HTTP/1.1 400 Bad Request") && got.contains("This port speaks HTTPS"),
        "plain HTTP after the header: {got:?}"
    );
    // No header within proxy_timeout: closed, the handshake never started.
    let mut sock = connect();
    let (got, waited) = read_to_close(&mut sock, 5 * SEC)?;
    ensure!(
        got.is_empty() && waited >= Duration::from_millis(300),
        "silent connection: {} bytes after {waited:?}",
        got.len()
    );
    fds_back_to(child, fds)?;
    m.drain(Duration::from_millis(200));
    ensure!(
        m.context().contains("closed a connection from 127.0.0.1"),
        "no refusal logged: {}",
        m.context()
    );
    stop(m)
}

/// A client that connected just before a graceful stop and sends nothing yet is kept for its
/// first request (the drain's rule for a fresh connection) over TLS too: the handshake and the
/// request that follow are served, then the child exits 0.
fn a_fresh_connection_gets_its_handshake_and_request_during_the_drain(env: &Env) -> Outcome {
    let (cert, key) = env.files("drain", &["localhost"]);
    let (mut m, port) = start(&cert, &key, &[("PF_CHILDREN", "1")])?;
    let sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // Accepted by the child while it serves: the drain does not take it from the queue.
    std::thread::sleep(Duration::from_millis(100));
    m.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    let (status, body) = get_after(env, sock, b"", true, "/")?;
    ensure!(
        status == 200 && body == "hello over tls",
        "during the drain: {status} {body:?}"
    );
    let status = m.wait_exit(10 * SEC)?;
    ensure!(
        status.code() == Some(0),
        "master exit {status:?}; {}",
        m.context()
    );
    all_gone(&m.all_children(), 2 * SEC)?;
    Ok(())
}

fn bad_tls_input_gets_a_clean_close_and_frees_everything(env: &Env) -> Outcome {
    use std::io::Write;
    use std::net::{Shutdown, TcpStream};
    let (cert, key) = env.files("bad-input", &["localhost"]);
    let (m, port) = start(
        &cert,
        &key,
        &[("PF_CHILDREN", "1"), ("PF_HEADER_MS", "500")],
    )?;
    let cfg = client::tls13(&env.pki.ca_pem);
    let pid: i32 = client::get(&cfg, port, "localhost", "/pid")?
        .body
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let baseline = fd_count(pid);
    let connect = || TcpStream::connect(("127.0.0.1", port)).unwrap();
    let report = |what: &str, got: &[u8], took: Duration| {
        println!(
            "    measure: {what}: closed after {:.0} ms, {} bytes back{}",
            took.as_secs_f64() * 1000.0,
            got.len(),
            match got.first() {
                Some(21) => " (a TLS alert)",
                Some(22) => " (a TLS handshake record)",
                Some(b'H') => " (clear-text HTTP)",
                _ => "",
            }
        )
    };

    // Plain HTTP: a clear-text 400, then the close.
    let mut s = connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let (got, took) = read_to_close(&mut s, 3 * SEC)?;
    let text = String::from_utf8_lossy(&got);
    ensure!(
        text.starts_with("HTTP/1.1 400 ") && text.contains("https://"),
        "plain HTTP got {text:?}"
    );
    report("plain HTTP", &got, took);

    // A handshake that never starts, and one that stalls half way: the header timeout.
    for (what, send) in [
        ("silent client", &[][..]),
        ("stalled ClientHello", &client_hello(0)[..40]),
    ] {
        let mut s = connect();
        s.write_all(send).unwrap();
        let (got, took) = read_to_close(&mut s, 3 * SEC)?;
        ensure!(
            took >= Duration::from_millis(400) && took < 2 * SEC,
            "{what}: closed after {took:?}, the header timeout is 500 ms"
        );
        report(what, &got, took);
    }

    // Garbage: records of nonsense, and bytes that are no record at all.
    for (what, send) in [
        ("garbage handshake record", {
            let mut r = vec![22, 3, 1, 0, 16];
            r.extend_from_slice(&[0xee; 16]);
            r
        }),
        (
            "garbage bytes",
            vec![0x00, 0xff, 0x13, 0x37, 0x42, 0x00, 0x01, 0x02],
        ),
        ("oversized record", vec![23, 3, 3, 0xff, 0xff, 0, 0, 0]),
    ] {
        let mut s = connect();
        s.write_all(&send).unwrap();
        let (got, took) = read_to_close(&mut s, 2 * SEC)?;
        ensure!(took < SEC, "{what}: closed only after {took:?}");
        ensure!(
            got.is_empty() || got[0] == 21,
            "{what}: got {got:?}, not an alert"
        );
        report(what, &got, took);
    }

    // A ClientHello over 16 KiB, in two records: the server answers it.
    let mut s = connect();
    s.write_all(&client_hello(20_000)).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (got, took) = read_to_close(&mut s, 2 * SEC)?;
    ensure!(
        got.first() == Some(&22),
        "a 20 KiB ClientHello got {:?}",
        &got[..got.len().min(8)]
    );
    report("20 KiB ClientHello", &got, took);

    // A truncated record after a complete handshake, then EOF.
    {
        let sock = connect();
        let conn =
            rustls::ClientConnection::new(cfg.clone(), "localhost".try_into().unwrap()).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| format!("handshake: {e}"))?;
        }
        tls.sock.write_all(&[23, 3, 3, 0, 100]).unwrap();
        tls.sock.write_all(&[0xab; 50]).unwrap();
        tls.sock.shutdown(Shutdown::Write).unwrap();
        let (got, took) = read_to_close(&mut tls.sock, 2 * SEC)?;
        ensure!(took < SEC, "truncated record: closed only after {took:?}");
        report("truncated record then EOF", &got, took);
    }

    // A client that leaves without close_notify, in the middle of a keep-alive connection.
    {
        let sock = connect();
        let conn =
            rustls::ClientConnection::new(cfg.clone(), "localhost".try_into().unwrap()).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 256];
        let n = std::io::Read::read(&mut tls, &mut buf).map_err(|e| format!("read: {e}"))?;
        ensure!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "keep-alive reply {:?}",
            &buf[..n]
        );
        tls.sock.shutdown(Shutdown::Both).unwrap();
    }

    fds_back_to(pid, baseline)?;
    let r = client::get(&cfg, port, "localhost", "/pid")?;
    ensure!(r.body == pid.to_string(), "the child changed: {r:?}");
    stop(m)
}

/// `None` (with a note) when `tool` is not installed: the stage script installs it in CI.
fn tool(name: &str) -> Option<&str> {
    let found = std::process::Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        || std::process::Command::new(name)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !found {
        println!("    skipped: {name} is not installed (apt-get install {name})");
    }
    found.then_some(name)
}

/// One `openssl s_client` exchange: GET /pid, reading until the server closes.
fn s_client(
    port: u16,
    ca: &Path,
    sess_in: Option<&Path>,
    sess_out: &Path,
) -> Result<String, String> {
    use std::io::Write;
    let mut cmd = std::process::Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost", "-CAfile", path(ca), "-ign_eof"])
        .args(["-sess_out", path(sess_out)]);
    if let Some(s) = sess_in {
        cmd.args(["-sess_in", path(s)]);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("openssl: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /pid HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let out = child
        .wait_with_output()
        .map_err(|e| format!("openssl: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn openssl_s_client_resumes_across_children(env: &Env) -> Outcome {
    if tool("openssl").is_none() {
        return Ok(());
    }
    let (cert, key) = env.files("openssl", &["localhost"]);
    let ca = env.dir.join("ca.pem");
    std::fs::write(&ca, &env.pki.ca_pem).unwrap();
    let (m, port) = start(&cert, &key, &[("PF_CHILDREN", "4"), ("PF_REUSEPORT", "1")])?;
    let sess = env.dir.join("openssl.sess");
    let first = s_client(port, &ca, None, &sess)?;
    ensure!(
        first.contains("New, TLSv1.3") && first.contains("Verify return code: 0 (ok)"),
        "first handshake: {first}"
    );
    let (mut resumed, total) = (0, 50);
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..total {
        let out = s_client(port, &ca, Some(&sess), &sess)?;
        if out.contains("Reused, TLSv1.3") {
            resumed += 1;
        }
        if let Some(pid) = out.rsplit("\r\n\r\n").next().and_then(|b| b.lines().next()) {
            pids.insert(pid.trim().to_string());
        }
    }
    println!(
        "    measure: openssl s_client -sess_in/-sess_out: {resumed}/{total} resumed, served by {} children",
        pids.len()
    );
    ensure!(resumed == total, "{resumed}/{total} resumed");
    ensure!(pids.len() >= 3, "served by {pids:?}");
    stop(m)
}

fn curl_with_cacert(env: &Env) -> Outcome {
    if tool("curl").is_none() {
        return Ok(());
    }
    let (cert, key) = env.files("curl", &["localhost"]);
    let ca = env.dir.join("curl-ca.pem");
    std::fs::write(&ca, &env.pki.ca_pem).unwrap();
    let (m, port) = start(&cert, &key, &[("PF_CHILDREN", "1")])?;
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", path(&ca)])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_code} %{http_version} %{ssl_verify_result}"])
        .arg(format!("https://localhost:{port}/"))
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text == "hello over tls\n200 1.1 0",
        "curl: {text:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop(m)
}
