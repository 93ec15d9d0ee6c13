//! Test certificates, made fresh by each run: a CA and leaves signed by it, in every key
//! type and file format the library accepts. No private key is ever checked in.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SignatureAlgorithm,
};

pub use rcgen::{PKCS_ECDSA_P256_SHA256 as ECDSA_P256, PKCS_RSA_SHA256 as RSA_SHA256};

pub struct Pki {
    pub ca_pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// How a leaf's key is written.
#[derive(Clone, Copy, Debug)]
pub enum KeyFormat {
    Pkcs8,
    /// PKCS#1 for RSA, SEC1 for ECDSA: the "traditional" formats.
    Traditional,
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "libprefork test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki {
            ca_pem: issuer.pem(),
            issuer,
        }
    }

    pub fn leaf(
        &self,
        names: &[&str],
        alg: &'static SignatureAlgorithm,
        format: KeyFormat,
    ) -> Leaf {
        self.leaf_with(names, alg, format, |_| {})
    }

    pub fn leaf_with(
        &self,
        names: &[&str],
        alg: &'static SignatureAlgorithm,
        format: KeyFormat,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let pkcs8 = key.serialize_der();
        let key_pem = match format {
            KeyFormat::Pkcs8 => pem("PRIVATE KEY", &pkcs8),
            KeyFormat::Traditional if alg == &RSA_SHA256 => {
                pem("RSA PRIVATE KEY", pkcs8_private_key(&pkcs8))
            }
            KeyFormat::Traditional => pem("EC PRIVATE KEY", pkcs8_private_key(&pkcs8)),
        };
        Leaf {
            cert_pem: cert.pem(),
            key_pem,
        }
    }
}

impl Leaf {
    /// Writes `NAME.crt` and `NAME.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

/// The `privateKey` OCTET STRING of a PKCS#8 PrivateKeyInfo: the RSAPrivateKey (PKCS#1) or
/// ECPrivateKey (SEC1) it wraps.
fn pkcs8_private_key(der: &[u8]) -> &[u8] {
    let mut outer = Tlv(der);
    let mut info = Tlv(outer.next().1);
    info.next(); // version
    info.next(); // algorithm
    let (tag, key) = info.next();
    assert_eq!(tag, 0x04, "PKCS#8 privateKey");
    key
}

struct Tlv<'a>(&'a [u8]);

impl<'a> Tlv<'a> {
    fn next(&mut self) -> (u8, &'a [u8]) {
        let tag = self.0[0];
        let (len, start) = match self.0[1] {
            n if n < 0x80 => (n as usize, 2),
            n => {
                let k = (n & 0x7f) as usize;
                let len = self.0[2..2 + k]
                    .iter()
                    .fold(0usize, |a, &b| (a << 8) | b as usize);
                (len, 2 + k)
            }
        };
        let content = &self.0[start..start + len];
        self.0 = &self.0[start + len..];
        (tag, content)
    }
}

pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
