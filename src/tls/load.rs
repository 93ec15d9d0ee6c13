//! The master's checks of a certificate and its key, before any child starts: each failure is
//! an error that names the file (or the in-memory argument) and the reason.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::x509;
use crate::error::{Error, ErrorKind};
use crate::log::{Level, Logger};

/// Where a certificate chain and its key come from.
#[derive(Clone)]
pub(crate) enum CertSource {
    Files { cert: PathBuf, key: PathBuf },
    Pem { cert: Vec<u8>, key: Vec<u8> },
}

/// A checked certificate chain (end entity first) and its key.
pub(crate) struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// The key loaded by `provider`, checked against the certificate.
    pub(crate) fn certified(
        &self,
        provider: &CryptoProvider,
    ) -> Result<CertifiedKey, rustls::Error> {
        CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), provider)
    }
}

fn tls_error(message: String) -> Error {
    Error::new(ErrorKind::Tls, message)
}

/// Reads, parses and checks `source` (the `index`th certificate given, from 1). An expired or
/// not yet valid certificate is only a warning: serving it is the operator's call.
pub(crate) fn load(
    source: &CertSource,
    index: usize,
    provider: &Arc<CryptoProvider>,
    log: &dyn Logger,
    now: SystemTime,
) -> Result<Identity, Error> {
    let (cert_name, key_name, cert_pem, key_pem) = match source {
        CertSource::Files { cert, key } => {
            let cert_name = format!("TLS certificate file {}", cert.display());
            let key_name = format!("TLS key file {}", key.display());
            let read = |path: &PathBuf, name: &str| {
                std::fs::read(path)
                    .map_err(|e| Error::io(ErrorKind::Tls, format!("{name}: cannot read it"), e))
            };
            let cert_pem = read(cert, &cert_name)?;
            let key_pem = read(key, &key_name)?;
            (cert_name, key_name, cert_pem, key_pem)
        }
        CertSource::Pem { cert, key } => (
            format!("in-memory TLS certificate #{index}"),
            format!("in-memory TLS key #{index}"),
            cert.clone(),
            key.clone(),
        ),
    };
    let chain = certificates(&cert_pem, &cert_name)?;
    let key = private_key(&key_pem, &key_name)?;
    let identity = Identity { chain, key };
    identity.certified(provider).map_err(|e| {
        tls_error(match e {
            rustls::Error::InconsistentKeys(_) => {
                format!("{key_name} does not match the certificate in {cert_name}")
            }
            rustls::Error::InvalidCertificate(e) => {
                format!("{cert_name}: the first certificate is not valid X.509 ({e:?})")
            }
            other => format!("{key_name}: the key cannot be used ({other})"),
        })
    })?;
    warn_if_out_of_date(&identity.chain[0], &cert_name, log, now);
    Ok(identity)
}

fn certificates(pem: &[u8], name: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(format!("{name}: not readable PEM ({})", pem_reason(&e))))?;
    if chain.is_empty() {
        return Err(tls_error(format!(
            "{name} holds no certificate (no \"-----BEGIN CERTIFICATE-----\" block)"
        )));
    }
    Ok(chain)
}

fn private_key(pem: &[u8], name: &str) -> Result<PrivateKeyDer<'static>, Error> {
    if contains(pem, b"ENCRYPTED PRIVATE KEY") || contains(pem, b"Proc-Type: 4,ENCRYPTED") {
        return Err(tls_error(format!(
            "{name} holds an encrypted private key, which the server cannot ask a passphrase \
             for: decrypt it first (openssl pkey -in KEY -out PLAIN_KEY)"
        )));
    }
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        tls_error(match e {
            pem::Error::NoItemsFound => format!(
                "{name} holds no private key (no \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC \
                 PRIVATE KEY\" block)"
            ),
            e => format!("{name}: not readable PEM ({})", pem_reason(&e)),
        })
    })
}

fn pem_reason(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a block has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a malformed BEGIN line".into(),
        pem::Error::Base64Decode(_) => "bad base64 inside a block".into(),
        other => format!("{other:?}"),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn warn_if_out_of_date(cert: &[u8], name: &str, log: &dyn Logger, now: SystemTime) {
    let facts = x509::facts(cert);
    let when = x509::format_utc;
    if let Some(after) = facts.not_after
        && after < now
    {
        log.log(
            Level::Warn,
            &format!(
                "{name}: the certificate expired on {}; clients will refuse it",
                when(after)
            ),
        );
    } else if let Some(before) = facts.not_before
        && before > now
    {
        log.log(
            Level::Warn,
            &format!(
                "{name}: the certificate is not valid yet (from {}); clients will refuse it",
                when(before)
            ),
        );
    }
}
