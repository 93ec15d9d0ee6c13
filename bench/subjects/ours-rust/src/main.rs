//! rust-hello: libprefork with a pure-Rust handler, the benchmark's measure of what the C ABI
//! costs (compare with examples-c/demo_server.c, which serves the same routes through it).
//!
//! ```text
//! rust-hello [--addr HOST:PORT] [--children N] [--handler-threads N] [--tls-cert FILE --tls-key FILE]
//!   /            200 text/plain "Hello, World!"
//!   /pid         the serving child's pid
//!   /sleep?ms=N  200 "slept" after N ms
//!   else         404
//! ```
//! Prints `ready pid=<master> children=<pid>,...` once every child listens, like demo_server.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use prefork::{Handler, Prefork, Request, Response};

struct Hello;

impl Handler for Hello {
    fn handle(&self, req: &Request<'_>, resp: &mut Response) {
        match req.path() {
            "/" => {
                text_plain(resp);
                resp.write(b"Hello, World!");
            }
            "/pid" => {
                text_plain(resp);
                resp.write(std::process::id().to_string().as_bytes());
            }
            "/sleep" => {
                let ms = req
                    .query()
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("ms="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                std::thread::sleep(Duration::from_millis(ms));
                text_plain(resp);
                resp.write(b"slept");
            }
            _ => {
                resp.set_status(404).expect("404 is a valid status");
                resp.write(b"not found");
            }
        }
    }
}

fn text_plain(resp: &mut Response) {
    resp.add_header(b"Content-Type", b"text/plain")
        .expect("a valid header");
}

struct Args {
    addr: String,
    children: usize,
    handler_threads: usize,
    /// HTTPS with this certificate chain and key (the TLS scenarios).
    tls: Option<(String, String)>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: "127.0.0.1:8080".into(),
        children: 0,
        handler_threads: 0,
        tls: None,
    };
    let (mut cert, mut key) = (None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => args.addr = value()?,
            "--children" => {
                args.children = value()?.parse().map_err(|e| format!("--children: {e}"))?
            }
            "--handler-threads" => {
                args.handler_threads = value()?
                    .parse()
                    .map_err(|e| format!("--handler-threads: {e}"))?
            }
            "--tls-cert" => cert = Some(value()?),
            "--tls-key" => key = Some(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    args.tls = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "rust-hello: {e}\nusage: rust-hello [--addr HOST:PORT] [--children N] [--handler-threads N] \
                 [--tls-cert FILE --tls-key FILE]"
            );
            return ExitCode::from(2);
        }
    };
    let mut server = Prefork::new(Hello);
    server.config_mut().process.children = args.children;
    server.config_mut().http.handler_threads = args.handler_threads;
    server.hooks_mut().on_master_ready = Some(Box::new(|pids| {
        let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        let mut out = std::io::stdout().lock();
        // A closed stdout is the launcher's problem, not a reason to stop serving.
        let _ = writeln!(
            out,
            "ready pid={} children={}",
            std::process::id(),
            list.join(",")
        );
        let _ = out.flush();
        Ok(())
    }));
    let served = match &args.tls {
        Some((cert, key)) => server.listen_and_serve_tls(&args.addr, cert, key),
        None => server.listen_and_serve(&args.addr),
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rust-hello: {e}");
            ExitCode::FAILURE
        }
    }
}
