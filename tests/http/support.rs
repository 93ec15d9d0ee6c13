//! The conformance suite's harness: an in-process engine on 127.0.0.1:0 with its own stop pipe,
//! a raw-socket client that parses responses strictly, and a probe that tells an open
//! connection from a closed one.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use prefork::http::testing::serve_for_tests;
use prefork::{Handler, HttpConfig, Level, Logger, Request, Response};

/// Longest wait for any expected byte; every test is bounded by a few of these.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The configuration most cases use: defaults, except timeouts short enough for the timeout
/// cases to run quickly when they shorten them further.
pub fn cfg() -> HttpConfig {
    HttpConfig::default()
}

/// Collects log lines so tests can assert on them.
#[derive(Default)]
pub struct MemLog(pub Mutex<Vec<String>>);

impl Logger for MemLog {
    fn log(&self, level: Level, message: &str) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{}: {message}", level.as_str()));
    }
}

/// The handler most cases use. It answers by path:
/// `/panic` panics; `/sleep?MS` sleeps; `/stream?N` streams N chunks of 1000 bytes
/// (`/stream-fail?N` then fails);
/// `/close` asks for `Connection: close`; `/status?CODE` sets the status (and echoes the body);
/// `/status-stream?CODE` sets it and streams one chunk; `/big?N` returns N bytes; anything else
/// echoes the body. Every response describes the request in headers.
pub struct Echo;

impl Handler for Echo {
    fn handle(&self, req: &Request<'_>, resp: &mut Response) {
        resp.add_header(b"X-Method", req.method().as_bytes())
            .unwrap();
        resp.add_header(b"X-Target", req.target().as_bytes())
            .unwrap();
        resp.add_header(b"X-Path", req.path().as_bytes()).unwrap();
        resp.add_header(b"X-Query", req.query().as_bytes()).unwrap();
        resp.add_header(b"X-Version", req.minor_version().to_string().as_bytes())
            .unwrap();
        resp.add_header(b"X-Headers", req.headers().len().to_string().as_bytes())
            .unwrap();
        if let Some(host) = req.header("host") {
            resp.add_header(b"X-Host", host).unwrap();
        }
        let arg = req.query();
        match req.path() {
            "/panic" => panic!("test handler panics on purpose"),
            "/sleep" => thread::sleep(Duration::from_millis(arg.parse().unwrap())),
            "/stream" => {
                let n: usize = arg.parse().unwrap();
                resp.set_body_stream(Chunks {
                    left: n,
                    fail: false,
                });
                return;
            }
            "/stream-fail" => {
                let n: usize = arg.parse().unwrap();
                resp.set_body_stream(Chunks {
                    left: n,
                    fail: true,
                });
                return;
            }
            "/status-stream" => {
                resp.set_status(arg.parse().unwrap()).unwrap();
                resp.set_body_stream(Chunks {
                    left: 1,
                    fail: false,
                });
                return;
            }
            "/close" => resp.add_header(b"Connection", b"close").unwrap(),
            "/status" => resp.set_status(arg.parse().unwrap()).unwrap(),
            "/big" => {
                resp.set_body(&vec![b'x'; arg.parse().unwrap()]);
                return;
            }
            _ => {}
        }
        resp.write(req.body());
    }
}

/// A body stream of `left` pieces of 1000 bytes ('a', 'b', ...), then the end or (`fail`)
/// an error.
pub struct Chunks {
    pub left: usize,
    pub fail: bool,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            if self.fail {
                return Err(std::io::Error::other("the stream's source broke"));
            }
            return Ok(0);
        }
        self.left -= 1;
        let n = buf.len().min(1000);
        buf[..n].fill(b'a' + (self.left % 26) as u8);
        Ok(n)
    }
}

/// What `serve` returned, and when.
type Served = (Result<(), prefork::Error>, Instant);

pub struct Server {
    pub addr: SocketAddr,
    stop_w: OwnedFd,
    lifeline_w: Mutex<Option<OwnedFd>>,
    done: Mutex<Option<mpsc::Receiver<Served>>>,
    pub master_death_seen: Arc<AtomicBool>,
    pub log: Arc<MemLog>,
}

fn pipe(nonblocking_read: bool) -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    if nonblocking_read {
        // SAFETY: fds[0] is a descriptor we just created.
        unsafe { libc::fcntl(fds[0], libc::F_SETFL, libc::O_NONBLOCK) };
    }
    // SAFETY: both descriptors are new and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Options beyond the HTTP configuration.
pub struct Opts {
    pub grace: Duration,
    pub lifeline: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            grace: Duration::from_secs(5),
            lifeline: false,
        }
    }
}

impl Server {
    pub fn start(cfg: HttpConfig) -> Server {
        Server::start_with(Arc::new(Echo), cfg, Opts::default())
    }

    pub fn start_with(handler: Arc<dyn Handler>, cfg: HttpConfig, opts: Opts) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_r, stop_w) = pipe(true);
        let (life_r, life_w) = if opts.lifeline {
            let (r, w) = pipe(false);
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        let seen = Arc::new(AtomicBool::new(false));
        let log = Arc::new(MemLog::default());
        let (tx, rx) = mpsc::channel();
        let (seen2, log2) = (Arc::clone(&seen), Arc::clone(&log));
        thread::spawn(move || {
            let mut hook = move || seen2.store(true, Ordering::SeqCst);
            let hook_ref: &mut (dyn FnMut() + Send) = &mut hook;
            let result = serve_for_tests(
                listener,
                &handler,
                &cfg,
                stop_r.as_raw_fd(),
                life_r.as_ref().map(|f| f.as_raw_fd()),
                Some(hook_ref),
                opts.grace,
                &*log2,
            );
            drop(stop_r);
            drop(life_r);
            let _ = tx.send((result, Instant::now()));
        });
        Server {
            addr,
            stop_w,
            lifeline_w: Mutex::new(life_w),
            done: Mutex::new(Some(rx)),
            master_death_seen: seen,
            log,
        }
    }

    fn poke(&self, byte: u8) {
        let fd: RawFd = self.stop_w.as_raw_fd();
        // SAFETY: writing one byte from a valid buffer to our own pipe.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }

    /// Asks for a graceful drain (as SIGTERM does).
    pub fn stop(&self) {
        self.poke(b'T');
    }

    /// Asks for a stop without grace period (a second SIGINT in the master sends this).
    pub fn stop_now(&self) {
        self.poke(b'K');
    }

    /// Closes the lifeline's write end, as the master's death does.
    pub fn kill_master(&self) {
        self.lifeline_w.lock().unwrap().take();
    }

    /// Waits for `serve` to return; returns how long that took.
    pub fn join(&self, limit: Duration) -> Duration {
        let t0 = Instant::now();
        self.join_returned_at(limit);
        t0.elapsed()
    }

    /// Waits for `serve` to return; returns the instant it did, as taken on its thread (the
    /// wake-up of the joining thread is not part of it).
    pub fn join_returned_at(&self, limit: Duration) -> Instant {
        let rx = self.done.lock().unwrap().take().expect("joined twice");
        match rx.recv_timeout(limit) {
            Ok((result, at)) => {
                result.expect("serve returned an error");
                at
            }
            Err(_) => panic!("serve did not return within {limit:?}"),
        }
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pending = self.done.lock().map(|mut d| d.take()).ok().flatten();
        if let Some(rx) = pending {
            self.poke(b'K');
            let _ = rx.recv_timeout(IO_TIMEOUT);
        }
    }
}

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body was chunked.
    pub chunked: bool,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

pub struct Client {
    pub s: TcpStream,
    buf: Vec<u8>,
    eof: bool,
    /// Every byte received, in order.
    received: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect(addr).unwrap())
    }

    pub fn from_stream(s: TcpStream) -> Client {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            s,
            buf: Vec::new(),
            eof: false,
            received: Vec::new(),
        }
    }

    /// Every byte received so far, as text, with each Date value (checked for its shape)
    /// replaced by `<date>`.
    pub fn received(&self) -> String {
        let text = String::from_utf8(self.received.clone()).expect("responses are UTF-8 here");
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("\r\nDate: ") {
            let (head, tail) = rest.split_at(i + 8);
            let date = tail.get(..29).unwrap_or(tail);
            assert!(
                date.len() == 29 && date.ends_with(" GMT") && date.as_bytes()[3] == b',',
                "a bad Date {date:?}"
            );
            out.push_str(head);
            out.push_str("<date>");
            rest = &tail[29..];
        }
        out.push_str(rest);
        out
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Sends one byte per write, with a pause so each really is its own segment.
    pub fn send_bytewise(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.s.write_all(std::slice::from_ref(b)).unwrap();
            thread::sleep(Duration::from_micros(200));
        }
    }

    /// Reads more bytes; false on EOF (or reset). Panics on timeout.
    fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut chunk = [0u8; 65536];
        match self.s.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                self.received.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                panic!(
                    "no response within {IO_TIMEOUT:?}; have {:?}",
                    String::from_utf8_lossy(&self.buf)
                )
            }
            Err(_) => {
                self.eof = true;
                false
            }
        }
    }

    /// Exactly `n` more bytes after the responses read so far (on a connection taken over).
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        self.take(n)
    }

    /// Every byte after the responses read so far, until the server closes.
    pub fn rest(&mut self) -> Vec<u8> {
        while self.fill() {}
        std::mem::take(&mut self.buf)
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill(), "connection closed inside a response body");
        }
        self.buf.drain(..n).collect()
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf.drain(..i + 2).take(i).collect()).unwrap();
                return Some(line);
            }
            if !self.fill() {
                assert!(
                    self.buf.is_empty(),
                    "closed mid-line: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
        }
    }

    /// Reads one response (interim ones included); `None` on a clean close before it.
    /// `head_request`: the response is to a HEAD and has no body whatever it declares.
    pub fn response(&mut self, head_request: bool) -> Option<Resp> {
        let status_line = self.line()?;
        let rest = status_line
            .strip_prefix("HTTP/1.1 ")
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let status: u16 = rest[..3].parse().unwrap();
        assert!(
            rest.len() == 3 || rest.as_bytes()[3] == b' ',
            "{status_line:?}"
        );
        let mut headers = Vec::new();
        loop {
            let line = self.line().expect("closed inside a response head");
            if line.is_empty() {
                break;
            }
            let (n, v) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header {line:?}"));
            headers.push((n.to_string(), v.trim().to_string()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
            chunked: false,
        };
        if status < 200 || status == 204 || status == 304 || head_request {
            return Some(resp);
        }
        if resp.header("transfer-encoding").is_some() {
            assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
            assert!(
                resp.header("content-length").is_none(),
                "CL and TE both sent"
            );
            resp.chunked = true;
            loop {
                let size_line = self.line().expect("closed inside a chunked body");
                let size = usize::from_str_radix(&size_line, 16).unwrap();
                if size == 0 {
                    assert_eq!(self.line().as_deref(), Some(""), "trailers are never sent");
                    break;
                }
                let data = self.take(size);
                resp.body.extend_from_slice(&data);
                assert_eq!(self.take(2), b"\r\n");
            }
        } else if let Some(cl) = resp.header("content-length") {
            assert_eq!(resp.count("content-length"), 1);
            let n: usize = cl.parse().unwrap();
            resp.body = self.take(n);
        } else {
            // Close-delimited.
            while self.fill() {}
            resp.body = std::mem::take(&mut self.buf);
        }
        Some(resp)
    }

    /// True when the server closed the connection: nothing more arrives but EOF. A pipelined
    /// probe request tells an open connection (answered) from a closed one.
    pub fn closed(&mut self) -> bool {
        if self.buf.is_empty() && !self.eof {
            let probe = b"GET /__probe HTTP/1.1\r\nHost: probe\r\n\r\n";
            if self.s.write_all(probe).is_err() {
                return true;
            }
        }
        match self.response(false) {
            None => true,
            Some(r) => {
                assert_eq!(
                    r.header("x-path"),
                    Some("/__probe"),
                    "an unexpected extra response: {r:?}"
                );
                false
            }
        }
    }

    /// Asserts the server closed the connection with nothing more to say.
    pub fn expect_closed(&mut self) {
        assert!(self.closed(), "the connection stayed open");
    }
}

/// Sends `request` on a fresh connection to a fresh server with `cfg`, reads responses until
/// the connection closes or the probe is answered, and asserts the statuses and the close.
pub fn check_with(cfg: HttpConfig, request: &[u8], statuses: &[u16], closed: bool) -> Vec<Resp> {
    exchange(cfg, request, statuses, closed).0
}

pub fn check(request: &[u8], statuses: &[u16], closed: bool) -> Vec<Resp> {
    check_with(cfg(), request, statuses, closed)
}

/// `check_with`, and the responses' exact bytes: everything received before the probe that
/// tells whether the connection is open (`Client::received`: Dates read `<date>`) is `bytes`.
pub fn check_bytes_with(
    cfg: HttpConfig,
    request: &[u8],
    statuses: &[u16],
    closed: bool,
    bytes: &str,
) -> Vec<Resp> {
    let (responses, got) = exchange(cfg, request, statuses, closed);
    assert_eq!(
        got,
        bytes,
        "bytes for {:?}",
        String::from_utf8_lossy(request)
    );
    responses
}

pub fn check_bytes(request: &[u8], statuses: &[u16], closed: bool, bytes: &str) -> Vec<Resp> {
    check_bytes_with(cfg(), request, statuses, closed, bytes)
}

/// The responses to `request` (asserted as `check_with` says) and the bytes received before the
/// probe.
fn exchange(
    cfg: HttpConfig,
    request: &[u8],
    statuses: &[u16],
    closed: bool,
) -> (Vec<Resp>, String) {
    let server = Server::start(cfg);
    let mut c = server.connect();
    c.send(request);
    let responses = collect(&mut c, statuses.len(), head_flags(request));
    let got: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(
        got,
        statuses,
        "statuses for {:?}",
        String::from_utf8_lossy(request)
    );
    let bytes = c.received();
    assert_eq!(
        c.closed(),
        closed,
        "closed after {:?}",
        String::from_utf8_lossy(request)
    );
    (responses, bytes)
}

/// The bytes of an engine error response (the connection closes after it), for
/// `check_bytes`: `status` is the code and its reason, `400 Bad Request`.
pub fn engine_error(status: &str) -> String {
    format!("HTTP/1.1 {status}\r\nDate: <date>\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
}

/// Whether each request in a pipelined batch is a HEAD (so its response has no body).
pub fn head_flags(request: &[u8]) -> Vec<bool> {
    let text = String::from_utf8_lossy(request);
    let mut flags = Vec::new();
    for line in text.split("\r\n") {
        if line.ends_with(" HTTP/1.1") || line.ends_with(" HTTP/1.0") {
            flags.push(line.starts_with("HEAD "));
        }
    }
    flags
}

/// Reads `n` responses (interim 1xx included) unless the connection closes first.
pub fn collect(c: &mut Client, n: usize, heads: Vec<bool>) -> Vec<Resp> {
    let mut out = Vec::new();
    let mut finals = 0;
    while out.len() < n {
        let is_head = heads.get(finals).copied().unwrap_or(false);
        match c.response(is_head) {
            Some(r) => {
                if r.status >= 200 {
                    finals += 1;
                }
                out.push(r);
            }
            None => break,
        }
    }
    out
}

/// A minimal valid request.
pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}
