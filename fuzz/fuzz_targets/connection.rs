//! A whole connection fed at random read boundaries: no panic, and the same responses and the
//! same close decision whatever the boundaries (only where `100 Continue` interim responses
//! appear may differ, since they are sent only while the body has not arrived).
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use prefork::http::testing::run_connection;
use prefork::{Handler, Request, Response};

mod common;

/// Deterministic handler exercising the response paths: echo, status codes, HEAD, streaming,
/// Connection: close and panics, chosen by the path.
struct Fuzzy;

struct Stream(u8);

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0 {
            0 => Ok(0),
            1 if buf.len() > 3 => Err(std::io::Error::other("stream failure")),
            _ => {
                self.0 -= 1;
                let n = buf.len().min(300);
                buf[..n].fill(b's');
                Ok(n)
            }
        }
    }
}

impl Handler for Fuzzy {
    fn handle(&self, req: &Request<'_>, resp: &mut Response) {
        let path = req.path();
        resp.add_header(b"X-Path", path.as_bytes()).unwrap();
        match path.as_bytes().get(1) {
            Some(b'p') => panic!("fuzz handler panic"),
            Some(b's') => resp.set_body_stream(Stream(path.len() as u8 % 5)),
            Some(b'c') => resp.add_header(b"Connection", b"close").unwrap(),
            Some(b'n') => resp.set_status(204).unwrap(),
            Some(b'b') => resp.set_body(&vec![b'b'; 2000]),
            _ => resp.write(req.body()),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Handler panics are expected here; keep the default hook from flooding the output.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.to_string().contains("fuzz handler panic") {
                default(info);
            }
        }));
    });
    let cfg = common::small_config();
    let (cuts, input) = common::cuts(data);
    let whole = run_connection(input, &[], &cfg, &Fuzzy);
    let split = run_connection(input, &cuts, &cfg, &Fuzzy);
    assert_eq!(
        whole.closed, split.closed,
        "close decision depends on read boundaries ({cuts:?})"
    );
    assert_eq!(
        common::strip_continue(&whole.output),
        common::strip_continue(&split.output),
        "output depends on read boundaries ({cuts:?})"
    );
});
