//! The TLS transport under the event loop's own turn, over a Unix socket pair with 1 KiB
//! buffers (so reads and writes stop part way), against a rustls client: for each request
//! batch and many ways to cut the client's records into writes, the client receives exactly
//! what the plain engine answers in memory, with the same close decision, and the server ends
//! with close_notify. A connection waiting, open, for its next request holds no TLS buffer.

use std::sync::Arc;

use prefork::http::testing::{run_connection, run_tls_connection, tls_config};
use prefork::{Handler, HttpConfig, Request, Response};

struct Echo;

impl Handler for Echo {
    fn handle(&self, req: &Request<'_>, resp: &mut Response) {
        match req.path() {
            "/big" => resp.set_body(&vec![b'b'; 40_000]),
            "/close" => {
                resp.add_header(b"Connection", b"close").unwrap();
                resp.write(b"bye");
            }
            _ => resp.write(req.body()),
        }
    }
}

fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let server = tls_config(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    (server, Arc::new(client))
}

/// Cut points derived from `seed` with xorshift: up to 40 offsets into `len` bytes.
fn cuts(seed: u64, len: usize) -> Vec<usize> {
    let mut x = seed | 1;
    let count = (x % 41) as usize;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (len as u64 + 1)) as usize
        })
        .collect()
}

#[test]
fn tls_delivers_what_the_plain_engine_answers_whatever_the_cuts() {
    let cfg = HttpConfig::default();
    let (server, client) = configs();
    let batches: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
          GET /big HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /close HTTP/1.1\r\nHost: a\r\n\r\nGET /never HTTP/1.1\r\nHost: a\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /big HTTP/1.1\r\nHost: a\r\n\r\nGET /big HTTP/1.1\r\nHost: a\r\n\r\nGET /big HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n",
    ];
    let (mut runs, mut delivered, mut idle) = (0, 0, 0);
    for (i, input) in batches.iter().enumerate() {
        let plain = run_connection(input, &[], &cfg, &Echo);
        for seed in 0..12u64 {
            // The ciphertext is about the plaintext's size plus a few KiB of handshake.
            let cut = cuts(
                seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) + i as u64,
                input.len() + 4096,
            );
            let tls = run_tls_connection(input, &cut, &cfg, &Echo, &server, &client);
            assert_eq!(
                String::from_utf8_lossy(&tls.run.output),
                String::from_utf8_lossy(&plain.output),
                "batch {i}, cuts {cut:?}"
            );
            assert_eq!(tls.run.closed, plain.closed, "batch {i}, cuts {cut:?}");
            assert!(tls.close_notify, "batch {i}: no close_notify, cuts {cut:?}");
            if let Some(bytes) = tls.idle_buffers {
                assert_eq!(
                    bytes, 0,
                    "batch {i}: an idle connection holds TLS buffers, cuts {cut:?}"
                );
                idle += 1;
            }
            runs += 1;
            delivered += tls.run.output.len();
        }
    }
    assert_eq!(runs, batches.len() * 12);
    // Keep-alive batches (0, 1, 4 and the unfinished 5) end idle and open.
    assert!(idle >= 4 * 12, "{idle} runs ended idle");
    // The 40 KB bodies went through 1 KiB socket buffers, in many partial writes.
    assert!(delivered > 12 * 160_000, "{delivered} bytes delivered");
}
