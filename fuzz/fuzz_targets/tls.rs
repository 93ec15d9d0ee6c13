//! The TLS transport glue under the event loop's turn: a rustls client's records cut into
//! writes at random boundaries, through socket buffers small enough to stop every read and
//! write part way. No panic, no stuck connection, and the plaintext the client gets is what
//! the plain engine answers for the same bytes.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use prefork::http::testing::{run_connection, run_tls_connection, tls_config};
use prefork::{Handler, Request, Response};

mod common;

struct Echo;

impl Handler for Echo {
    fn handle(&self, req: &Request<'_>, resp: &mut Response) {
        match req.path().as_bytes().get(1) {
            Some(b'b') => resp.set_body(&vec![b'b'; 3000]),
            Some(b'c') => resp.add_header(b"Connection", b"close").unwrap(),
            _ => resp.write(req.body()),
        }
    }
}

type Configs = (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>);

fn configs() -> &'static Configs {
    static CONFIGS: OnceLock<Configs> = OnceLock::new();
    CONFIGS.get_or_init(|| {
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
    })
}

fuzz_target!(|data: &[u8]| {
    let cfg = common::small_config();
    let (cuts, input) = common::cuts(data);
    let (server, client) = configs();
    // The cuts fall in the ciphertext, a few KiB of handshake longer than the input.
    let cuts: Vec<usize> = cuts.iter().map(|c| c * 4 + 17).collect();
    let plain = run_connection(input, &[], &cfg, &Echo);
    let tls = run_tls_connection(input, &cuts, &cfg, &Echo, server, client);
    assert_eq!(tls.run.closed, plain.closed, "close decision ({cuts:?})");
    assert_eq!(
        common::strip_continue(&tls.run.output),
        common::strip_continue(&plain.output),
        "output ({cuts:?})"
    );
    assert!(tls.close_notify, "no close_notify ({cuts:?})");
});
