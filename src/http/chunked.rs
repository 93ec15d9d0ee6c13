//! A strict decoder of the chunked transfer coding (RFC 9112 §7.1), resumable at any byte.
//!
//! Stricter than httparse's `parse_chunk_size` on purpose: hex digits only (no sign, no `0x`),
//! no overflow, extensions validated against the grammar and capped, trailer fields validated
//! and capped, CRLF everywhere (a bare LF or CR is an error) and chunk data must be followed by
//! CRLF. Trailer fields are checked and then dropped: the handler never sees them.

use super::Status;
use super::parse::is_tchar;

/// Caps applied to one chunked body.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkLimits {
    /// Largest decoded body; more is a 413.
    pub max_body: u64,
    /// Total bytes of chunk extensions; more is a 400.
    pub max_ext: usize,
    /// Total bytes of the trailer section; more is a 431.
    pub max_trailer: usize,
    /// Most trailer fields; more is a 431.
    pub max_trailers: usize,
}

/// Most hex digits of one chunk size, leading zeros included. 16 digits hold any u64; the slack
/// allows a few leading zeros without letting a size line grow without bound.
const MAX_SIZE_DIGITS: u32 = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    /// Expecting the first hex digit of a chunk size.
    SizeStart,
    /// In the hex digits.
    Size,
    /// After whitespace that must lead to `;`.
    ExtBws,
    /// After `;`: optional whitespace, then a name.
    ExtNameStart,
    ExtName,
    /// After a name and whitespace: `=` or `;`.
    ExtNameBws,
    /// After `=`: optional whitespace, then a token or a quoted string.
    ExtValueStart,
    ExtToken,
    ExtQuoted,
    ExtQuotedEscape,
    /// After a closing quote: `;`, whitespace or CR.
    ExtQuotedEnd,
    /// Got the CR ending a size line.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line or of the final empty line.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    st: St,
    /// The size being parsed, then the data bytes left in the current chunk.
    size: u64,
    digits: u32,
    decoded: u64,
    ext_bytes: usize,
    trailer_bytes: usize,
    trailers: usize,
}

/// Result of a `decode` call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// All input consumed; the body is not complete.
    NeedMore,
    /// The body (trailers included) ended after this many input bytes.
    Done(usize),
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            st: St::SizeStart,
            size: 0,
            digits: 0,
            decoded: 0,
            ext_bytes: 0,
            trailer_bytes: 0,
            trailers: 0,
        }
    }
}

impl ChunkedDecoder {
    pub(crate) fn reset(&mut self) {
        *self = ChunkedDecoder::default();
    }

    /// Decodes `input`, appending chunk data to `out`. Returns the status to answer with on
    /// malformed input or a broken cap; after an error the decoder must not be used again.
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        lim: &ChunkLimits,
    ) -> Result<Decoded, Status> {
        let mut i = 0;
        while i < input.len() {
            if self.st == St::Data {
                let n = (input.len() - i).min(self.size as usize);
                out.extend_from_slice(&input[i..i + n]);
                i += n;
                self.size -= n as u64;
                if self.size == 0 {
                    self.st = St::DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.step(b, lim)?;
            if self.st == St::Done {
                return Ok(Decoded::Done(i));
            }
        }
        Ok(Decoded::NeedMore)
    }

    fn step(&mut self, b: u8, lim: &ChunkLimits) -> Result<(), Status> {
        const BAD: Status = Status::BAD_REQUEST;
        let is_ws = b == b' ' || b == b'\t';
        if is_ext_state(self.st) {
            self.ext_bytes += 1;
            if self.ext_bytes > lim.max_ext {
                return Err(BAD);
            }
        }
        if is_trailer_state(self.st) {
            self.trailer_bytes += 1;
            if self.trailer_bytes > lim.max_trailer {
                return Err(Status::HEADER_FIELDS_TOO_LARGE);
            }
        }
        self.st = match self.st {
            St::SizeStart | St::Size => match hex(b) {
                Some(v) => {
                    self.digits += 1;
                    if self.digits > MAX_SIZE_DIGITS || self.size > u64::MAX >> 4 {
                        return Err(BAD);
                    }
                    self.size = self.size << 4 | u64::from(v);
                    St::Size
                }
                None if self.st == St::SizeStart => return Err(BAD),
                None if b == b'\r' => St::SizeLf,
                None if b == b';' => self.ext_start(lim)?,
                None if is_ws => self.ext_ws(lim)?,
                None => return Err(BAD),
            },
            St::ExtBws => match b {
                b';' => St::ExtNameStart,
                _ if is_ws => St::ExtBws,
                _ => return Err(BAD),
            },
            St::ExtNameStart => match b {
                _ if is_ws => St::ExtNameStart,
                _ if is_tchar(b) => St::ExtName,
                _ => return Err(BAD),
            },
            St::ExtName => match b {
                _ if is_tchar(b) => St::ExtName,
                b';' => St::ExtNameStart,
                b'=' => St::ExtValueStart,
                b'\r' => St::SizeLf,
                _ if is_ws => St::ExtNameBws,
                _ => return Err(BAD),
            },
            St::ExtNameBws => match b {
                b';' => St::ExtNameStart,
                b'=' => St::ExtValueStart,
                _ if is_ws => St::ExtNameBws,
                _ => return Err(BAD),
            },
            St::ExtValueStart => match b {
                b'"' => St::ExtQuoted,
                _ if is_ws => St::ExtValueStart,
                _ if is_tchar(b) => St::ExtToken,
                _ => return Err(BAD),
            },
            St::ExtToken => match b {
                _ if is_tchar(b) => St::ExtToken,
                b';' => St::ExtNameStart,
                b'\r' => St::SizeLf,
                _ if is_ws => St::ExtBws,
                _ => return Err(BAD),
            },
            St::ExtQuoted => match b {
                b'"' => St::ExtQuotedEnd,
                b'\\' => St::ExtQuotedEscape,
                b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => St::ExtQuoted,
                _ => return Err(BAD),
            },
            St::ExtQuotedEscape => match b {
                b'\t' | b' '..=0x7e | 0x80..=0xff => St::ExtQuoted,
                _ => return Err(BAD),
            },
            St::ExtQuotedEnd => match b {
                b';' => St::ExtNameStart,
                b'\r' => St::SizeLf,
                _ if is_ws => St::ExtBws,
                _ => return Err(BAD),
            },
            St::SizeLf => {
                if b != b'\n' {
                    return Err(BAD);
                }
                self.digits = 0;
                if self.size == 0 {
                    St::TrailerStart
                } else {
                    if self.size > lim.max_body.saturating_sub(self.decoded) {
                        return Err(Status::CONTENT_TOO_LARGE);
                    }
                    self.decoded += self.size;
                    St::Data
                }
            }
            St::Data => unreachable!("data is copied in bulk by decode"),
            St::DataCr if b == b'\r' => St::DataLf,
            St::DataLf if b == b'\n' => St::SizeStart,
            St::DataCr | St::DataLf => return Err(BAD),
            St::TrailerStart => match b {
                b'\r' => St::EndLf,
                _ if is_tchar(b) => {
                    self.trailers += 1;
                    if self.trailers > lim.max_trailers {
                        return Err(Status::HEADER_FIELDS_TOO_LARGE);
                    }
                    St::TrailerName
                }
                // Whitespace here would be obs-fold or a space before a name: both rejected.
                _ => return Err(BAD),
            },
            St::TrailerName => match b {
                _ if is_tchar(b) => St::TrailerName,
                b':' => St::TrailerValue,
                _ => return Err(BAD),
            },
            St::TrailerValue => match b {
                b'\r' => St::TrailerLf,
                b'\t' | b' '..=0x7e | 0x80..=0xff => St::TrailerValue,
                _ => return Err(BAD),
            },
            St::TrailerLf if b == b'\n' => St::TrailerStart,
            St::EndLf if b == b'\n' => St::Done,
            St::TrailerLf | St::EndLf => return Err(BAD),
            St::Done => return Err(BAD),
        };
        Ok(())
    }

    // The first byte of an extension is counted here: the state it leaves is not an
    // extension state.
    fn ext_start(&mut self, lim: &ChunkLimits) -> Result<St, Status> {
        self.count_ext(lim)?;
        Ok(St::ExtNameStart)
    }

    fn ext_ws(&mut self, lim: &ChunkLimits) -> Result<St, Status> {
        self.count_ext(lim)?;
        Ok(St::ExtBws)
    }

    fn count_ext(&mut self, lim: &ChunkLimits) -> Result<(), Status> {
        self.ext_bytes += 1;
        if self.ext_bytes > lim.max_ext {
            Err(Status::BAD_REQUEST)
        } else {
            Ok(())
        }
    }
}

fn is_ext_state(st: St) -> bool {
    matches!(
        st,
        St::ExtBws
            | St::ExtNameStart
            | St::ExtName
            | St::ExtNameBws
            | St::ExtValueStart
            | St::ExtToken
            | St::ExtQuoted
            | St::ExtQuotedEscape
            | St::ExtQuotedEnd
    )
}

fn is_trailer_state(st: St) -> bool {
    matches!(
        st,
        St::TrailerStart | St::TrailerName | St::TrailerValue | St::TrailerLf | St::EndLf
    )
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: ChunkLimits = ChunkLimits {
        max_body: 64,
        max_ext: 32,
        max_trailer: 32,
        max_trailers: 2,
    };

    fn whole(input: &[u8]) -> Result<(Vec<u8>, Decoded), Status> {
        let mut out = Vec::new();
        let r = ChunkedDecoder::default().decode(input, &mut out, &LIM)?;
        Ok((out, r))
    }

    fn bytewise(input: &[u8]) -> Result<(Vec<u8>, Decoded), Status> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        for (i, b) in input.iter().enumerate() {
            if let Decoded::Done(n) = d.decode(std::slice::from_ref(b), &mut out, &LIM)? {
                assert_eq!(n, 1);
                return Ok((out, Decoded::Done(i + 1)));
            }
        }
        Ok((out, Decoded::NeedMore))
    }

    fn ok(input: &[u8], body: &[u8]) {
        let want = Ok((body.to_vec(), Decoded::Done(input.len())));
        assert_eq!(whole(input), want, "{:?}", String::from_utf8_lossy(input));
        assert_eq!(
            bytewise(input),
            want,
            "{:?}",
            String::from_utf8_lossy(input)
        );
        let mut extra = input.to_vec();
        extra.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(whole(&extra), want, "trailing bytes are not consumed");
    }

    fn err(input: &[u8], status: Status) {
        assert_eq!(
            whole(input),
            Err(status),
            "{:?}",
            String::from_utf8_lossy(input)
        );
        assert_eq!(
            bytewise(input),
            Err(status),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }

    #[test]
    fn valid_bodies() {
        ok(b"0\r\n\r\n", b"");
        ok(b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n", b"Wikipedia");
        ok(b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789");
        ok(b"a\r\n0123456789\r\n000\r\n\r\n", b"0123456789");
        ok(b"3;a=b;c\r\nabc\r\n0;last\r\n\r\n", b"abc");
        ok(b"3 ; a = \"q \\\" x\" ;b\r\nabc\r\n0\r\n\r\n", b"abc");
        ok(b"3\r\nabc\r\n0\r\nX-T: 1\r\nY:\r\n\r\n", b"abc");
    }

    #[test]
    fn malformed_sizes() {
        err(b"\r\n", Status::BAD_REQUEST);
        err(b"x\r\n", Status::BAD_REQUEST);
        err(b"-1\r\n", Status::BAD_REQUEST);
        err(b"+1\r\n", Status::BAD_REQUEST);
        err(b"0x1\r\n", Status::BAD_REQUEST);
        err(b"1 \r\n", Status::BAD_REQUEST);
        err(b" 1\r\n", Status::BAD_REQUEST);
        err(b"1\n", Status::BAD_REQUEST);
        err(b"1\rx", Status::BAD_REQUEST);
        err(b"fffffffffffffffff\r\n", Status::BAD_REQUEST);
        err(b"0000000000000000000000001\r\n", Status::BAD_REQUEST);
    }

    #[test]
    fn malformed_extensions() {
        err(b"1;\r\n", Status::BAD_REQUEST);
        err(b"1;a b\r\n", Status::BAD_REQUEST);
        err(b"1;a=\r\n", Status::BAD_REQUEST);
        err(b"1;a=\"x\r\n", Status::BAD_REQUEST);
        err(b"1;a=b \r\n", Status::BAD_REQUEST);
        err(b"1;a=\"\x01\"\r\n", Status::BAD_REQUEST);
        err(
            b"1;aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            Status::BAD_REQUEST,
        );
    }

    #[test]
    fn malformed_data_and_trailers() {
        err(b"3\r\nabcd\r\n", Status::BAD_REQUEST);
        err(b"3\r\nabc\n0\r\n\r\n", Status::BAD_REQUEST);
        err(b"3\r\nabc\r0\r\n\r\n", Status::BAD_REQUEST);
        err(b"0\r\n\n", Status::BAD_REQUEST);
        err(b"0\r\nX: 1\n\r\n", Status::BAD_REQUEST);
        err(b"0\r\nX : 1\r\n\r\n", Status::BAD_REQUEST);
        err(b"0\r\n X: 1\r\n\r\n", Status::BAD_REQUEST);
        err(b"0\r\nX: \x00\r\n\r\n", Status::BAD_REQUEST);
        err(
            b"0\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n",
            Status::HEADER_FIELDS_TOO_LARGE,
        );
        err(
            b"0\r\nX: 01234567890123456789012345678901\r\n\r\n",
            Status::HEADER_FIELDS_TOO_LARGE,
        );
    }

    #[test]
    fn body_cap_is_checked_before_the_data() {
        err(b"41\r\n", Status::CONTENT_TOO_LARGE);
        err(
            b"20\r\n01234567890123456789012345678901\r\n21\r\n",
            Status::CONTENT_TOO_LARGE,
        );
        ok(
            b"40\r\n0123456789012345678901234567890101234567890123456789012345678901\r\n0\r\n\r\n",
            b"0123456789012345678901234567890101234567890123456789012345678901",
        );
    }
}
