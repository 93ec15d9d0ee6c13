//! The engine serving several listeners at once, TCP and Unix (a socket file and an abstract
//! name): over a Unix socket keep-alive, pipelining, bodies (sized and chunked), deferred
//! responses and taking the connection over work as over TCP; each request names its
//! listener; PROXY protocol set per listener gives the header's client over a Unix socket; and
//! the serve leaves no descriptor behind. Its own test binary, so that no other test opens
//! descriptors meanwhile.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use prefork::http::testing::serve_many_for_tests;
use prefork::{Handler, Hijacked, HttpConfig, Request, Response, StderrLogger};

/// `/local`: the listener and the peer; `/body`: the body back; `/later`: a deferred
/// answer; `/echo`: takes the connection over and echoes it.
struct Where;

impl Handler for Where {
    fn handle(&self, req: &Request<'_>, resp: &mut Response) {
        match req.path() {
            "/local" => {
                let local = req.local_addr().map(|a| a.to_string()).unwrap_or_default();
                let peer = req.peer_addr().map(|a| a.to_string()).unwrap_or("-".into());
                resp.write(format!("{local} {peer}").as_bytes());
            }
            "/body" => resp.write(req.body()),
            "/later" => {
                let mut d = resp.defer().unwrap();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    d.write(b"later");
                    d.complete();
                });
            }
            "/echo" => {
                resp.hijack(|mut conn: Hijacked| {
                    let mut buf = [0u8; 64];
                    while let Ok(n @ 1..) = conn.read(&mut buf) {
                        if conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                })
                .unwrap();
                resp.set_status(101).unwrap();
                resp.add_header(b"Upgrade", b"echo").unwrap();
            }
            _ => resp.write(b"ok"),
        }
    }
}

fn open_fds() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn unix(path: &std::path::Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Sends `requests` (the last with `Connection: close`) and returns every byte of the answer.
fn exchange(mut s: impl Read + Write, requests: &[u8]) -> String {
    s.write_all(requests).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    String::from_utf8(raw).unwrap()
}

fn bodies(raw: &str) -> Vec<&str> {
    raw.split("HTTP/1.1 ")
        .skip(1)
        .map(|r| r.split_once("\r\n\r\n").map_or("", |(_, b)| b))
        .collect()
}

fn serve_over_every_kind(dir: &std::path::Path) {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let file = dir.join("e.sock");
    let proxied = dir.join("p.sock");
    let name = format!("pf-http-unix-{}", std::process::id());
    let abstract_l =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let listeners: Vec<(OwnedFd, bool)> = vec![
        (tcp.into(), false),
        (UnixListener::bind(&file).unwrap().into(), false),
        (UnixListener::bind(&proxied).unwrap().into(), true),
        (abstract_l.into(), false),
    ];
    let mut fds = [0; 2];
    assert_eq!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) },
        0
    );
    let (stop_r, stop_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let server = std::thread::spawn(move || {
        let handler: Arc<dyn Handler> = Arc::new(Where);
        serve_many_for_tests(
            listeners,
            &handler,
            &HttpConfig::default(),
            stop_r.as_raw_fd(),
            Duration::from_secs(2),
            &StderrLogger,
        )
    });

    // Keep-alive, pipelining and bodies in one write on the socket file.
    let raw = exchange(
        unix(&file),
        b"GET /local HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /body HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
          POST /body HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /later HTTP/1.1\r\nHost: a\r\n\r\n\
          GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    let file_addr = format!("unix:{}", file.display());
    assert_eq!(
        bodies(&raw),
        [
            format!("{file_addr} -").as_str(),
            "hello",
            "abc",
            "later",
            "ok"
        ],
        "{raw}"
    );

    // Each request names its listener; TCP has a peer address, Unix sockets none.
    let tcp_body = exchange(
        std::net::TcpStream::connect(tcp_addr).unwrap(),
        b"GET /local HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    let (local, peer) = bodies(&tcp_body)[0].split_once(' ').unwrap();
    assert_eq!(local, tcp_addr.to_string());
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    let at = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let abs = UnixStream::connect_addr(&at).unwrap();
    abs.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let raw = exchange(
        abs,
        b"GET /local HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(bodies(&raw), [format!("unix:@{name} -").as_str()]);

    // PROXY protocol on one Unix listener only: the header's client is the peer.
    let raw = exchange(
        unix(&proxied),
        b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n\
          GET /local HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        bodies(&raw),
        [format!("unix:{} [2001:db8::7]:40000", proxied.display()).as_str()]
    );
    // Closed unanswered (with the request unread, a close the client may see as a reset).
    let mut s = unix(&proxied);
    s.write_all(b"GET /local HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    assert!(
        raw.is_empty()
            && read.map_or_else(
                |e| e.kind() == std::io::ErrorKind::ConnectionReset,
                |_| true
            ),
        "a connection without its header got {raw:?}"
    );

    // Taking a Unix connection over.
    let mut s = unix(&file);
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "), "{head:?}");
    s.write_all(b"ping").unwrap();
    let mut echoed = [0u8; 4];
    s.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping");
    drop(s);

    unsafe { libc::write(stop_w.as_raw_fd(), b"T".as_ptr().cast(), 1) };
    server.join().unwrap().unwrap();
}

#[test]
fn unix_and_tcp_listeners_serve_alike_and_leave_no_descriptor() {
    let dir = std::env::temp_dir().join(format!("pf-http-unix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let before = open_fds();
    serve_over_every_kind(&dir);
    // The echo thread ends with the client's close; give it and the kernel a moment.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(open_fds(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}
