//! The server side of the suite: this same binary run as a master (and, re-executed by it, as
//! its children). Environment variables choose the configuration and the misbehaviour under
//! test; hooks print one line per event on stdout for the orchestrator to read.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use prefork::{ChildExit, Handler, Prefork, Ready, Request, Response, StopSignal};

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn num(name: &str) -> Option<u64> {
    var(name).map(|v| v.parse().expect("numeric test variable"))
}

fn emit(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Fails or panics in hook `name` when PF_FAIL asks for it.
fn maybe_fail(name: &str) -> prefork::HookResult {
    match var("PF_FAIL").as_deref() {
        Some(f) if f == format!("{name}-error") => Err(format!("{name} says no").into()),
        Some(f) if f == format!("{name}-panic") => panic!("{name} blew up"),
        _ => Ok(()),
    }
}

/// A pluggable logger that turns every log line into an event line.
struct LineLogger;

impl prefork::Logger for LineLogger {
    fn log(&self, level: prefork::Level, message: &str) {
        emit(format!("log {} {message}", level.as_str()));
    }
}

struct TestHandler;

impl Handler for TestHandler {
    fn init_child(&self) -> prefork::HookResult {
        // What a reload re-reads: the test rewrites this file to change the next generation.
        let from_file = var("PF_INIT_FILE").and_then(|f| std::fs::read_to_string(f).ok());
        match from_file.as_deref().map(str::trim) {
            Some("fail") => return Err("init refused by the file".into()),
            Some("sleep") => std::thread::sleep(Duration::from_secs(30)),
            Some(slow) if slow.starts_with("slow ") => {
                std::thread::sleep(Duration::from_millis(slow[5..].parse().expect("slow MS")))
            }
            _ => {}
        }
        match var("PF_CHILD_INIT").as_deref() {
            Some("fail") => return Err("init refused".into()),
            Some("sleep") => std::thread::sleep(Duration::from_secs(30)),
            _ => {}
        }
        if let Some(ms) = num("PF_CHILD_EXIT_AFTER_MS") {
            // Dies that long after init, so shortly after it reported ready.
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(ms));
                std::process::exit(4);
            });
        }
        // The listener is fd 3 by contract; its port tells the orchestrator where to connect.
        let listener = unsafe {
            std::mem::ManuallyDrop::new(
                <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(3),
            )
        };
        // A Unix socket at fd 3 has no port.
        if let Ok(addr) = listener.local_addr() {
            emit(format!("port {}", addr.port()));
        }
        let addrs: Vec<String> = prefork::listener_addrs()
            .iter()
            .map(|a| a.to_string())
            .collect();
        emit(format!(
            "child-listeners {} {}",
            std::process::id(),
            addrs.join(" ")
        ));
        // The child's signal handlers are in place from here on.
        emit(format!("init {}", std::process::id()));
        Ok(())
    }

    fn handle(&self, req: &Request<'_>, resp: &mut Response) {
        match req.path() {
            "/pid" => resp.write(std::process::id().to_string().as_bytes()),
            // Which listener took the connection, who the peer is, and who answers.
            "/local" => {
                let local = req.local_addr().map(|a| a.to_string()).unwrap_or_default();
                let peer = req.peer_addr().map(|a| a.to_string()).unwrap_or("-".into());
                resp.write(format!("{local} {peer} {}", std::process::id()).as_bytes())
            }
            "/exit" => std::process::exit(3),
            "/stats" => match prefork::stats() {
                Some(s) => resp.write(s.to_json().as_bytes()),
                None => resp.write(b"none"),
            },
            "/sleep" => {
                let ms: u64 = req
                    .query()
                    .strip_prefix("ms=")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1000);
                emit(format!("sleeping {}", std::process::id()));
                std::thread::sleep(Duration::from_millis(ms));
                resp.write(b"slept");
            }
            "/stopping" => resp.write(prefork::stopping().to_string().as_bytes()),
            // Leaves a grandchild behind: sh exits at once, its background sleep is orphaned
            // (re-parented to the nearest subreaper or PID 1) and exits a second later.
            "/orphan" => match std::process::Command::new("sh")
                .args(["-c", "sleep 1 &"])
                .status()
            {
                Ok(s) if s.success() => resp.write(b"orphaned"),
                other => resp.write(format!("sh failed: {other:?}").as_bytes()),
            },
            // Whether this child may read the file named by the query.
            "/read" => match std::fs::read(req.query()) {
                Ok(_) => resp.write(b"read"),
                Err(e) => {
                    resp.write(format!("denied {}", e.raw_os_error().unwrap_or(0)).as_bytes())
                }
            },
            _ => resp.write(b"ok"),
        }
    }

    fn exit_child(&self) {
        if var("PF_SERVE").is_some() {
            emit(format!("exit-child {}", std::process::id()));
        }
    }
}

/// The serve function of PF_SERVE ("start" or "explicit": when the child reports ready): a
/// one-connection-at-a-time HTTP/1.1 server with its own poll loop over the listener and the
/// stop signal, answering what TestHandler answers (`/exit` returns 3: the child's status),
/// plus `/sleep` (300 ms, for requests in flight at a stop).
fn serve_http(listener: TcpListener, stop: &StopSignal) -> i32 {
    if let Some(ms) = num("PF_SERVE_READY_MS") {
        std::thread::sleep(Duration::from_millis(ms));
    }
    if var("PF_SERVE").as_deref() == Some("explicit") {
        if var("PF_SERVE_NEVER_READY").is_some() {
            stop.wait();
            return 0;
        }
        prefork::child_ready().expect("report ready");
        emit(format!("child-ready {}", std::process::id()));
    }
    if let Some(status) = num("PF_SERVE_RETURN") {
        return status as i32;
    }
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    loop {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfd structs.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if fds[1].revents != 0 {
            emit(format!("serve-stop {}", std::process::id()));
            return 0;
        }
        while let Ok((conn, _)) = listener.accept() {
            if let Some(status) = answer(conn) {
                return status;
            }
        }
    }
}

/// Answers one request on `conn`; Some(status) when the serve function must return it.
fn answer(mut conn: TcpStream) -> Option<i32> {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let body = match text.split(' ').nth(1).unwrap_or("") {
        "/pid" => std::process::id().to_string(),
        "/exit" => return Some(3),
        "/stopping" => prefork::stopping().to_string(),
        "/sleep" => {
            emit(format!("sleeping {}", std::process::id()));
            std::thread::sleep(Duration::from_millis(300));
            "slept".into()
        }
        _ => "ok".into(),
    };
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    None
}

pub fn run() -> i32 {
    if prefork::is_child() && var("PF_CHILD_IGNORE_TERM").is_some() {
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    }
    if !prefork::is_child() && var("PF_SUBREAPER").is_some() {
        // Orphans of the master's subtree come back to it, as to a container's PID 1.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    if !prefork::is_child() && var("PF_LEAK_FD").is_some() {
        // A host descriptor without close-on-exec: it must not reach the children.
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
        emit(format!("leaked {fd}"));
    }
    if !prefork::is_child()
        && var("PF_MASTER_FILE")
            .and_then(|f| std::fs::read_to_string(f).ok())
            .is_some_and(|c| c.trim() == "fail")
    {
        // A broken new binary, as an upgrade may start.
        emit(format!("broken-master {}", std::process::id()));
        return 7;
    }
    let mut server = Prefork::new(TestHandler);
    match var("PF_SERVE").as_deref() {
        Some("start") => server.set_serve(Ready::OnStart, serve_http),
        Some("explicit") => server.set_serve(Ready::Explicit, serve_http),
        Some(other) => panic!("PF_SERVE={other}: start or explicit"),
        None => {}
    }
    let cfg = server.config_mut();
    if let Some(n) = num("PF_CHILDREN") {
        cfg.process.children = n as usize;
    }
    cfg.process.reuseport = var("PF_REUSEPORT").is_some();
    if let Some(list) = var("PF_LISTENERS") {
        // `;`-separated; `+proxy` after an address turns PROXY protocol on for it.
        for item in list.split(';').filter(|a| !a.is_empty()) {
            let (addr, proxy) = match item.strip_suffix("+proxy") {
                Some(addr) => (addr, Some(true)),
                None => (item, None),
            };
            let unix_mode = num("PF_UNIX_MODE")
                .filter(|_| addr.starts_with("unix:/"))
                .map(|m| m as u32);
            let options = prefork::ListenerOptions {
                proxy_protocol: proxy,
                unix_mode,
            };
            if let Err(e) = server.add_listener(addr, options) {
                emit(format!("result err {:?} {}", e.kind(), e.message()));
                return 1;
            }
        }
    }
    let cfg = server.config_mut();
    if let Some(n) = var("PF_NETWORK") {
        cfg.process.network = prefork::Network::parse(&n).expect("network");
    }
    if let Some(n) = num("PF_THRESHOLD") {
        cfg.process.recover_threshold = Some(n as usize);
    }
    if let Some(ms) = num("PF_INTERVAL_MS") {
        cfg.process.recover_interval = Duration::from_millis(ms);
    }
    if let Some(ms) = num("PF_WINDOW_MS") {
        cfg.process.recover_window = Duration::from_millis(ms);
    }
    if let Some(ms) = num("PF_MIN_UPTIME_MS") {
        cfg.process.recover_min_uptime = Duration::from_millis(ms);
    }
    cfg.process.recover_every_exit = var("PF_EVERY_EXIT").is_some();
    if let Some(ms) = num("PF_GRACE_MS") {
        cfg.process.grace_period = Duration::from_millis(ms);
    }
    if let Some(ms) = num("PF_SHUTDOWN_DELAY_MS") {
        cfg.process.shutdown_delay = Duration::from_millis(ms);
    }
    if let Some(ms) = num("PF_STARTUP_MS") {
        cfg.process.startup_timeout = Duration::from_millis(ms);
    }
    if let Some(n) = num("PF_MAX_REQUESTS") {
        cfg.process.max_requests = n;
    }
    if let Some(n) = num("PF_MAX_REQUESTS_JITTER") {
        cfg.process.max_requests_jitter = n;
    }
    if let Some(ms) = num("PF_MAX_CHILD_AGE_MS") {
        cfg.process.max_child_age = Duration::from_millis(ms);
    }
    if let Some(ms) = num("PF_CHILD_TIMEOUT_MS") {
        cfg.process.child_timeout = Duration::from_millis(ms);
    }
    if let Some(n) = num("PF_HANDLER_THREADS") {
        cfg.http.handler_threads = n as usize;
    }
    cfg.process.user = var("PF_USER");
    cfg.process.group = var("PF_GROUP");
    cfg.process.cpu_affinity = var("PF_CPU_AFFINITY").is_some();
    if prefork::is_child() && var("PF_CHILD_IGNORE_TERM").is_some() {
        cfg.process.handle_signals = false;
    }

    if var("PF_LOGGER").is_some() {
        server.set_logger(std::sync::Arc::new(LineLogger));
    }
    let hooks = server.hooks_mut();
    if var("PF_DEATH_HOOK").is_some() {
        hooks.on_master_death = Some(Box::new(|| {
            emit(format!("master-death {}", std::process::id()))
        }));
    }
    hooks.on_child_spawn = Some(Box::new(|pid| {
        emit(format!("spawn {pid}"));
        maybe_fail("spawn")
    }));
    hooks.on_master_ready = Some(Box::new(|pids| {
        let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        emit(format!("master {}", std::process::id()));
        if let Some(addr) = prefork::local_addr() {
            emit(format!("bound {addr}"));
        }
        let addrs: Vec<String> = prefork::listener_addrs()
            .iter()
            .map(|a| a.to_string())
            .collect();
        emit(format!("listeners {}", addrs.join(" ")));
        emit(format!("ready {}", list.join(",")));
        if let Some(n) = num("PF_SCALE_ON_READY") {
            emit(format!(
                "scale-call {}",
                prefork::set_children_live(n as usize)
            ));
        }
        if var("PF_RELOAD_ON_READY").is_some() {
            emit(format!("reload-call {}", prefork::reload()));
        }
        maybe_fail("ready")
    }));
    hooks.on_child_recover = Some(Box::new(|old, new| {
        emit(format!("recover {old} {new}"));
        maybe_fail("recover")
    }));
    hooks.on_reload = Some(Box::new(|generation, pids| {
        let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        emit(format!("reloaded {generation} {}", list.join(",")));
        maybe_fail("reload")
    }));
    hooks.on_reload_failed = Some(Box::new(|generation, why| {
        emit(format!("reload-failed {generation} {why}"))
    }));
    hooks.on_upgrade = Some(Box::new(|old, new| emit(format!("upgraded {old} {new}"))));
    hooks.on_child_exit = Some(Box::new(|pid, exit| {
        emit(match exit {
            ChildExit::Code(c) => format!("exit {pid} code {c}"),
            ChildExit::Signal(s) => format!("exit {pid} signal {s}"),
        })
    }));
    match var("PF_PRODUCER").as_deref() {
        Some("zero") => hooks.command_producer = Some(Box::new(|_| Ok(0))),
        Some("error") => hooks.command_producer = Some(Box::new(|_| Err("no capacity".into()))),
        Some("nomarker") => {
            hooks.command_producer = Some(Box::new(|req| {
                let mut cmd = req.command();
                cmd.env_remove(prefork::CHILD_ENV)
                    .env("PF_CHILD_INIT", "sleep");
                Ok(cmd.spawn()?.id() as i32)
            }))
        }
        Some("custom") => {
            hooks.command_producer = Some(Box::new(|req| {
                let mut cmd = req.command();
                cmd.env("PF_CUSTOM", format!("slot{}", req.slot))
                    .arg0("custom-child");
                Ok(cmd.spawn()?.id() as i32)
            }))
        }
        _ => {}
    }

    let addr = var("PF_ADDR").unwrap_or_else(|| "127.0.0.1:0".into());
    // Children share the master's stdout: their outcome must not read as the master's.
    let role = if prefork::is_child() {
        "child-result"
    } else {
        "result"
    };
    match server.listen_and_serve(&addr) {
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
