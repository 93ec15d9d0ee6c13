//! The orchestrator's tools: start a master as a subprocess, read its event lines, talk HTTP
//! to it, and prove that no process outlives a test. The orchestrator is a child subreaper,
//! so children orphaned by a killed master come back to it and can be reaped and counted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

pub type Outcome = Result<(), String>;

/// Fails the current test with a message.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Variables every master started from now on gets too, after its own: how the suite runs a
/// test again in serve mode. Tests run one at a time, so a global is enough.
static EXTRA_ENV: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// Runs `f` with `env` added to every master it starts.
pub fn with_env<T>(env: &[(&str, &str)], f: impl FnOnce() -> T) -> T {
    let saved = std::mem::replace(
        &mut *EXTRA_ENV.lock().unwrap(),
        env.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    *EXTRA_ENV.lock().unwrap() = saved;
    out.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

pub fn become_subreaper() {
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    // The watchdog's SIGABRT must not leave core files behind; the limit is inherited.
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) };
}

pub struct Master {
    proc: Child,
    lines: Receiver<String>,
    /// Every line seen so far, in order.
    pub seen: Vec<String>,
    pub started: Instant,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Master {
    pub fn start(env: &[(&str, &str)]) -> Master {
        Master::start_with(env, |_| {})
    }

    /// `start` in the listener mode a test runs in: with `PF_REUSEPORT=1` when `reuseport`.
    pub fn start_in_mode(env: &[(&str, &str)], reuseport: bool) -> Master {
        Master::start_with(env, |cmd| {
            if reuseport {
                cmd.env("PF_REUSEPORT", "1");
            }
        })
    }

    pub fn start_with(env: &[(&str, &str)], adjust: impl FnOnce(&mut Command)) -> Master {
        let mut cmd = Command::new(std::env::current_exe().expect("own path"));
        cmd.env("PF_SCENARIO", "1")
            .env_remove("PREFORK_CHILD")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        for (k, v) in EXTRA_ENV.lock().unwrap().iter() {
            cmd.env(k, v);
        }
        adjust(&mut cmd);
        let started = Instant::now();
        let mut proc = cmd.spawn().expect("start master");
        let (tx, rx) = channel();
        let out = proc.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = proc.stderr.take().expect("piped");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Master {
            proc,
            lines: rx,
            seen: Vec::new(),
            started,
            stderr,
        }
    }

    /// A master run as PID 1 of a new PID namespace: `unshare --pid --fork --kill-child`
    /// starts it, and `pid()` is unshare's (see `namespace_init`). None when unshare cannot
    /// make a PID namespace here (not root, no user namespaces): the caller skips and says so.
    pub fn start_as_pid1(env: &[(&str, &str)]) -> Option<Master> {
        let probe = Command::new("unshare")
            .args(["--pid", "--fork", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !probe.is_ok_and(|s| s.success()) {
            return None;
        }
        let exe = std::env::current_exe().expect("own path");
        Some(Master::start_with(env, |cmd| {
            let envs: Vec<_> = cmd
                .get_envs()
                .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
                .collect();
            let mut wrapped = Command::new("unshare");
            wrapped.args(["--pid", "--fork", "--kill-child"]).arg(&exe);
            for (k, v) in envs {
                match v {
                    Some(v) => wrapped.env(k, v),
                    None => wrapped.env_remove(k),
                };
            }
            wrapped
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            *cmd = wrapped;
        }))
    }

    /// After `start_as_pid1`: the master as this process sees it (unshare's only child),
    /// checked to be PID 1 of its namespace.
    pub fn namespace_init(&self) -> Result<i32, String> {
        let unshare = self.pid();
        let master: i32 =
            std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
                .map_err(|e| e.to_string())?
                .trim()
                .parse()
                .map_err(|e| format!("master pid: {e}"))?;
        let status = std::fs::read_to_string(format!("/proc/{master}/status")).unwrap_or_default();
        if !status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.ends_with("\t1"))
        {
            return Err(format!("the master {master} is not PID 1 in its namespace"));
        }
        Ok(master)
    }

    /// After `start_as_pid1`: SIGTERM to the namespace's init (`master`), exit status 0 and
    /// "result ok". The children died with their namespace's init; the pids they reported are
    /// the namespace's, meaningless out here, so the leftover check forgets them.
    pub fn stop_namespace_init(&mut self, master: i32) -> Outcome {
        unsafe { libc::kill(master, libc::SIGTERM) };
        let status = self.wait_exit(Duration::from_secs(10))?;
        self.exited_ok(status)?;
        self.seen.retain(|l| !l.starts_with("spawn "));
        Ok(())
    }

    /// The master exited with status 0 after its "result ok" line.
    pub fn exited_ok(&self, status: ExitStatus) -> Outcome {
        ensure!(
            status.code() == Some(0),
            "master exit {status:?}; {}",
            self.context()
        );
        ensure!(
            self.seen.iter().any(|l| l == "result ok"),
            "no result ok; {}",
            self.context()
        );
        Ok(())
    }

    pub fn pid(&self) -> i32 {
        self.proc.id() as i32
    }

    /// Waits for the next line starting with `prefix`; returns the rest of it.
    pub fn expect(&mut self, prefix: &str, within: Duration) -> Result<String, String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.to_string());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "no {prefix:?} line within {within:?}; {}",
                        self.context()
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "master closed stdout before {prefix:?}; {}",
                        self.context()
                    ));
                }
            }
        }
    }

    /// Waits for the line `line`, which may have been read already.
    pub fn saw(&mut self, line: &str, within: Duration) -> Result<(), String> {
        if self.seen.iter().any(|l| l == line) {
            return Ok(());
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            self.expect(line, left)?;
            if self.seen.last().is_some_and(|l| l == line) {
                return Ok(());
            }
        }
    }

    /// Reads every line until the master's stdout closes.
    pub fn drain(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
    }

    /// Waits for a master that failed: exit status 1 within 10 s; returns its `result ...` line
    /// ("" when it printed none).
    pub fn failure(&mut self) -> Result<String, String> {
        let status = self.wait_exit(Duration::from_secs(10))?;
        ensure!(
            status.code() == Some(1),
            "master exit {status:?}; {}",
            self.context()
        );
        Ok(self
            .seen
            .iter()
            .find(|l| l.starts_with("result "))
            .cloned()
            .unwrap_or_default())
    }

    pub fn context(&self) -> String {
        format!(
            "lines {:?}; stderr: {}",
            self.seen,
            self.stderr.lock().unwrap().trim_end()
        )
    }

    pub fn pid_list(&self, prefix: &str) -> Vec<i32> {
        self.seen
            .iter()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|r| r.split_whitespace().next()?.parse().ok())
            .collect()
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid(), sig) };
    }

    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus, String> {
        self.wait_exit_then(within, Duration::from_secs(2))
    }

    /// As `wait_exit`, reading the lines left for at most `drain` (a process that outlives
    /// the master, such as the new master of an upgrade, keeps stdout open).
    pub fn wait_exit_then(
        &mut self,
        within: Duration,
        drain: Duration,
    ) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.proc.try_wait().map_err(|e| e.to_string())? {
                self.drain(drain);
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "master still running after {within:?}; {}",
                    self.context()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Starts a master and waits for it to be ready; returns (children, port).
    pub fn ready(&mut self) -> Result<(Vec<i32>, u16), String> {
        let pids = self.expect("ready ", Duration::from_secs(10))?;
        let pids: Vec<i32> = pids.split(',').map(|p| p.parse().expect("pid")).collect();
        let port = self.port()?;
        Ok((pids, port))
    }

    pub fn port(&mut self) -> Result<u16, String> {
        if let Some(p) = self.seen.iter().find_map(|l| l.strip_prefix("port ")) {
            return Ok(p.parse().expect("port"));
        }
        Ok(self
            .expect("port ", Duration::from_secs(10))?
            .parse()
            .expect("port"))
    }

    /// Every pid this master ever reported spawning.
    pub fn all_children(&self) -> Vec<i32> {
        self.pid_list("spawn ")
    }
}

impl Drop for Master {
    /// A failed test must not leave its processes behind either.
    fn drop(&mut self) {
        if self.proc.try_wait().ok().flatten().is_none() {
            let _ = self.proc.kill();
            let _ = self.proc.wait();
        }
        for pid in self.all_children() {
            if alive(pid) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = all_gone(&self.all_children(), Duration::from_secs(2));
    }
}

/// True while `pid` exists and is not a zombie; reaps it if it is our zombie.
pub fn alive(pid: i32) -> bool {
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// The processes (zombies included) whose parent is `parent`, each with its state letter.
pub fn children_of(parent: i32) -> Vec<(i32, char)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let mut fields = stat.rsplit(')').next().unwrap_or("").split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next());
        let ppid = fields.next().and_then(|p| p.parse::<i32>().ok());
        if let (Some(state), Some(ppid)) = (state, ppid)
            && ppid == parent
        {
            found.push((pid, state));
        }
    }
    found
}

/// Waits until none of `pids` is alive; returns how long that took.
pub fn all_gone(pids: &[i32], within: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            return Err(format!("processes {left:?} still alive after {within:?}"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// One HTTP request to 127.0.0.1 on a fresh connection; returns the body.
pub fn get(port: u16, path: &str) -> std::io::Result<String> {
    get_from("127.0.0.1", port, path)
}

/// One HTTP request to `host` on a fresh connection; returns the body.
/// The pid of the child that answers `GET /pid`.
pub fn served_by(port: u16) -> Result<i32, String> {
    let body = get(port, "/pid").map_err(|e| e.to_string())?;
    body.parse()
        .map_err(|e| format!("GET /pid gave {body:?}: {e}"))
}

pub fn get_from(host: &str, port: u16, path: &str) -> std::io::Result<String> {
    let s = TcpStream::connect((host, port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    exchange(s, path)
}

/// A connection to a listener address as the library writes it: `host:port`, `unix:/path` or
/// `unix:@name`.
pub fn connect_to(addr: &str) -> std::io::Result<Box<dyn ReadWrite>> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixStream};
    let timeout = Some(Duration::from_secs(5));
    let unix = match addr.strip_prefix("unix:") {
        Some(name) if name.starts_with('@') => {
            UnixStream::connect_addr(&SocketAddr::from_abstract_name(&name.as_bytes()[1..])?)?
        }
        Some(path) => UnixStream::connect(path)?,
        None => {
            let tcp = TcpStream::connect(addr)?;
            tcp.set_read_timeout(timeout)?;
            return Ok(Box::new(tcp));
        }
    };
    unix.set_read_timeout(timeout)?;
    Ok(Box::new(unix))
}

pub trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// One HTTP request to a listener address (see `connect_to`); returns the body.
pub fn get_at(addr: &str, path: &str) -> std::io::Result<String> {
    exchange(connect_to(addr)?, path)
}

fn exchange(mut s: impl Read + Write, path: &str) -> std::io::Result<String> {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(std::io::Error::other(format!(
            "unexpected response {text:?}"
        ))),
    }
}

/// The socket inode a descriptor of `pid` points at (`socket:[N]`), if any.
pub fn fd_target(pid: i32, fd: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .ok()
        .map(|p| p.display().to_string())
}

pub fn fd_targets(pid: i32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in dir.flatten() {
            let fd = entry.file_name().to_string_lossy().into_owned();
            if let Some(t) = fd_target(pid, &fd) {
                out.push((fd, t));
            }
        }
    }
    out
}

pub fn environ(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .map(|kv| String::from_utf8_lossy(kv).into_owned())
        .collect()
}

/// What one fresh connection got from a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A whole 200 response, then the close it announced.
    Answered,
    /// The kernel refused the connection: no listener.
    Refused,
    /// Accepted, then reset or closed without a whole response.
    Dropped(String),
    /// No refusal, no response, no close within the bound.
    Hung(String),
}

/// Connects, sends `GET /` and reads the response to its end, each step bounded by `within`.
pub fn probe(port: u16, within: Duration) -> Probe {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let timed_out = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    let mut s = match TcpStream::connect_timeout(&addr, within) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Probe::Refused,
        Err(e) if timed_out(&e) => return Probe::Hung(format!("connect: {e}")),
        Err(e) => return Probe::Dropped(format!("connect: {e}")),
    };
    let _ = s.set_read_timeout(Some(within));
    let _ = s.set_write_timeout(Some(within));
    if let Err(e) = s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n") {
        return Probe::Dropped(format!("send: {e}"));
    }
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Err(e) if timed_out(&e) => Probe::Hung(format!("after {} bytes: {e}", raw.len())),
        Err(e) => Probe::Dropped(format!("after {} bytes: {e}", raw.len())),
        Ok(_) if raw.starts_with(b"HTTP/1.1 200 ") && raw.ends_with(b"\r\n\r\nok") => {
            Probe::Answered
        }
        Ok(_) => Probe::Dropped(format!("closed after {:?}", String::from_utf8_lossy(&raw))),
    }
}
