//! The PROXY protocol header parser on arbitrary bytes: no panic, a verdict that never depends
//! on the bytes after a header, every prefix of an accepted header judged incomplete (so a
//! header split across reads is never refused), and only canonical version 1 TCP4 lines and
//! version 2 headers with a matching CRC32C (when present) accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prefork::http::proxy::{self, Command, MAX_HEADER_LEN, PP2_TYPE_CRC32C, Parse, ProxyAddr};

fuzz_target!(|data: &[u8]| {
    let Parse::Complete(header, n) = proxy::parse(data) else {
        return;
    };
    assert!(n <= data.len() && n <= MAX_HEADER_LEN, "{n} of {}", data.len());
    let bytes = &data[..n];
    match proxy::parse(bytes) {
        Parse::Complete(again, m) => assert!(m == n && again == header, "the tail mattered"),
        other => panic!("the header alone gave {other:?}"),
    }
    for cut in 0..n {
        assert!(
            matches!(proxy::parse(&bytes[..cut]), Parse::Incomplete),
            "a {cut}-byte prefix of an accepted {n}-byte header was refused"
        );
    }
    match header.version() {
        1 => {
            assert!(n <= proxy::V1_MAX_LEN && bytes.ends_with(b"\r\n"));
            assert_eq!(header.tlvs().count(), 0);
            if bytes.starts_with(b"PROXY TCP4 ") {
                let (Some(ProxyAddr::Inet(s)), Some(ProxyAddr::Inet(d))) =
                    (header.source(), header.destination())
                else {
                    panic!("a TCP4 line without addresses");
                };
                let line = format!("PROXY TCP4 {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port());
                assert_eq!(line.as_bytes(), bytes, "a non-canonical TCP4 line was accepted");
            }
        }
        2 => {
            assert!(bytes.starts_with(&proxy::V2_SIGNATURE));
            assert_eq!(n, 16 + usize::from(u16::from_be_bytes([bytes[14], bytes[15]])));
            if header.command() == Command::Local {
                assert_eq!(header.source(), None);
            }
            let tlv_bytes: usize = header.tlvs().map(|t| 3 + t.value.len()).sum();
            assert!(tlv_bytes <= n - 16);
            if let Some(sent) = header.tlv(PP2_TYPE_CRC32C) {
                // The TLVs end the header; zero the checksum's 4 bytes where they are in it,
                // and the CRC32C of the result must be what was sent.
                let before: usize = header
                    .tlvs()
                    .take_while(|t| t.kind != PP2_TYPE_CRC32C)
                    .map(|t| 3 + t.value.len())
                    .sum();
                let at = n - tlv_bytes + before + 3;
                let mut zeroed = bytes.to_vec();
                zeroed[at..at + 4].fill(0);
                assert_eq!(
                    &proxy::crc32c(&zeroed).to_be_bytes()[..],
                    sent,
                    "a header with a wrong CRC32C was accepted"
                );
            }
        }
        v => panic!("version {v}"),
    }
});
