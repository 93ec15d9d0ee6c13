//! Byte tests over the bytes of a request and a response, many bytes per step.
//!
//! Why not memchr for finding the line ends of a head: a request's lines are short, and one
//! memchr call per line cost more than the search itself (callgrind: about 42 instructions for
//! a 16-byte line, about 62 per line of a browser's request). Here one step gives every line end
//! of a block: 16 bytes with SSE2 (part of every x86_64), else 8 bytes in a `u64` ("SIMD
//! within a register").

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const LOWS: u64 = u64::from_ne_bytes([0x7f; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// The bytes one `match_block` call looks at.
#[cfg(target_arch = "x86_64")]
pub(crate) const BLOCK: usize = 16;
#[cfg(not(target_arch = "x86_64"))]
pub(crate) const BLOCK: usize = 8;

/// The bytes of `block` (at most `BLOCK`) equal to `needle`: bit `i` is set for the byte at
/// index `i`, so the first match is `mask.trailing_zeros()`.
#[inline(always)]
pub(crate) fn match_block(needle: u8, block: &[u8]) -> u32 {
    if block.len() == BLOCK {
        return match_full_block(needle, block);
    }
    // A short tail, padded with bytes that cannot match.
    let mut padded = [!needle; BLOCK];
    padded[..block.len()].copy_from_slice(block);
    match_full_block(needle, &padded)
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn match_full_block(needle: u8, block: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
    assert_eq!(block.len(), BLOCK);
    // SAFETY: SSE2 is in every x86_64 CPU; the unaligned load reads the 16 bytes of `block`.
    let mask = unsafe {
        let bytes = _mm_loadu_si128(block.as_ptr().cast());
        _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_set1_epi8(needle as i8)))
    };
    mask as u32
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn match_full_block(needle: u8, block: &[u8]) -> u32 {
    match_word(needle, word(block))
}

/// `match_block` for one little-endian word, without SIMD instructions.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))] // the fallback; tests check it everywhere
#[inline(always)]
fn match_word(needle: u8, w: u64) -> u32 {
    // Bit 7 of each byte of `w` that equals `needle`, exactly: no carry crosses a byte, since
    // `(b & 0x7f) + 0x7f` is at most 0xfe.
    let x = w ^ (ONES * u64::from(needle));
    let high_bits = !(((x & LOWS) + LOWS) | x | LOWS);
    // Gathers the eight bit-7s into the top byte, in byte order.
    ((high_bits >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32
}

/// Nonzero if some byte of `w` is below `n` (`n` at most 128). Only "any" is exact: a borrow
/// may also mark bytes above the lowest one below `n`.
#[inline(always)]
fn any_below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(ONES * u64::from(n)) & !w & HIGHS
}

/// Nonzero if some byte of `w` is `b`.
#[inline(always)]
fn any_equal(w: u64, b: u8) -> u64 {
    any_below(w ^ (ONES * u64::from(b)), 1)
}

#[inline(always)]
fn word(chunk: &[u8]) -> u64 {
    u64::from_le_bytes(chunk.try_into().expect("an 8-byte chunk"))
}

/// Whether `value` holds a control character other than tab (CTL in RFC 9110 §5.5: 0x00-0x1f
/// and 0x7f), which a field value must not.
#[inline(always)]
pub(crate) fn has_control(value: &[u8]) -> bool {
    let bad = |&b: &u8| (b < b' ' && b != b'\t') || b == 0x7f;
    let mut words = value.chunks_exact(8);
    for chunk in &mut words {
        let w = word(chunk);
        // A tab is below 0x20 yet allowed: a suspect word is checked byte by byte.
        if (any_below(w, b' ') | any_equal(w, 0x7f)) != 0 && chunk.iter().any(bad) {
            return true;
        }
    }
    words.remainder().iter().any(bad)
}

/// Whether `value` holds a byte >= 0x80 or `needle` (ASCII, not NUL): a word at a time from 8
/// bytes on, the last word overlapping the one before it; shorter values byte by byte, which
/// costs less than assembling a word.
#[inline(always)]
pub(crate) fn has_high_or(value: &[u8], needle: u8) -> bool {
    debug_assert!(needle.is_ascii() && needle != 0);
    let hit = |w: u64| (w & HIGHS) | any_equal(w, needle) != 0;
    let n = value.len();
    if n < 8 {
        return value.iter().any(|&b| b >= 0x80 || b == needle);
    }
    let mut at = 0;
    while at + 8 < n {
        if hit(word(&value[at..at + 8])) {
            return true;
        }
        at += 8;
    }
    hit(word(&value[n - 8..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pattern of needles and near misses (one bit off, which a carry or borrow could
    /// confuse with the needle) over `len` bytes.
    fn patterns(needle: u8, len: usize) -> impl Iterator<Item = (Vec<u8>, u32)> {
        (0..1u32 << len).map(move |bits| {
            let block = (0..len)
                .map(|i| {
                    if bits >> i & 1 == 1 {
                        needle
                    } else {
                        needle ^ (1 << (i % 8))
                    }
                })
                .collect();
            (block, bits)
        })
    }

    #[test]
    fn match_block_marks_exactly_the_needles() {
        for needle in [b'\n', 0, 0xff, 0x80, 0x7f] {
            for len in 0..=BLOCK {
                for (block, want) in patterns(needle, len) {
                    assert_eq!(
                        match_block(needle, &block),
                        want,
                        "{needle:#x} in {block:x?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_word_fallback_marks_exactly_the_needles() {
        for needle in [b'\n', 0, 0xff, 0x80, 0x7f] {
            for (block, want) in patterns(needle, 8) {
                assert_eq!(
                    match_word(needle, word(&block)),
                    want,
                    "{needle:#x} in {block:x?}"
                );
            }
        }
    }

    #[test]
    fn has_control_agrees_with_a_plain_check() {
        let plain = |v: &[u8]| v.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f);
        for b in 0..=255u8 {
            for len in 1..20 {
                for at in 0..len {
                    let mut v = vec![b'x'; len];
                    v[at] = b;
                    assert_eq!(has_control(&v), plain(&v), "byte {b:#x} at {at} of {len}");
                }
            }
        }
        assert!(!has_control(b"text/plain;\tcharset=utf-8"));
        assert!(!has_control("caf\u{e9} \u{1F600}".as_bytes()));
        assert!(has_control(b"text/plain; charset=utf-8\r\n"));
        assert!(!has_control(b""));
    }

    #[test]
    fn has_high_or_agrees_with_a_plain_check() {
        let plain = |v: &[u8]| v.iter().any(|&b| b >= 0x80 || b == b'#');
        for b in 0..=255u8 {
            for len in 1..20 {
                for at in 0..len {
                    let mut v = vec![b'a'; len];
                    v[at] = b;
                    assert_eq!(
                        has_high_or(&v, b'#'),
                        plain(&v),
                        "byte {b:#x} at {at} of {len}"
                    );
                }
            }
        }
        assert!(!has_high_or(b"", b'#'));
        assert!(!has_high_or(b"/?fields=name,email&id=12345", b'#'));
        assert!(has_high_or(b"/?fields=name,email&id=12345#top", b'#'));
    }
}
