//! Shared by the fuzz targets: configurations with small caps (so every limit is reachable by
//! short inputs) and read boundaries derived from the input.

use prefork::HttpConfig;

/// Small caps: the fuzzer reaches 413/414/431 and the extension/trailer caps with short inputs.
pub fn small_config() -> HttpConfig {
    HttpConfig {
        max_request_line: 64,
        max_head_size: 256,
        max_headers: 8,
        max_body_size: 128,
        max_chunk_ext_size: 32,
        max_trailer_size: 48,
        max_output_buffer: 512,
        ..HttpConfig::default()
    }
}

#[allow(dead_code)] // not every target splits its input
/// Splits `data` into (seed, payload) and derives up to 32 cut points in the payload from the
/// seed with xorshift, so one input describes both the bytes and how reads split them.
pub fn cuts(data: &[u8]) -> (Vec<usize>, &[u8]) {
    if data.len() < 8 {
        return (Vec::new(), data);
    }
    let (seed, payload) = data.split_at(8);
    let mut x = u64::from_le_bytes(seed.try_into().unwrap()) | 1;
    let count = (x % 33) as usize;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push((x % (payload.len() as u64 + 1)) as usize);
    }
    (out, payload)
}

#[allow(dead_code)] // only the targets that compare runs read it
/// `out` without its `100 Continue` interim responses, which appear only where a body had not
/// arrived with its head: the one part of the output that depends on read boundaries.
pub fn strip_continue(out: &[u8]) -> Vec<u8> {
    const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut v = Vec::with_capacity(out.len());
    let mut i = 0;
    while i < out.len() {
        if out[i..].starts_with(CONTINUE) {
            i += CONTINUE.len();
        } else {
            v.push(out[i]);
            i += 1;
        }
    }
    v
}
