//! The `Date` header value (RFC 9110 §5.6.7 IMF-fixdate), formatted at most once per second:
//! the loop refreshes the cache once per turn and every response copies the 29 cached bytes.

use std::time::{SystemTime, UNIX_EPOCH};

/// Length of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub(crate) const DATE_LEN: usize = 29;

pub(crate) struct DateCache {
    secs: u64,
    text: [u8; DATE_LEN],
}

impl DateCache {
    pub(crate) fn new() -> DateCache {
        let mut cache = DateCache {
            secs: u64::MAX,
            text: [b' '; DATE_LEN],
        };
        cache.refresh(SystemTime::now());
        cache
    }

    /// A cache frozen at `secs` since the epoch (deterministic output for tests and fuzzing).
    pub(crate) fn fixed(secs: u64) -> DateCache {
        DateCache {
            secs,
            text: format_imf(secs),
        }
    }

    /// Reformats only when the second changed.
    pub(crate) fn refresh(&mut self, now: SystemTime) {
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if secs != self.secs {
            self.secs = secs;
            self.text = format_imf(secs);
        }
    }

    pub(crate) fn get(&self) -> &[u8; DATE_LEN] {
        &self.text
    }
}

fn format_imf(secs: u64) -> [u8; DATE_LEN] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let mut out = [0u8; DATE_LEN];
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    out[3..5].copy_from_slice(b", ");
    two(&mut out[5..7], day);
    out[7] = b' ';
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    out[11] = b' ';
    // IMF-fixdate has a four-digit year; clamp rather than overflow on absurd clocks.
    let year = year.clamp(0, 9999) as u32;
    two(&mut out[12..14], year / 100);
    two(&mut out[14..16], year % 100);
    out[16] = b' ';
    two(&mut out[17..19], (rem / 3600) as u32);
    out[19] = b':';
    two(&mut out[20..22], (rem / 60 % 60) as u32);
    out[22] = b':';
    two(&mut out[23..25], (rem % 60) as u32);
    out[25..].copy_from_slice(b" GMT");
    out
}

fn two(dst: &mut [u8], v: u32) {
    dst[0] = b'0' + (v / 10) as u8;
    dst[1] = b'0' + (v % 10) as u8;
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(&format_imf(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(&format_imf(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&format_imf(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(&format_imf(1_709_210_096), b"Thu, 29 Feb 2024 12:34:56 GMT");
        assert_eq!(&format_imf(4_102_444_799), b"Thu, 31 Dec 2099 23:59:59 GMT");
    }

    #[test]
    fn refresh_changes_only_on_a_new_second() {
        let mut c = DateCache::fixed(0);
        c.refresh(UNIX_EPOCH + std::time::Duration::from_millis(999));
        assert_eq!(c.get(), b"Thu, 01 Jan 1970 00:00:00 GMT");
        c.refresh(UNIX_EPOCH + std::time::Duration::from_secs(61));
        assert_eq!(c.get(), b"Thu, 01 Jan 1970 00:01:01 GMT");
    }
}
