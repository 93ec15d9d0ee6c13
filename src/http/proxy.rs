//! The PROXY protocol header (versions 1 and 2) that a load balancer sends before a
//! connection's first byte, as HAProxy's specification (doc/proxy-protocol.txt, "the spec"
//! below) defines it. Pure: bytes in, a verdict out. `server.rs` peeks at the socket, asks
//! [`parse`], and consumes exactly the header's bytes, so whatever comes next (HTTP, or a TLS
//! handshake) starts on the socket where the header ended.
//!
//! Strict on purpose: a header is the word of whoever connects, and the spec (§2.1, §2.2)
//! asks a receiver to drop any sequence that does not match it exactly.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes every version 2 header starts with (spec §2.2).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 line, CRLF included (spec §2.1: "PROXY UNKNOWN" with two full IPv6
/// addresses and ports).
pub const V1_MAX_LEN: usize = 107;
/// The most bytes a version 2 header may announce after its fixed 16: addresses and TLVs. The
/// spec allows 65,535; real senders stay far below (HAProxy's TLS TLVs with a client's CN, an
/// AWS endpoint id, a unique id of at most 128 bytes), and a cap keeps the peek buffer small.
pub const V2_MAX_PAYLOAD: usize = 4096;
/// The longest header of either version this parser accepts.
pub const MAX_HEADER_LEN: usize = 16 + V2_MAX_PAYLOAD;

/// TLV types the spec registers (§2.2); any other type is passed on as it came.
pub const PP2_TYPE_ALPN: u8 = 0x01;
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
pub const PP2_TYPE_CRC32C: u8 = 0x03;
pub const PP2_TYPE_NOOP: u8 = 0x04;
pub const PP2_TYPE_UNIQUE_ID: u8 = 0x05;
pub const PP2_TYPE_SSL: u8 = 0x20;
pub const PP2_TYPE_NETNS: u8 = 0x30;

/// Longest PP2_TYPE_UNIQUE_ID value (spec §2.2.5).
const MAX_UNIQUE_ID: usize = 128;
/// AF_UNIX addresses are this long each in a version 2 header (spec §2.2).
const UNIX_ADDR_LEN: usize = 108;

/// What the bytes seen so far amount to.
#[derive(Debug)]
pub enum Parse {
    /// A valid beginning of a header: wait for more bytes.
    Incomplete,
    /// A whole, valid header of this many bytes.
    Complete(ProxyHeader, usize),
    /// Not a valid header, with the reason (for the log).
    Invalid(&'static str),
}

/// Whether the connection was relayed for a client (`Proxy`) or opened by the balancer for
/// itself, such as a health check (`Local`: version 2's LOCAL command, or version 1's
/// `UNKNOWN`); a `Local` header carries no addresses, and the socket's own peer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Local,
    Proxy,
}

/// An address a header carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyAddr<'a> {
    /// TCP or UDP over IPv4 or IPv6.
    Inet(SocketAddr),
    /// An AF_UNIX address: the path's bytes with the trailing NULs of the 108-byte field
    /// removed (an abstract name keeps its leading NUL).
    Unix(&'a [u8]),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Addrs {
    /// LOCAL, UNKNOWN or AF_UNSPEC: the spec says to ignore any address information.
    None,
    Inet {
        src: SocketAddr,
        dst: SocketAddr,
    },
    /// Both 108-byte fields, source first.
    Unix(Box<[u8; 2 * UNIX_ADDR_LEN]>),
}

/// A parsed PROXY protocol header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    version: u8,
    command: Command,
    addrs: Addrs,
    /// The TLV area of a version 2 header, every TLV checked to fit.
    tlvs: Box<[u8]>,
}

impl ProxyHeader {
    /// 1 (text) or 2 (binary).
    pub fn version(&self) -> u8 {
        self.version
    }

    pub fn command(&self) -> Command {
        self.command
    }

    /// The client's address, as the balancer saw it; `None` for a `Local` header or an
    /// AF_UNSPEC one.
    pub fn source(&self) -> Option<ProxyAddr<'_>> {
        match &self.addrs {
            Addrs::None => None,
            Addrs::Inet { src, .. } => Some(ProxyAddr::Inet(*src)),
            Addrs::Unix(both) => Some(ProxyAddr::Unix(unix_path(&both[..UNIX_ADDR_LEN]))),
        }
    }

    /// The address the client connected to (the balancer's); `None` as for `source`.
    pub fn destination(&self) -> Option<ProxyAddr<'_>> {
        match &self.addrs {
            Addrs::None => None,
            Addrs::Inet { dst, .. } => Some(ProxyAddr::Inet(*dst)),
            Addrs::Unix(both) => Some(ProxyAddr::Unix(unix_path(&both[UNIX_ADDR_LEN..]))),
        }
    }

    /// The client's IP address and port, when the header carries one.
    pub fn source_inet(&self) -> Option<SocketAddr> {
        match self.addrs {
            Addrs::Inet { src, .. } => Some(src),
            _ => None,
        }
    }

    /// Every TLV of a version 2 header, in the order received (none for version 1).
    pub fn tlvs(&self) -> Tlvs<'_> {
        Tlvs { rest: &self.tlvs }
    }

    /// The value of the first TLV of type `kind`.
    pub fn tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs().find(|t| t.kind == kind).map(|t| t.value)
    }
}

fn unix_path(field: &[u8]) -> &[u8] {
    let end = field.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    &field[..end]
}

/// One TLV of a version 2 header (spec §2.2: type, 16-bit big-endian length, value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub kind: u8,
    pub value: &'a [u8],
}

/// The TLVs of a header; see [`ProxyHeader::tlvs`].
#[derive(Clone, Debug)]
pub struct Tlvs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Tlvs<'a> {
    type Item = Tlv<'a>;

    fn next(&mut self) -> Option<Tlv<'a>> {
        // The area was checked when parsed: every TLV fits.
        let (&kind, after) = self.rest.split_first()?;
        let len = usize::from(u16::from_be_bytes([*after.first()?, *after.get(1)?]));
        let value = after.get(2..2 + len)?;
        self.rest = &after[2 + len..];
        Some(Tlv { kind, value })
    }
}

/// Reads a header at the start of `input` (which holds what arrived so far).
pub fn parse(input: &[u8]) -> Parse {
    match input.first() {
        None => Parse::Incomplete,
        Some(b'\r') => parse_v2(input),
        Some(b'P') => parse_v1(input),
        // Spec §2.2 ("identifying the protocol version"): anything else is not this protocol,
        // and the header is required, never guessed (§1).
        Some(_) => Parse::Invalid("the connection does not start with a PROXY protocol header"),
    }
}

// ---- Version 1 (spec §2.1) -------------------------------------------------------------------

fn parse_v1(input: &[u8]) -> Parse {
    const PREFIX: &[u8] = b"PROXY ";
    let n = input.len().min(PREFIX.len());
    if input[..n] != PREFIX[..n] {
        return Parse::Invalid("not a PROXY protocol header (bad version 1 prefix)");
    }
    // The protocol word is judged as it arrives, so that another protocol is dropped at once.
    if input.len() > PREFIX.len() {
        let word = &input[PREFIX.len()..input.len().min(PREFIX.len() + 7)];
        let known = [&b"TCP4 "[..], b"TCP6 ", b"UNKNOWN"].iter().any(|w| {
            let n = word.len().min(w.len());
            word[..n] == w[..n]
        });
        if !known {
            return Parse::Invalid("version 1 header with an unknown protocol");
        }
    }
    // The whole line first: §2.1 asks to wait for the CRLF before decoding addresses, and
    // never to take a lone CR or LF for it.
    let window = &input[..input.len().min(V1_MAX_LEN)];
    let mut line_len = None;
    for (i, &b) in window.iter().enumerate() {
        match b {
            b'\n' => return Parse::Invalid("version 1 header with a bare LF"),
            b'\r' => match window.get(i + 1) {
                Some(b'\n') => {
                    line_len = Some(i);
                    break;
                }
                Some(_) => return Parse::Invalid("version 1 header with a bare CR"),
                None if i + 1 < V1_MAX_LEN => return Parse::Incomplete,
                None => return Parse::Invalid("version 1 header longer than 107 bytes"),
            },
            _ => {}
        }
    }
    let Some(line_len) = line_len else {
        if window.len() == V1_MAX_LEN {
            return Parse::Invalid("version 1 header longer than 107 bytes");
        }
        return Parse::Incomplete;
    };
    let line = &input[PREFIX.len()..line_len];
    let consumed = line_len + 2;
    let header = |command, addrs| ProxyHeader {
        version: 1,
        command,
        addrs,
        tlvs: Box::default(),
    };
    if let Some(rest) = line.strip_prefix(b"UNKNOWN") {
        // §2.1: for UNKNOWN the receiver ignores the rest of the line, which, if present,
        // follows one space.
        if !rest.is_empty() && rest[0] != b' ' {
            return Parse::Invalid("version 1 header with an unknown protocol");
        }
        return Parse::Complete(header(Command::Local, Addrs::None), consumed);
    }
    let (v6, fields) = if let Some(f) = line.strip_prefix(b"TCP4 ") {
        (false, f)
    } else if let Some(f) = line.strip_prefix(b"TCP6 ") {
        (true, f)
    } else {
        return Parse::Invalid("version 1 header with an unknown protocol");
    };
    // Exactly one space between fields (§2.1): splitting on each space, an empty field or a
    // fifth one is a mistake.
    let mut parts = fields.split(|&b| b == b' ');
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Parse::Invalid("version 1 header without exactly four address fields");
    };
    let (Some(src), Some(dst)) = (v1_ip(src, v6), v1_ip(dst, v6)) else {
        return Parse::Invalid("version 1 header with a bad address");
    };
    let (Some(sport), Some(dport)) = (v1_port(sport), v1_port(dport)) else {
        return Parse::Invalid("version 1 header with a bad port");
    };
    let addrs = Addrs::Inet {
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
    };
    Parse::Complete(header(Command::Proxy, addrs), consumed)
}

/// An address of the family the line announced. std's parsers match §2.1: four decimal
/// numbers without leading zeros for IPv4; hexadecimal groups with at most one `::` for IPv6
/// (with the dotted tail that inet_ntop writes for IPv4-mapped addresses), no zone.
fn v1_ip(field: &[u8], v6: bool) -> Option<IpAddr> {
    let text = std::str::from_utf8(field).ok()?;
    if v6 {
        text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

/// A port: decimal, 0 to 65535, no leading zero (§2.1).
fn v1_port(field: &[u8]) -> Option<u16> {
    if field.is_empty() || field.len() > 5 || (field[0] == b'0' && field.len() > 1) {
        return None;
    }
    let mut v: u32 = 0;
    for &b in field {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(b - b'0');
    }
    u16::try_from(v).ok()
}

// ---- Version 2 (spec §2.2) -------------------------------------------------------------------

fn parse_v2(input: &[u8]) -> Parse {
    let n = input.len().min(V2_SIGNATURE.len());
    if input[..n] != V2_SIGNATURE[..n] {
        return Parse::Invalid("not a PROXY protocol header (bad version 2 signature)");
    }
    // Each fixed byte is judged as soon as it arrives, so a wrong header is dropped at once
    // rather than at the deadline.
    let Some(&ver_cmd) = input.get(12) else {
        return Parse::Incomplete;
    };
    if ver_cmd >> 4 != 2 {
        return Parse::Invalid("version 2 signature with another version");
    }
    let command = match ver_cmd & 0x0f {
        0x0 => Command::Local,
        0x1 => Command::Proxy,
        // §2.2: "Receivers must drop connections presenting unexpected values here."
        _ => return Parse::Invalid("version 2 header with an unknown command"),
    };
    let Some(&fam) = input.get(13) else {
        return Parse::Incomplete;
    };
    // §2.2 lists the valid family and protocol bytes; others "must be rejected as invalid".
    // LOCAL is the exception: its family "is ignored" and its block discarded whole.
    let addr_len = match fam {
        0x00 => Some(0),
        0x11 | 0x12 => Some(12),
        0x21 | 0x22 => Some(36),
        0x31 | 0x32 => Some(2 * UNIX_ADDR_LEN),
        _ => None,
    };
    if addr_len.is_none() && command == Command::Proxy {
        return Parse::Invalid("version 2 header with an unknown address family or protocol");
    }
    let (Some(&hi), Some(&lo)) = (input.get(14), input.get(15)) else {
        return Parse::Incomplete;
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > V2_MAX_PAYLOAD {
        return Parse::Invalid("version 2 header longer than the 4096-byte cap");
    }
    let total = 16 + len;
    if input.len() < total {
        return Parse::Incomplete;
    }
    let header = &input[..total];
    let block = &header[16..];
    let Some(addr_len) = addr_len else {
        // LOCAL with a family the spec does not list: the block is skipped unread.
        return Parse::Complete(
            ProxyHeader {
                version: 2,
                command,
                addrs: Addrs::None,
                tlvs: Box::default(),
            },
            total,
        );
    };
    if len < addr_len {
        return Parse::Invalid("version 2 header shorter than its addresses");
    }
    let (addr, tlvs) = block.split_at(addr_len);
    if let Err(why) = check_tlvs(header, 16 + addr_len) {
        return Parse::Invalid(why);
    }
    // §2.2: LOCAL and AF_UNSPEC keep the real connection endpoints; the addresses of a LOCAL
    // header are discarded, even when its family is a known one.
    let addrs = if command == Command::Local {
        Addrs::None
    } else {
        match fam >> 4 {
            0x1 => {
                let ip = |at: usize| IpAddr::V4(Ipv4Addr::from(be32(&addr[at..])));
                Addrs::Inet {
                    src: SocketAddr::new(ip(0), be16(&addr[8..])),
                    dst: SocketAddr::new(ip(4), be16(&addr[10..])),
                }
            }
            0x2 => {
                let ip = |at: usize| IpAddr::V6(Ipv6Addr::from(be128(&addr[at..])));
                Addrs::Inet {
                    src: SocketAddr::new(ip(0), be16(&addr[32..])),
                    dst: SocketAddr::new(ip(16), be16(&addr[34..])),
                }
            }
            0x3 => {
                let mut both = Box::new([0u8; 2 * UNIX_ADDR_LEN]);
                both.copy_from_slice(addr);
                Addrs::Unix(both)
            }
            _ => Addrs::None,
        }
    };
    Parse::Complete(
        ProxyHeader {
            version: 2,
            command,
            addrs,
            tlvs: tlvs.into(),
        },
        total,
    )
}

/// Checks the TLVs of `header` (a whole version 2 header), which start at `from`: each fits,
/// the area ends on a TLV's end, the registered types have the sizes the spec gives, and a
/// PP2_TYPE_CRC32C matches the header.
fn check_tlvs(header: &[u8], from: usize) -> Result<(), &'static str> {
    let mut at = from;
    let mut crc_at = None;
    while at < header.len() {
        if header.len() - at < 3 {
            return Err("version 2 header with a truncated TLV");
        }
        let kind = header[at];
        let len = usize::from(be16(&header[at + 1..]));
        let value_at = at + 3;
        if header.len() - value_at < len {
            return Err("version 2 header with a TLV longer than the header");
        }
        match kind {
            PP2_TYPE_CRC32C => {
                if len != 4 {
                    return Err("version 2 header with a CRC32C TLV that is not 4 bytes");
                }
                if crc_at.replace(value_at).is_some() {
                    return Err("version 2 header with two CRC32C TLVs");
                }
            }
            PP2_TYPE_UNIQUE_ID if len > MAX_UNIQUE_ID => {
                return Err("version 2 header with a unique id over 128 bytes");
            }
            _ => {}
        }
        at = value_at + len;
    }
    // §2.2.3: the checksum covers the whole header with its own field read as zeros.
    if let Some(pos) = crc_at {
        let sent = be32(&header[pos..]);
        let crc = crc32c_update(!0, &header[..pos]);
        let crc = crc32c_update(crc, &[0; 4]);
        let crc = !crc32c_update(crc, &header[pos + 4..]);
        if crc != sent {
            return Err("version 2 header whose CRC32C does not match");
        }
    }
    Ok(())
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be128(b: &[u8]) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    u128::from_be_bytes(a)
}

// ---- CRC32C (Castagnoli), as RFC 4960 Appendix B defines it (spec §2.2.3) -------------------

/// The reflected polynomial 0x1EDC6F41.
const CRC32C_POLY: u32 = 0x82F6_3B78;

/// One 256-entry table, built at compile time: headers are short and checked once per
/// connection, so a byte-at-a-time loop is enough (and needs no dependency).
static CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ CRC32C_POLY
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// Feeds `data` to a running CRC (start with `!0`, finish with `!`).
fn crc32c_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// The CRC32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    !crc32c_update(!0, data)
}

impl fmt::Display for ProxyAddr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyAddr::Inet(a) => a.fmt(f),
            ProxyAddr::Unix(p) => write!(f, "unix:{}", String::from_utf8_lossy(p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(ver_cmd);
        h.push(fam);
        h.extend_from_slice(&(block.len() as u16).to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut t = vec![kind];
        t.extend_from_slice(&(value.len() as u16).to_be_bytes());
        t.extend_from_slice(value);
        t
    }

    fn inet4_block() -> Vec<u8> {
        let mut b = vec![203, 0, 113, 7, 192, 0, 2, 1];
        b.extend_from_slice(&51234u16.to_be_bytes());
        b.extend_from_slice(&443u16.to_be_bytes());
        b
    }

    /// A version 2 header for TCP over IPv4 with `tlvs` and a correct CRC32C TLV at the end.
    fn with_crc(tlvs: &[u8]) -> Vec<u8> {
        let mut block = inet4_block();
        block.extend_from_slice(tlvs);
        block.extend_from_slice(&tlv(PP2_TYPE_CRC32C, &[0; 4]));
        let mut h = v2(0x21, 0x11, &block);
        let crc = crc32c(&h);
        let n = h.len();
        h[n - 4..].copy_from_slice(&crc.to_be_bytes());
        h
    }

    fn complete(input: &[u8]) -> (ProxyHeader, usize) {
        match parse(input) {
            Parse::Complete(h, n) => (h, n),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    fn invalid(input: &[u8]) -> &'static str {
        match parse(input) {
            Parse::Invalid(why) => why,
            other => panic!(
                "{:?} was accepted: {other:?}",
                String::from_utf8_lossy(input)
            ),
        }
    }

    /// Every proper prefix of a valid header is Incomplete, never Invalid.
    fn prefixes_wait(input: &[u8]) {
        for n in 0..input.len() {
            assert!(
                matches!(parse(&input[..n]), Parse::Incomplete),
                "prefix of {n} bytes of {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn crc32c_matches_rfc_3720_vectors() {
        // RFC 3720 §B.4 test vectors (the same CRC as RFC 4960's).
        assert_eq!(crc32c(&[0; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xff; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        let (h, n) = complete(line);
        assert_eq!(n, 47);
        assert_eq!((h.version(), h.command()), (1, Command::Proxy));
        assert_eq!(
            h.source(),
            Some(ProxyAddr::Inet("192.168.0.1:56324".parse().unwrap()))
        );
        assert_eq!(
            h.destination(),
            Some(ProxyAddr::Inet("192.168.0.11:443".parse().unwrap()))
        );
        assert_eq!(h.tlvs().count(), 0);
        prefixes_wait(&line[..n]);

        let line = b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.1 65535 0\r\n";
        let (h, n) = complete(line);
        assert_eq!(n, line.len());
        assert_eq!(
            h.source_inet(),
            Some("[2001:db8::1]:65535".parse().unwrap())
        );
        assert_eq!(
            h.destination(),
            Some(ProxyAddr::Inet("[::ffff:192.0.2.1]:0".parse().unwrap()))
        );
        prefixes_wait(line);
    }

    #[test]
    fn v1_longest_lines_fit() {
        let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let tcp6 = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
        assert_eq!(tcp6.len(), 104);
        assert_eq!(complete(tcp6.as_bytes()).1, 104);
        let unknown = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
        assert_eq!(unknown.len(), V1_MAX_LEN);
        let (h, n) = complete(unknown.as_bytes());
        assert_eq!((n, h.command(), h.source()), (107, Command::Local, None));
        let (h, n) = complete(b"PROXY UNKNOWN\r\n");
        assert_eq!((n, h.command(), h.source()), (15, Command::Local, None));
        // UNKNOWN's rest of line is ignored, whatever it holds (§2.1).
        assert_eq!(complete(b"PROXY UNKNOWN whatever \x01 it says\r\n").1, 34);
    }

    #[test]
    fn v1_rejects_what_the_spec_forbids() {
        let cases: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n",
            b"PROXI TCP4",
            b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
            b"PROXY TCP6 1::2::3 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2x\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 100000 2\r\n",
        ];
        for c in cases {
            invalid(c);
        }
    }

    #[test]
    fn v1_needs_its_crlf_within_107_bytes() {
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_LEN, b'x');
        assert!(matches!(parse(&long[..106]), Parse::Incomplete));
        assert_eq!(invalid(&long), "version 1 header longer than 107 bytes");
        // A CR as the 107th byte leaves no room for the LF.
        long[V1_MAX_LEN - 1] = b'\r';
        assert_eq!(invalid(&long), "version 1 header longer than 107 bytes");
        long[V1_MAX_LEN - 2] = b'\r';
        long[V1_MAX_LEN - 1] = b'\n';
        assert_eq!(complete(&long).1, V1_MAX_LEN);
    }

    #[test]
    fn v2_inet4_with_tlvs() {
        let mut block = inet4_block();
        block.extend_from_slice(&tlv(PP2_TYPE_AUTHORITY, b"example.test"));
        block.extend_from_slice(&tlv(0xE0, b""));
        block.extend_from_slice(&tlv(PP2_TYPE_ALPN, b"h2"));
        let mut input = v2(0x21, 0x11, &block);
        let len = input.len();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (h, n) = complete(&input);
        assert_eq!(n, len);
        assert_eq!((h.version(), h.command()), (2, Command::Proxy));
        assert_eq!(h.source_inet(), Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(
            h.destination(),
            Some(ProxyAddr::Inet("192.0.2.1:443".parse().unwrap()))
        );
        let all: Vec<(u8, &[u8])> = h.tlvs().map(|t| (t.kind, t.value)).collect();
        assert_eq!(
            all,
            [
                (PP2_TYPE_AUTHORITY, &b"example.test"[..]),
                (0xE0, b""),
                (PP2_TYPE_ALPN, b"h2")
            ]
        );
        assert_eq!(h.tlv(PP2_TYPE_ALPN), Some(&b"h2"[..]));
        assert_eq!(h.tlv(PP2_TYPE_NETNS), None);
        prefixes_wait(&input[..n]);
    }

    #[test]
    fn v2_inet6_unix_and_datagrams() {
        let mut block = Vec::new();
        block.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&[0xc8, 0x22, 0x01, 0xbb]);
        for fam in [0x21, 0x22] {
            let (h, _) = complete(&v2(0x21, fam, &block));
            assert_eq!(
                h.source_inet(),
                Some("[2001:db8::7]:51234".parse().unwrap())
            );
        }
        let mut unix = vec![0u8; 216];
        unix[..9].copy_from_slice(b"/run/a.sk");
        unix[108..113].copy_from_slice(b"\0abst");
        let (h, n) = complete(&v2(0x21, 0x31, &unix));
        assert_eq!(n, 16 + 216);
        assert_eq!(h.source(), Some(ProxyAddr::Unix(b"/run/a.sk")));
        assert_eq!(h.destination(), Some(ProxyAddr::Unix(b"\0abst")));
        assert_eq!(h.source_inet(), None);
    }

    #[test]
    fn v2_local_and_unspec_keep_the_socket_addresses() {
        let (h, n) = complete(&v2(0x20, 0x00, &[]));
        assert_eq!((n, h.command(), h.source()), (16, Command::Local, None));
        // A LOCAL header's addresses are discarded, its length still honoured (§2.2).
        let (h, n) = complete(&v2(0x20, 0x11, &inet4_block()));
        assert_eq!((n, h.command(), h.source()), (28, Command::Local, None));
        // LOCAL ignores the family byte, even one the spec does not list.
        let (h, n) = complete(&v2(0x20, 0x77, b"opaque"));
        assert_eq!((n, h.command(), h.tlvs().count()), (22, Command::Local, 0));
        // PROXY over AF_UNSPEC: accepted, addresses ignored, TLVs kept.
        let (h, _) = complete(&v2(0x21, 0x00, &tlv(0xE1, b"x")));
        assert_eq!((h.command(), h.source()), (Command::Proxy, None));
        assert_eq!(h.tlv(0xE1), Some(&b"x"[..]));
    }

    #[test]
    fn v2_rejects_what_the_spec_forbids() {
        let block = inet4_block();
        let mut bad_sig = v2(0x21, 0x11, &block);
        bad_sig[7] = b'q';
        assert!(invalid(&bad_sig).contains("signature"));
        assert!(invalid(&v2(0x11, 0x11, &block)).contains("version"));
        assert!(invalid(&v2(0x31, 0x11, &block)).contains("version"));
        assert!(invalid(&v2(0x22, 0x11, &block)).contains("command"));
        assert!(invalid(&v2(0x2f, 0x11, &block)).contains("command"));
        for fam in [0x01, 0x02, 0x10, 0x13, 0x20, 0x30, 0x33, 0x41, 0xff] {
            assert!(
                invalid(&v2(0x21, fam, &block)).contains("family"),
                "{fam:#x}"
            );
        }
        assert!(invalid(&v2(0x21, 0x11, &block[..11])).contains("shorter"));
        assert!(invalid(&v2(0x21, 0x21, &block)).contains("shorter"));
        assert!(invalid(&v2(0x21, 0x31, &[0; 215])).contains("shorter"));
        // Judged at the first wrong byte, not at the deadline.
        assert!(matches!(
            parse(b"\r\n\r\n\0\r\nQUIT\n\x22"),
            Parse::Invalid(_)
        ));
        assert!(matches!(
            parse(b"\r\n\r\n\0\r\nQUIT\n\x21\x44"),
            Parse::Invalid(_)
        ));
        assert!(matches!(parse(b"\r\nGET"), Parse::Invalid(_)));
    }

    #[test]
    fn v2_tlvs_must_fit_exactly() {
        let mut block = inet4_block();
        block.extend_from_slice(&[0xE0, 0x00]);
        assert!(invalid(&v2(0x21, 0x11, &block)).contains("truncated TLV"));
        let mut block = inet4_block();
        block.extend_from_slice(&[0xE0, 0x00, 0x05, b'a', b'b']);
        assert!(invalid(&v2(0x21, 0x11, &block)).contains("longer than the header"));
        let mut block = inet4_block();
        block.extend_from_slice(&tlv(PP2_TYPE_UNIQUE_ID, &[7; 129]));
        assert!(invalid(&v2(0x21, 0x11, &block)).contains("unique id"));
        let mut block = inet4_block();
        block.extend_from_slice(&tlv(PP2_TYPE_UNIQUE_ID, &[7; 128]));
        block.extend_from_slice(&tlv(PP2_TYPE_NOOP, &[0; 5]));
        let (h, _) = complete(&v2(0x21, 0x11, &block));
        assert_eq!(h.tlv(PP2_TYPE_UNIQUE_ID).map(<[u8]>::len), Some(128));
    }

    #[test]
    fn v2_checks_its_crc32c() {
        let good = with_crc(&tlv(PP2_TYPE_AUTHORITY, b"a.test"));
        let (h, n) = complete(&good);
        assert_eq!(n, good.len());
        assert_eq!(h.tlv(PP2_TYPE_AUTHORITY), Some(&b"a.test"[..]));
        // A flipped bit anywhere in the header, the checksum included, is caught; except in
        // the CRC TLV's own type byte, which makes it another TLV and the header unchecked.
        let crc_type_at = good.len() - 7;
        for i in (0..good.len()).filter(|&i| i != crc_type_at) {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            if let Parse::Complete(..) = parse(&bad) {
                panic!("a flip at byte {i} passed");
            }
        }
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 1] ^= 0x80;
        assert!(invalid(&bad).contains("CRC32C"));
        // The CRC must be 4 bytes and only once.
        let mut block = inet4_block();
        block.extend_from_slice(&tlv(PP2_TYPE_CRC32C, &[0; 3]));
        assert!(invalid(&v2(0x21, 0x11, &block)).contains("4 bytes"));
        let twice = with_crc(&tlv(PP2_TYPE_CRC32C, &[0; 4]));
        assert!(invalid(&twice).contains("two CRC32C"));
    }

    #[test]
    fn v2_headers_haproxy_sent() {
        // HAProxy 2.6 with `send-proxy-v2 proxy-v2-options crc32c check check-send-proxy`,
        // captured on loopback: a health check (LOCAL, AF_UNSPEC, a CRC32C TLV) and a relayed
        // connection (TCP over IPv4, a CRC32C TLV).
        let check = [
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x20, 0x00,
            0x00, 0x07, 0x03, 0x00, 0x04, 0xa9, 0xb8, 0x7e, 0x8f,
        ];
        let (h, n) = complete(&check);
        assert_eq!((n, h.command(), h.source()), (23, Command::Local, None));
        let relayed = [
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11,
            0x00, 0x13, 0x7f, 0x00, 0x00, 0x01, 0x7f, 0x00, 0x00, 0x01, 0x8c, 0xdc, 0xde, 0x61,
            0x03, 0x00, 0x04, 0xd5, 0xe6, 0xbd, 0xbf,
        ];
        let (h, n) = complete(&relayed);
        assert_eq!(n, relayed.len());
        assert_eq!(h.source_inet(), Some("127.0.0.1:36060".parse().unwrap()));
        assert_eq!(
            h.destination(),
            Some(ProxyAddr::Inet("127.0.0.1:56929".parse().unwrap()))
        );
        let mut bad = relayed;
        bad[27] ^= 1;
        assert!(invalid(&bad).contains("CRC32C"));
    }

    #[test]
    fn v2_length_cap() {
        let mut block = inet4_block();
        block.extend_from_slice(&tlv(0xE2, &vec![1; V2_MAX_PAYLOAD - 12 - 3]));
        let at_cap = v2(0x21, 0x11, &block);
        assert_eq!(complete(&at_cap).1, MAX_HEADER_LEN);
        block.push(0);
        let over = v2(0x21, 0x11, &block);
        // Refused from its 16 fixed bytes, without waiting for the rest.
        assert!(invalid(&over[..16]).contains("cap"));
    }

    #[test]
    fn garbage_never_panics_and_is_judged_early() {
        // A cheap deterministic sweep; the fuzz target (fuzz/fuzz_targets/proxy.rs) goes further.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let seeds = [
            with_crc(b""),
            v2(0x21, 0x21, &[0; 36]),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
        ];
        for seed in &seeds {
            for _ in 0..2000 {
                let mut input = seed.clone();
                for _ in 0..3 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let i = (x % input.len() as u64) as usize;
                    input[i] = (x >> 32) as u8;
                }
                let cut = (x >> 16) as usize % (input.len() + 1);
                match parse(&input[..cut]) {
                    Parse::Complete(_, n) => assert!(n <= cut),
                    Parse::Incomplete | Parse::Invalid(_) => {}
                }
            }
        }
    }
}
