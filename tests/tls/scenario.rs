//! The server side: this binary run as a TLS master and, re-executed by it, as its children.
//! Environment variables choose the certificates and options; hooks and the logger print one
//! line per event on stdout for the orchestrator.

use std::io::Write;
use std::time::Duration;

use prefork::{Handler, Prefork, Request, Response};

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn emit(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

struct LineLogger;

impl prefork::Logger for LineLogger {
    fn log(&self, level: prefork::Level, message: &str) {
        emit(format!("log {} {message}", level.as_str()));
    }
}

struct TestHandler;

impl Handler for TestHandler {
    fn init_child(&self) -> prefork::HookResult {
        emit(format!(
            "port {}",
            prefork::local_addr().expect("serving").port()
        ));
        Ok(())
    }

    fn handle(&self, req: &Request<'_>, resp: &mut Response) {
        match req.path() {
            "/pid" => resp.write(std::process::id().to_string().as_bytes()),
            "/big" => resp.write(&vec![b'x'; 200_000]),
            "/peer" => {
                let peer = req.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                resp.write(peer.as_bytes())
            }
            // A connection over TLS cannot be taken over: its bytes are rustls's, not the
            // socket's. The refusal leaves the response to answer normally.
            "/hijack" => match resp.hijack(|_| {}) {
                Ok(()) => resp.write(b"hijacked"),
                Err(e) => {
                    let _ = resp.set_status(501);
                    let code = prefork::ffi::prefork_result::from(e.kind()) as i32;
                    resp.write(format!("hijack refused: {:?} {code}", e.kind()).as_bytes())
                }
            },
            _ => resp.write(b"hello over tls"),
        }
    }
}

pub fn run() -> i32 {
    let mut server = Prefork::new(TestHandler);
    let cfg = server.config_mut();
    if let Some(n) = var("PF_CHILDREN") {
        cfg.process.children = n.parse().unwrap();
    }
    cfg.process.reuseport = var("PF_REUSEPORT").is_some();
    if let Some(n) = var("PF_THREADS") {
        cfg.http.handler_threads = n.parse().unwrap();
    }
    cfg.http.proxy_protocol = var("PF_PROXY").is_some();
    if let Some(ms) = var("PF_PROXY_MS") {
        cfg.http.proxy_timeout = Duration::from_millis(ms.parse().unwrap());
    }
    if let Some(ms) = var("PF_HEADER_MS") {
        cfg.http.header_timeout = Duration::from_millis(ms.parse().unwrap());
    }
    server.set_logger(std::sync::Arc::new(LineLogger));
    let hooks = server.hooks_mut();
    hooks.on_child_spawn = Some(Box::new(|pid| {
        emit(format!("spawn {pid}"));
        Ok(())
    }));
    hooks.on_master_ready = Some(Box::new(|pids| {
        let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        emit(format!("ready {}", list.join(",")));
        Ok(())
    }));
    for pair in var("PF_TLS_EXTRA").iter().flat_map(|v| v.split(',')) {
        let (cert, key) = pair.split_once(':').expect("cert:key");
        server.add_tls_cert(cert, key);
    }
    let cert = var("PF_TLS_CERT").expect("PF_TLS_CERT");
    let key = var("PF_TLS_KEY").expect("PF_TLS_KEY");
    let result = if var("PF_TLS_EMBED").is_some() {
        let cert = std::fs::read(cert).expect("cert file");
        let key = std::fs::read(key).expect("key file");
        server.listen_and_serve_tls_pem("127.0.0.1:0", &cert, &key)
    } else {
        server.listen_and_serve_tls("127.0.0.1:0", cert, key)
    };
    let role = if prefork::is_child() {
        "child-result"
    } else {
        "result"
    };
    match result {
        Ok(()) => {
            emit(format!("{role} ok"));
            0
        }
        Err(e) => {
            emit(format!("{role} err {:?} {}", e.kind(), e.message()));
            1
        }
    }
}
