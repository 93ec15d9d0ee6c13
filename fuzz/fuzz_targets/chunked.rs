//! The chunked decoder on arbitrary bytes fed at arbitrary boundaries: no panic, the same
//! result whatever the boundaries, and a decoded body that re-encodes and decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prefork::http::testing::decode_chunked;

mod common;

fuzz_target!(|data: &[u8]| {
    let cfg = common::small_config();
    let (cuts, input) = common::cuts(data);
    let whole = decode_chunked(input, &[], &cfg);
    let split = decode_chunked(input, &cuts, &cfg);
    assert_eq!(
        whole, split,
        "the verdict depends on read boundaries ({cuts:?})"
    );
    let bytewise: Vec<usize> = (1..input.len()).collect();
    assert_eq!(
        whole,
        decode_chunked(input, &bytewise, &cfg),
        "byte-by-byte differs"
    );
    if let Ok((body, Some(used))) = &whole {
        assert!(*used <= input.len());
        assert!(body.len() <= cfg.max_body_size);
        assert!(
            body.len() < *used,
            "the encoding is always longer than the body"
        );
        let mut again = Vec::new();
        if !body.is_empty() {
            again.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            again.extend_from_slice(body);
            again.extend_from_slice(b"\r\n");
        }
        again.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(
            decode_chunked(&again, &[], &cfg),
            Ok((body.clone(), Some(again.len())))
        );
    }
});
