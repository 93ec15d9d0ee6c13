//! `serve` leaves no descriptor behind: after a drain with connections in every state (idle,
//! mid-head, mid-body, handler running, lingering after an error) the process has exactly the
//! descriptors it had before. Its own test binary, so no other test opens files meanwhile.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use prefork::http::testing::serve_for_tests;
use prefork::{Handler, HttpConfig, Request, Response, StderrLogger};

struct Sleepy;

impl Handler for Sleepy {
    fn handle(&self, req: &Request<'_>, resp: &mut Response) {
        if req.path() == "/sleep" {
            std::thread::sleep(Duration::from_millis(300));
        }
        resp.write(b"ok");
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

fn serve_once(handler_threads: usize) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    assert_eq!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) },
        0
    );
    // SAFETY: both descriptors are new and ours.
    let (stop_r, stop_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let cfg = HttpConfig {
        handler_threads,
        ..HttpConfig::default()
    };
    let server = std::thread::spawn(move || {
        let handler: Arc<dyn Handler> = Arc::new(Sleepy);
        let grace = Duration::from_millis(500);
        serve_for_tests(
            listener,
            &handler,
            &cfg,
            stop_r.as_raw_fd(),
            None,
            None,
            grace,
            &StderrLogger,
        )
    });
    let connect = || {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    };
    let mut buf = [0u8; 1024];
    let mut idle = connect();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert!(idle.read(&mut buf).unwrap() > 0);
    let mut mid_head = connect();
    mid_head.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    let mut mid_body = connect();
    mid_body
        .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nabc")
        .unwrap();
    let mut busy = connect();
    busy.write_all(b"GET /sleep HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut lingering = connect();
    lingering.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(lingering.read(&mut buf).unwrap() > 0);
    std::thread::sleep(Duration::from_millis(50));
    // SAFETY: writing one byte to our own pipe.
    unsafe { libc::write(stop_w.as_raw_fd(), b"T".as_ptr().cast(), 1) };
    server.join().unwrap().unwrap();
    drop((idle, mid_head, mid_body, busy, lingering));
}

#[test]
fn serve_closes_every_descriptor_it_opened() {
    let before = open_fds();
    serve_once(0);
    serve_once(2);
    // Handler threads that were idle have been joined; give the kernel a moment to close the
    // client sockets dropped above.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(open_fds(), before);
}
