//! Finds the end of a request head incrementally, across reads, and enforces what httparse does
//! not: CRLF line endings only (a bare LF is a 400), the request-line cap (414, or 501 when the
//! method is what breaks it), the head size cap and the field-line count cap (431).
//!
//! The verdict depends only on the bytes, never on how they were split into reads: every check
//! that "the limit is already exceeded" is made at the same byte position whether the bytes
//! came at once or one by one (the connection fuzz target checks this).

use super::parse::{MAX_METHOD_LEN, is_tchar};
use super::{Status, bytes};

/// Caps applied while scanning.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScanLimits {
    pub max_request_line: usize,
    pub max_head_size: usize,
    pub max_headers: usize,
}

/// `ScanLimits` in the form the scan compares against, computed once per `scan` call: `line`
/// and `head` are the lengths of bytes read at which the request-line cap (the line, its CR,
/// and one byte more) and the head cap (one byte more than the limit) are broken, and `lines`
/// the most lines a head may hold. Below `first_line` (while the request line is read) and
/// `head` (after it), `HeadScan::over_limit` finds no cap broken.
struct Caps {
    line: usize,
    head: usize,
    first_line: usize,
    lines: usize,
}

impl Caps {
    fn new(lim: &ScanLimits) -> Caps {
        let (line, head) = (lim.max_request_line + 2, lim.max_head_size + 1);
        Caps {
            line,
            head,
            first_line: line.min(head),
            lines: lim.max_headers + 1,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// No end yet and no limit broken: read more.
    Incomplete,
    /// The head is the first `n` bytes (its final CRLF CRLF included).
    Complete(usize),
    Error(Status),
}

/// Scan state of one request head; offsets are relative to the first byte of the request.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HeadScan {
    /// Bytes already examined.
    pos: usize,
    /// Start of the line being scanned.
    line_start: usize,
    /// Complete lines seen (the request line and field lines).
    lines: usize,
    /// Length of the request line without its CRLF, once seen.
    request_line: usize,
}

impl HeadScan {
    pub(crate) fn reset(&mut self) {
        *self = HeadScan::default();
    }

    /// Length of the request line (without CRLF); valid once the head is complete.
    pub(crate) fn request_line_len(&self) -> usize {
        self.request_line
    }

    /// True once any byte of the head was examined.
    pub(crate) fn started(&self) -> bool {
        self.pos > 0
    }

    /// Scans `data` (the request so far, from its first byte; never shorter than on the
    /// previous call) for the end of the head.
    // Once per request; LLVM left it out of Session::process in the cdylib (callgrind).
    #[inline(always)]
    pub(crate) fn scan(&mut self, data: &[u8], lim: &ScanLimits) -> Scan {
        // A block at a time: one mask gives every LF of the block (see `bytes`).
        let caps = Caps::new(lim);
        let mut at = self.pos;
        while at < data.len() {
            let next = data.len().min(at + bytes::BLOCK);
            let mut lfs = bytes::match_block(b'\n', &data[at..next]);
            while lfs != 0 {
                let lf = at + lfs.trailing_zeros() as usize;
                lfs &= lfs - 1;
                if let Some(verdict) = self.line_end(data, lf, &caps) {
                    return verdict;
                }
            }
            at = next;
        }
        self.pos = data.len();
        match self.over_limit(data.len(), &caps) {
            Some(status) => Scan::Error(self.in_method(data, status, &caps)),
            None => Scan::Incomplete,
        }
    }

    /// Steps past the line that the LF at `lf` ends. A verdict when that ends the head or breaks
    /// a rule.
    #[inline(always)]
    fn line_end(&mut self, data: &[u8], lf: usize, caps: &Caps) -> Option<Scan> {
        // The limits broken by the bytes before this LF win, exactly as if the read had ended
        // just before it. One comparison for most lines (see `Caps`).
        let below = if self.lines == 0 {
            caps.first_line
        } else {
            caps.head
        };
        if lf >= below
            && let Some(status) = self.over_limit(lf, caps)
        {
            return Some(Scan::Error(self.in_method(data, status, caps)));
        }
        if lf == 0 || data[lf - 1] != b'\r' {
            return Some(Scan::Error(Status::BAD_REQUEST));
        }
        self.pos = lf + 1;
        if lf - self.line_start == 1 {
            // An empty line: the head ends here. (The request line is never empty: the caller
            // strips the empty lines that may precede it.)
            if lf + 1 >= caps.head {
                return Some(Scan::Error(Status::HEADER_FIELDS_TOO_LARGE));
            }
            return Some(Scan::Complete(lf + 1));
        }
        if self.lines == 0 {
            self.request_line = lf - 1;
        }
        self.line_start = lf + 1;
        self.lines += 1;
        if self.lines > caps.lines {
            return Some(Scan::Error(Status::HEADER_FIELDS_TOO_LARGE));
        }
        None
    }

    /// The answer to a cap broken (`status`): 501 instead when the request line broke it inside
    /// a method too long to implement (`parse::MAX_METHOD_LEN`, RFC 9110 §9.1): one longer
    /// than that, or than the request-line cap. Only the bytes before the cap was broken are
    /// looked at (at most `MAX_METHOD_LEN + 1` of the line, and no more than the line cap
    /// plus one), so the verdict does not depend on how the bytes were split into reads.
    #[cold]
    #[inline(never)]
    fn in_method(&self, data: &[u8], status: Status, caps: &Caps) -> Status {
        let seen = (MAX_METHOD_LEN + 1).min(caps.line - 1).min(data.len());
        if self.lines == 0 && data[..seen].iter().all(|&b| is_tchar(b)) {
            Status::NOT_IMPLEMENTED
        } else {
            status
        }
    }

    /// The cap already broken by `len` bytes with no head end among them, if any. When both
    /// caps are broken, the one broken at the earlier byte wins (414 on a tie).
    fn over_limit(&self, len: usize, caps: &Caps) -> Option<Status> {
        if self.lines == 0 && len >= caps.line && caps.line <= caps.head {
            return Some(Status::URI_TOO_LONG);
        }
        if len >= caps.head {
            return Some(Status::HEADER_FIELDS_TOO_LARGE);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: ScanLimits = ScanLimits {
        max_request_line: 20,
        max_head_size: 60,
        max_headers: 3,
    };

    fn whole(data: &[u8]) -> Scan {
        HeadScan::default().scan(data, &LIM)
    }

    fn bytewise(data: &[u8]) -> Scan {
        let mut s = HeadScan::default();
        for n in 1..=data.len() {
            match s.scan(&data[..n], &LIM) {
                Scan::Incomplete => {}
                other => return other,
            }
        }
        Scan::Incomplete
    }

    #[test]
    fn verdicts_do_not_depend_on_splits() {
        let cases: &[(&[u8], Scan)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest", Scan::Complete(27)),
            (b"GET / HTTP/1.1\r\nHost: a\r\n", Scan::Incomplete),
            (
                b"GET / HTTP/1.1\nHost: a\r\n\r\n",
                Scan::Error(Status::BAD_REQUEST),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\n\r\n",
                Scan::Error(Status::BAD_REQUEST),
            ),
            (
                b"GET /aaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n",
                Scan::Error(Status::URI_TOO_LONG),
            ),
            (
                b"GET /aaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\n",
                Scan::Error(Status::URI_TOO_LONG),
            ),
            (
                b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n\r\n",
                Scan::Error(Status::HEADER_FIELDS_TOO_LARGE),
            ),
            (
                b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n",
                Scan::Complete(36),
            ),
            (
                b"GET / HTTP/1.1\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n\r\n",
                Scan::Error(Status::HEADER_FIELDS_TOO_LARGE),
            ),
        ];
        for (data, want) in cases {
            assert_eq!(&whole(data), want, "{:?}", String::from_utf8_lossy(data));
            assert_eq!(&bytewise(data), want, "{:?}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn a_method_that_breaks_the_line_cap_is_501() {
        let nine = Status::NOT_IMPLEMENTED;
        // LIM's line cap is 20, below MAX_METHOD_LEN: a method longer than the cap is 501,
        // one that fits is not, whatever comes after it.
        let cases: Vec<(String, Scan)> = vec![
            (
                format!("{} / HTTP/1.1\r\n\r\n", "M".repeat(25)),
                Scan::Error(nine),
            ),
            (
                format!("{} / HTTP/1.1\r\n\r\n", "M".repeat(21)),
                Scan::Error(nine),
            ),
            ("M".repeat(40), Scan::Error(nine)),
            (
                format!("{} / HTTP/1.1\r\n\r\n", "M".repeat(20)),
                Scan::Error(Status::URI_TOO_LONG),
            ),
            (
                // Not a method: the line's cap speaks.
                format!("MM({} / HTTP/1.1\r\n\r\n", "M".repeat(22)),
                Scan::Error(Status::URI_TOO_LONG),
            ),
        ];
        for (data, want) in &cases {
            assert_eq!(&whole(data.as_bytes()), want, "{data:?}");
            assert_eq!(&bytewise(data.as_bytes()), want, "{data:?}");
        }
        // A line cap above MAX_METHOD_LEN: the method's own limit decides.
        let lim = ScanLimits {
            max_request_line: 64,
            max_head_size: 200,
            max_headers: 3,
        };
        let long_target = "a".repeat(80);
        for (method_len, want) in [
            (MAX_METHOD_LEN + 1, Status::NOT_IMPLEMENTED),
            (MAX_METHOD_LEN, Status::URI_TOO_LONG),
        ] {
            let data = format!("{} /{long_target} HTTP/1.1\r\n\r\n", "M".repeat(method_len));
            let mut s = HeadScan::default();
            assert_eq!(s.scan(data.as_bytes(), &lim), Scan::Error(want), "{data:?}");
            let mut s = HeadScan::default();
            let got = (1..=data.len())
                .map(|n| s.scan(&data.as_bytes()[..n], &lim))
                .find(|v| *v != Scan::Incomplete);
            assert_eq!(got, Some(Scan::Error(want)), "{data:?}");
        }
        // Within the caps, the method's length is left to `parse::analyze`.
        let data = format!("{} / HTTP/1.1\r\n\r\n", "M".repeat(MAX_METHOD_LEN + 1));
        assert!(matches!(
            HeadScan::default().scan(data.as_bytes(), &lim),
            Scan::Complete(_)
        ));
    }

    #[test]
    fn no_cap_is_broken_below_the_quick_thresholds() {
        for (line, head) in [(20, 60), (60, 20), (30, 30)] {
            let lim = ScanLimits {
                max_request_line: line,
                max_head_size: head,
                max_headers: 3,
            };
            let caps = Caps::new(&lim);
            for lines in [0, 1] {
                let scan = HeadScan {
                    lines,
                    ..HeadScan::default()
                };
                let below = if lines == 0 {
                    caps.first_line
                } else {
                    caps.head
                };
                for len in 0..below {
                    assert_eq!(
                        scan.over_limit(len, &caps),
                        None,
                        "{line}/{head}, {lines} lines, {len}"
                    );
                }
                assert!(
                    scan.over_limit(below, &caps).is_some(),
                    "{line}/{head}, {lines} lines"
                );
            }
        }
    }

    #[test]
    fn request_line_exactly_at_the_cap_is_accepted() {
        let line = format!("GET /{} HTTP/1.1", "a".repeat(20 - 14));
        assert_eq!(line.len(), 20);
        let data = format!("{line}\r\n\r\n");
        assert_eq!(whole(data.as_bytes()), Scan::Complete(24));
        assert_eq!(bytewise(data.as_bytes()), Scan::Complete(24));
    }

    #[test]
    fn head_exactly_at_the_cap_is_accepted() {
        let pad = "x".repeat(60 - 16 - 7);
        let data = format!("GET / HTTP/1.1\r\nh: {pad}\r\n\r\n");
        assert_eq!(data.len(), 60);
        assert_eq!(whole(data.as_bytes()), Scan::Complete(60));
        let data = format!("GET / HTTP/1.1\r\nh: {pad}x\r\n\r\n");
        assert_eq!(
            whole(data.as_bytes()),
            Scan::Error(Status::HEADER_FIELDS_TOO_LARGE)
        );
        assert_eq!(
            bytewise(data.as_bytes()),
            Scan::Error(Status::HEADER_FIELDS_TOO_LARGE)
        );
    }
}
