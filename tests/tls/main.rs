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
        every_key_type_and_format_serves,
        embedded_pem_serves,
        bad_certificates_and_keys_fail_before_any_child_starts,
        an_expired_certificate_is_a_warning,
        the_server_name_picks_the_certificate,
        a_replacement_child_needs_no_key_file,
        sessions_resume_across_children,
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
    }
    stop(m)
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
    let status = m.wait_exit(10 * SEC)?;
    ensure!(
        status.code() == Some(1),
        "master exit {status:?}; {}",
        m.context()
    );
    let result = m
        .seen
        .iter()
        .find(|l| l.starts_with("result "))
        .cloned()
        .unwrap_or_default();
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
