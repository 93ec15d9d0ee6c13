//! Session tickets every child can open: the master makes one random secret and hands it to
//! each child; a child derives the key of each period of `PERIOD` seconds of wall-clock time
//! from it (HKDF-SHA256, the period number as the info), so all children seal with the same
//! key at the same time without ever talking to each other. A ticket names its period; one
//! of the current or the previous period opens, so a ticket stays good for at least one
//! period and at most two, and a key is never used once both periods are over.
//!
//! AES-256-GCM-SIV with a random nonce: many processes seal with one key at once, and SIV
//! keeps a repeated nonce from being a catastrophe (it would only reveal that two tickets
//! are equal).

use std::fmt;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use rustls::server::ProducesTickets;

/// Length of the master's ticket secret.
pub(crate) const SECRET_LEN: usize = 32;
/// A key's period: 12 hours, nginx's and Go's order of magnitude for ticket keys.
pub(crate) const PERIOD: u64 = 12 * 3600;
const HEADER_LEN: usize = 4;
const TAG_LEN: usize = 16;
/// Domain separation of the derivation: a new ticket format gets a new label.
const LABEL: &[u8] = b"libprefork session ticket key v1";

pub(crate) struct Ticketer {
    salt_prk: aws_lc_rs::hkdf::Prk,
    /// The keys of the last two periods used, newest first: derived once per period.
    keys: Mutex<Vec<(u32, RandomizedNonceKey)>>,
}

impl fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ticketer { .. }")
    }
}

struct KeyLen;

impl KeyType for KeyLen {
    fn len(&self) -> usize {
        AES_256_GCM_SIV.key_len()
    }
}

/// The period that `now` falls in.
pub(crate) fn period_of(now: SystemTime) -> u32 {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    (secs / PERIOD) as u32
}

impl Ticketer {
    pub(crate) fn new(secret: &[u8; SECRET_LEN]) -> Ticketer {
        Ticketer {
            salt_prk: Salt::new(HKDF_SHA256, LABEL).extract(secret),
            keys: Mutex::new(Vec::with_capacity(2)),
        }
    }

    fn with_key<T>(&self, period: u32, f: impl FnOnce(&RandomizedNonceKey) -> T) -> Option<T> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, key)) = keys.iter().find(|(p, _)| *p == period) {
            return Some(f(key));
        }
        let mut bytes = [0u8; 32];
        let info = period.to_be_bytes();
        let info = [&info[..]];
        self.salt_prk
            .expand(&info, KeyLen)
            .ok()?
            .fill(&mut bytes)
            .ok()?;
        let key = RandomizedNonceKey::new(&AES_256_GCM_SIV, &bytes).ok()?;
        let out = f(&key);
        keys.insert(0, (period, key));
        keys.truncate(2);
        Some(out)
    }

    pub(crate) fn seal_at(&self, plain: &[u8], now: SystemTime) -> Option<Vec<u8>> {
        let period = period_of(now);
        let header = period.to_be_bytes();
        let mut ticket = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        ticket.extend_from_slice(&header);
        ticket.extend_from_slice(&[0; NONCE_LEN]);
        let mut body = plain.to_vec();
        let nonce = self.with_key(period, |key| {
            key.seal_in_place_append_tag(Aad::from(header), &mut body)
                .ok()
        })??;
        ticket[HEADER_LEN..HEADER_LEN + NONCE_LEN].copy_from_slice(nonce.as_ref());
        ticket.extend_from_slice(&body);
        Some(ticket)
    }

    pub(crate) fn open_at(&self, ticket: &[u8], now: SystemTime) -> Option<Vec<u8>> {
        if ticket.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (header, rest) = ticket.split_at(HEADER_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let period = u32::from_be_bytes(header.try_into().ok()?);
        let current = period_of(now);
        if period != current && period.checked_add(1) != Some(current) {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let len = self.with_key(period, |key| {
            key.open_in_place(nonce, Aad::from(header), &mut body)
                .ok()
                .map(|plain| plain.len())
        })??;
        body.truncate(len);
        Some(body)
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    /// The least time a ticket stays good (see the module's docs).
    fn lifetime(&self) -> u32 {
        PERIOD as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal_at(plain, SystemTime::now())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open_at(cipher, SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SECRET: [u8; SECRET_LEN] = [7; SECRET_LEN];

    fn at_period(p: u64, into: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(p * PERIOD + into)
    }

    #[test]
    fn any_ticketer_with_the_secret_opens_a_ticket_of_this_or_the_last_period() {
        let sealer = Ticketer::new(&SECRET);
        let ticket = sealer
            .seal_at(b"state", at_period(1000, PERIOD - 1))
            .unwrap();
        // Another child: same secret, its own derivation.
        let other = Ticketer::new(&SECRET);
        assert_eq!(
            other.open_at(&ticket, at_period(1000, 0)).unwrap(),
            b"state"
        );
        assert_eq!(
            other.open_at(&ticket, at_period(1001, 0)).unwrap(),
            b"state"
        );
        assert_eq!(
            other.open_at(&ticket, at_period(1001, PERIOD - 1)).unwrap(),
            b"state"
        );
        assert_eq!(other.open_at(&ticket, at_period(1002, 0)), None);
        // A ticket from the future (a clock stepped back) is refused too.
        assert_eq!(other.open_at(&ticket, at_period(999, 0)), None);
    }

    #[test]
    fn keys_rotate_each_period() {
        let t = Ticketer::new(&SECRET);
        let a = t.seal_at(b"x", at_period(5, 0)).unwrap();
        let b = t.seal_at(b"x", at_period(6, 0)).unwrap();
        assert_ne!(a[..4], b[..4]);
        // Same plaintext, different keys and nonces: nothing in common after the header.
        assert_ne!(a[4..], b[4..]);
        // The period header is authenticated: moving a ticket to another period fails.
        let mut moved = a.clone();
        moved[..4].copy_from_slice(&6u32.to_be_bytes());
        assert_eq!(t.open_at(&moved, at_period(6, 0)), None);
    }

    #[test]
    fn forged_truncated_and_foreign_tickets_are_refused() {
        let t = Ticketer::new(&SECRET);
        let now = at_period(42, 10);
        let ticket = t.seal_at(b"session", now).unwrap();
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert_eq!(t.open_at(&bad, now), None, "flipped byte {i}");
        }
        for len in 0..ticket.len() {
            assert_eq!(t.open_at(&ticket[..len], now), None, "cut at {len}");
        }
        let foreign = Ticketer::new(&[8; SECRET_LEN]);
        assert_eq!(foreign.open_at(&ticket, now), None);
        assert_eq!(t.open_at(&[], now), None);
    }

    #[test]
    fn the_lifetime_hint_is_the_guaranteed_minimum() {
        assert_eq!(Ticketer::new(&SECRET).lifetime(), 43_200);
    }
}
