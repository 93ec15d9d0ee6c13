//! Out of descriptors, accept pauses instead of spinning, and resumes once a descriptor is
//! free. Its own test binary: RLIMIT_NOFILE is process-wide.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prefork::http::testing::serve_for_tests;
use prefork::{Handler, HttpConfig, Level, Logger, Request, Response};
use socket2::{Domain, Socket, Type};

struct Hello;

impl Handler for Hello {
    fn handle(&self, _req: &Request<'_>, resp: &mut Response) {
        resp.write(b"hi");
    }
}

#[derive(Default)]
struct MemLog(Mutex<Vec<String>>);

impl Logger for MemLog {
    fn log(&self, _level: Level, message: &str) {
        self.0.lock().unwrap().push(message.to_string());
    }
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills a plain struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn set_nofile(soft: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let old = lim.rlim_cur;
        lim.rlim_cur = soft;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        old
    }
}

#[test]
fn accept_pauses_on_emfile_and_resumes() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    assert_eq!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) },
        0
    );
    // SAFETY: both descriptors are new and ours.
    let (stop_r, stop_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let log = Arc::new(MemLog::default());
    let log2 = Arc::clone(&log);
    let server = std::thread::spawn(move || {
        let handler: Arc<dyn Handler> = Arc::new(Hello);
        let cfg = HttpConfig::default();
        let r = serve_for_tests(
            listener,
            &handler,
            &cfg,
            stop_r.as_raw_fd(),
            None,
            None,
            Duration::from_secs(1),
            &*log2,
        );
        drop(stop_r);
        r
    });
    // Let the loop set itself up (epoll instance, registrations) before the limit drops.
    let mut warm = std::net::TcpStream::connect(addr).unwrap();
    warm.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(warm.read(&mut buf).unwrap() > 0);

    // Client sockets made now, connected once no descriptor is left for the server.
    let clients: Vec<Socket> = (0..3)
        .map(|_| Socket::new(Domain::IPV4, Type::STREAM, None).unwrap())
        .collect();
    let spare = std::fs::File::open("/dev/null").unwrap();
    // A new descriptor takes the lowest free number: with the limit at that number, none can
    // be made; closing `spare` (below it) allows exactly one.
    // SAFETY: dup of a descriptor we own; the copy is closed at once.
    let lowest_free = unsafe { libc::dup(spare.as_raw_fd()) };
    assert!(lowest_free > spare.as_raw_fd());
    // SAFETY: closing the copy made just above.
    unsafe { libc::close(lowest_free) };
    let old = set_nofile(lowest_free as u64);
    for c in &clients {
        c.connect(&addr.into()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (&*c)
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
    }
    // The server cannot accept them; it must not burn the CPU retrying.
    let (cpu0, t0) = (cpu_time(), Instant::now());
    std::thread::sleep(Duration::from_millis(800));
    let cpu = cpu_time() - cpu0;
    let wall = t0.elapsed();
    assert!(cpu < wall / 5, "spinning: {cpu:?} of CPU in {wall:?}");
    assert!(
        log.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("pausing accept"))
            .count()
            == 1
    );

    // Nothing was served meanwhile.
    clients[0]
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut first = &clients[0];
    let e = first
        .read(&mut buf)
        .expect_err("served without a descriptor");
    assert!(matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));
    clients[0]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();

    // One descriptor freed: one connection gets in and is served.
    drop(spare);
    let n = first.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200 OK"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );

    set_nofile(old);
    for c in &clients[1..] {
        let n = (&*c).read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
    }
    // SAFETY: writing one byte to our own pipe.
    unsafe { libc::write(stop_w.as_raw_fd(), b"K".as_ptr().cast(), 1) };
    server.join().unwrap().unwrap();
}
