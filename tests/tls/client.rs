//! A rustls client: the other end of the suite's connections.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore, StreamOwned};

pub fn config(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg
}

pub fn tls13(ca_pem: &str) -> Arc<ClientConfig> {
    Arc::new(config(ca_pem, &[&rustls::version::TLS13]))
}

/// What one HTTPS exchange showed.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub kind: Option<HandshakeKind>,
    pub alpn: Option<Vec<u8>>,
    pub version: Option<rustls::ProtocolVersion>,
    /// The end-entity certificate the server presented.
    pub cert: Vec<u8>,
}

/// `GET path` on a new connection with `Connection: close`; the reply must end with the
/// server's close_notify (a truncated stream is an error).
pub fn get(cfg: &Arc<ClientConfig>, port: u16, sni: &str, path: &str) -> Result<Reply, String> {
    let sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let conn = ClientConnection::new(cfg.clone(), name).unwrap();
    let mut tls = StreamOwned::new(conn, sock);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n"
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
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let c = &tls.conn;
    Ok(Reply {
        status,
        body: body.to_string(),
        kind: c.handshake_kind(),
        alpn: c.alpn_protocol().map(|p| p.to_vec()),
        version: c.protocol_version(),
        cert: c
            .peer_certificates()
            .and_then(|v| v.first())
            .map(|c| c.to_vec())
            .unwrap_or_default(),
    })
}
