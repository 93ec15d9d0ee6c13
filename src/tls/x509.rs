//! The two facts of a certificate that rustls does not expose and the master needs: its
//! validity period (to warn about an expired certificate before serving it) and its DNS names
//! (to pick a certificate by the client's server name). A DER walker over the few fields on
//! the way, nothing more: the signature and everything else are webpki's business.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT Version`, `[3] EXPLICIT Extensions` of a TBSCertificate.
const VERSION: u8 = 0xa0;
const EXTENSIONS: u8 = 0xa3;
/// `dNSName [2] IMPLICIT IA5String` of a GeneralName.
const DNS_NAME: u8 = 0x82;
/// id-ce-subjectAltName, 2.5.29.17.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// What the master reads from an end-entity certificate.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    pub not_before: Option<SystemTime>,
    pub not_after: Option<SystemTime>,
    /// The subjectAltName's DNS names, as written (wildcards included).
    pub dns_names: Vec<String>,
}

/// Reads what it can; a field it cannot read is left empty rather than failing, since rustls
/// has accepted the certificate already.
pub(crate) fn facts(cert_der: &[u8]) -> Facts {
    read(cert_der).unwrap_or_default()
}

fn read(cert_der: &[u8]) -> Option<Facts> {
    let mut cert = Der(cert_der).expect(SEQUENCE)?;
    let mut tbs = cert.expect(SEQUENCE)?;
    if tbs.peek() == Some(VERSION) {
        tbs.next()?;
    }
    tbs.next()?; // serialNumber
    tbs.next()?; // signature algorithm
    tbs.next()?; // issuer
    let mut validity = tbs.expect(SEQUENCE)?;
    let mut facts = Facts {
        not_before: validity.next().and_then(time),
        not_after: validity.next().and_then(time),
        dns_names: Vec::new(),
    };
    while let Some((tag, content)) = tbs.next() {
        if tag == EXTENSIONS {
            facts.dns_names = dns_names(content).unwrap_or_default();
        }
    }
    Some(facts)
}

fn dns_names(extensions: &[u8]) -> Option<Vec<String>> {
    let mut list = Der(extensions).expect(SEQUENCE)?;
    while let Some((_, ext)) = list.next() {
        let mut ext = Der(ext);
        if ext.expect_raw(OID)? != SUBJECT_ALT_NAME {
            continue;
        }
        if ext.peek() == Some(BOOLEAN) {
            ext.next()?;
        }
        let mut names = Der(ext.expect_raw(OCTET_STRING)?).expect(SEQUENCE)?;
        let mut out = Vec::new();
        while let Some((tag, name)) = names.next() {
            if tag == DNS_NAME
                && let Ok(name) = std::str::from_utf8(name)
            {
                out.push(name.to_ascii_lowercase());
            }
        }
        return Some(out);
    }
    Some(Vec::new())
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950..2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time((tag, text): (u8, &[u8])) -> Option<SystemTime> {
    let digits = |s: &[u8]| -> Option<u64> {
        s.iter().try_fold(0u64, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
        })
    };
    let (year, rest) = match tag {
        UTC_TIME if text.len() == 13 => {
            let yy = digits(&text[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        GENERALIZED_TIME if text.len() == 15 => (digits(&text[..4])?, &text[4..]),
        _ => return None,
    };
    if rest.last() != Some(&b'Z') {
        return None;
    }
    let field = |i: usize| digits(&rest[i..i + 2]);
    let (month, day) = (field(0)?, field(2)?);
    let (hour, min, sec) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year as i64, month as i64, day as i64);
    let secs = days * 86_400 + (hour * 3600 + min * 60 + sec) as i64;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `t` as `YYYY-MM-DD HH:MM:SS UTC`, for messages.
pub(crate) fn format_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, rem / 60 % 60, rem % 60);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02} UTC")
}

/// The inverse of `days_from_civil`.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A cursor over DER elements.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        let (content, rest) = rest.split_at(len);
        self.0 = rest;
        Some((tag, content))
    }

    fn expect_raw(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (t, content) if t == tag => Some(content),
            _ => None,
        }
    }

    fn expect(&mut self, tag: u8) -> Option<Der<'a>> {
        self.expect_raw(tag).map(Der)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[test]
    fn times_in_both_encodings() {
        assert_eq!(time((UTC_TIME, b"700101000000Z")), at(0));
        assert_eq!(time((UTC_TIME, b"491231235959Z")), at(2_524_607_999));
        assert_eq!(time((UTC_TIME, b"500101000000Z")), None);
        assert_eq!(
            time((GENERALIZED_TIME, b"20240229120000Z")),
            at(1_709_208_000)
        );
        assert_eq!(time((GENERALIZED_TIME, b"20240229120000+0100")), None);
        assert_eq!(time((UTC_TIME, b"701301000000Z")), None);
    }

    #[test]
    fn dates_format_back() {
        assert_eq!(
            format_utc(at(1_709_208_000).unwrap()),
            "2024-02-29 12:00:00 UTC"
        );
        assert_eq!(
            format_utc(at(2_524_607_999).unwrap()),
            "2049-12-31 23:59:59 UTC"
        );
        assert_eq!(format_utc(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn garbage_reads_as_nothing() {
        assert_eq!(facts(b""), Facts::default());
        assert_eq!(
            facts(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            Facts::default()
        );
        assert_eq!(facts(&[0x30, 0x03, 0x30, 0x01]), Facts::default());
    }

    #[test]
    fn a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec![
            "Example.com".to_string(),
            "*.example.net".to_string(),
        ])
        .unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 2);
        params.not_after = rcgen::date_time_ymd(2051, 3, 4);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let f = facts(cert.der());
        assert_eq!(f.not_before, at(1_577_923_200));
        assert_eq!(f.not_after, at(2_561_500_800));
        assert_eq!(f.dns_names, ["example.com", "*.example.net"]);
    }
}
