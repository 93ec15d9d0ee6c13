//! TLS: rustls with the aws-lc-rs provider, TLS 1.3 and 1.2, ALPN `http/1.1`.
//!
//! Where the state lives: the master reads and checks every certificate and key
//! ([`load`]) and makes the session-ticket secret before it binds or spawns; it encodes them
//! once ([`wire`]) and writes them on each child's lifeline right after the spawn. A child
//! reads that message before it serves and builds its `ServerConfig` from it
//! ([`server_config`]): it never opens the certificate or key files, and the key never
//! appears in argv or the environment. Tickets ([`ticket`]) are sealed with keys every child
//! derives from the shared secret and the wall clock, so any child resumes any other's
//! sessions.
//!
//! The provider is aws-lc-rs, measured against ring in a scratch benchmark (server-side CPU
//! per in-memory handshake, 2,000 each, two runs; bulk 16 KiB records): ECDSA P-256 full
//! handshake 96 µs vs 115-135 µs, RSA-2048 340 µs vs 670-780 µs, resumed 90 µs vs 101 µs;
//! AES-128-GCM sealing 7.4-7.8 GB/s vs 6.1 GB/s. Its cost is the build (a clean build of
//! the benchmark 53 s vs 28 s) and 2.2 MB more code.

mod load;
pub(crate) mod ticket;
mod wire;
mod x509;

use std::fmt;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};

use crate::error::{Error, ErrorKind};
use crate::log::Logger;
pub(crate) use load::CertSource;
use wire::Material;

/// The protocol announced by ALPN: the engine speaks HTTP/1.1 only.
const ALPN_HTTP11: &[u8] = b"http/1.1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The message for the children, keys included: overwritten when dropped.
pub(crate) struct Sealed(Vec<u8>);

impl std::ops::Deref for Sealed {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Sealed {
    fn drop(&mut self) {
        wire::zero(&mut self.0);
    }
}

/// Master side: checks every certificate (the first is the default) and makes the ticket
/// secret; returns the message for the children.
pub(crate) fn prepare(sources: &[CertSource], log: &dyn Logger) -> Result<Sealed, Error> {
    let provider = provider();
    let now = SystemTime::now();
    let identities = sources
        .iter()
        .enumerate()
        .map(|(i, s)| load::load(s, i + 1, &provider, log, now))
        .collect::<Result<Vec<_>, _>>()?;
    let mut secret = [0u8; ticket::SECRET_LEN];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| {
        Error::new(
            ErrorKind::Tls,
            "no randomness for the session-ticket secret",
        )
    })?;
    let material = Material { secret, identities };
    let msg = wire::encode(&material);
    wire::zero(&mut secret);
    Ok(Sealed(msg))
}

/// Master side: hands `msg` from `prepare` to a child just started.
pub(crate) fn send(lifeline: RawFd, msg: &[u8], deadline: Instant) -> Result<(), Error> {
    wire::send_all(lifeline, msg, deadline).map_err(|e| {
        Error::io(
            ErrorKind::Spawn,
            "hand the TLS material to a child over its lifeline (fd 4)",
            e,
        )
    })
}

/// Child side: reads the master's TLS material from the lifeline and builds the config.
pub(crate) fn receive(lifeline: RawFd, deadline: Instant) -> Result<Arc<ServerConfig>, Error> {
    let mut material = wire::receive(lifeline, deadline).map_err(|why| {
        Error::new(
            ErrorKind::Tls,
            format!("receiving the TLS material from the master: {why}"),
        )
    })?;
    let config = server_config(&material);
    wire::zero(&mut material.secret);
    config
}

/// The config a child builds, straight from PEM text, for tests and fuzzing in one process.
pub(crate) fn config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    log: &dyn Logger,
) -> Result<Arc<ServerConfig>, Error> {
    let source = CertSource::Pem {
        cert: cert_pem.to_vec(),
        key: key_pem.to_vec(),
    };
    let identity = load::load(&source, 1, &provider(), log, SystemTime::now())?;
    server_config(&Material {
        secret: [0x5a; ticket::SECRET_LEN],
        identities: vec![identity],
    })
}

fn server_config(m: &Material) -> Result<Arc<ServerConfig>, Error> {
    let provider = provider();
    let tls_err = |e: rustls::Error| Error::new(ErrorKind::Tls, format!("TLS setup: {e}"));
    let certs = m
        .identities
        .iter()
        .map(|id| {
            let names = x509::facts(&id.chain[0]).dns_names;
            id.certified(&provider).map(|ck| (names, Arc::new(ck)))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(tls_err)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ByServerName { certs }));
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    config.ticketer = Arc::new(ticket::Ticketer::new(&m.secret));
    // Tickets carry the whole session; a per-child cache could not help another child.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    // One ticket per handshake: a client takes one per reconnection, and each costs a seal.
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

/// Picks the certificate for the client's server name (SNI): the first whose DNS names match
/// it exactly, else the first whose wildcard matches, else the first certificate.
struct ByServerName {
    certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl fmt::Debug for ByServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.certs.iter().map(|(n, _)| n).collect();
        f.debug_struct("ByServerName")
            .field("names", &names)
            .finish()
    }
}

impl ByServerName {
    fn pick(&self, server_name: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let default = self.certs.first().map(|(_, ck)| ck);
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return default;
        };
        let exact = self.certs.iter().find(|(names, _)| names.contains(&name));
        let wildcard = || {
            self.certs
                .iter()
                .find(|(names, _)| names.iter().any(|n| wildcard_matches(n, &name)))
        };
        exact.or_else(wildcard).map(|(_, ck)| ck).or(default)
    }
}

/// `*.example.com` covers exactly one label: `a.example.com`, not `example.com` nor
/// `a.b.example.com` (RFC 6125 §6.4.3).
fn wildcard_matches(pattern: &str, name: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return false;
    };
    name.split_once('.')
        .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
}

impl ResolvesServerCert for ByServerName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(wildcard_matches("*.example.com", "a.example.com"));
        assert!(!wildcard_matches("*.example.com", "example.com"));
        assert!(!wildcard_matches("*.example.com", "a.b.example.com"));
        assert!(!wildcard_matches("*.example.com", ".example.com"));
        assert!(!wildcard_matches("a.example.com", "a.example.com"));
    }

    #[test]
    fn the_server_name_picks_the_certificate_and_the_first_is_the_default() {
        let provider = provider();
        let make = |names: &[&str]| {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(
                names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
            .unwrap();
            let cert = params.self_signed(&key).unwrap();
            let ck = load::Identity {
                chain: vec![cert.der().clone()],
                key: rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            }
            .certified(&provider)
            .unwrap();
            (names.iter().map(|s| s.to_string()).collect(), Arc::new(ck))
        };
        let r = ByServerName {
            certs: vec![
                make(&["default.test"]),
                make(&["*.wild.test"]),
                make(&["exact.wild.test"]),
            ],
        };
        let chosen = |sni: Option<&str>| {
            let ck = r.pick(sni).unwrap();
            r.certs
                .iter()
                .position(|(_, c)| Arc::ptr_eq(c, ck))
                .unwrap()
        };
        assert_eq!(chosen(None), 0);
        assert_eq!(chosen(Some("unknown.test")), 0);
        assert_eq!(chosen(Some("DEFAULT.test")), 0);
        assert_eq!(chosen(Some("a.wild.test")), 1);
        assert_eq!(chosen(Some("exact.wild.test")), 2);
    }
}
