//! The hot path allocates nothing once warm: after a first batch has sized the buffers, more
//! keep-alive and pipelined requests (with bodies, chunked or not) are parsed, handled and
//! answered without a single heap allocation. Only the test thread's allocations count: the
//! test harness's own threads may allocate meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use prefork::http::testing::MemoryConnection;
use prefork::{Handler, HttpConfig, Request, Response};

struct Counting;

thread_local! {
    // Const-initialized and without a destructor: reading it never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A handler that allocates nothing itself: headers and body from static data.
struct Hello;

impl Handler for Hello {
    fn handle(&self, req: &Request<'_>, resp: &mut Response) {
        resp.add_header(b"Content-Type", b"text/plain").unwrap();
        resp.add_header(b"Server", b"prefork").unwrap();
        if req.method() == "POST" {
            resp.write(req.body());
        } else {
            resp.write(b"Hello, World!");
        }
    }
}

#[test]
fn no_allocation_per_request_once_warm() {
    let cfg = HttpConfig::default();
    let handler = Hello;
    let mut conn = MemoryConnection::new(&cfg, &handler);
    let mut batch = Vec::new();
    for i in 0..16 {
        batch.extend_from_slice(
            format!("GET /plaintext?{i} HTTP/1.1\r\nHost: localhost:8080\r\nAccept: */*\r\nUser-Agent: wrk\r\n\r\n")
                .as_bytes(),
        );
    }
    batch.extend_from_slice(b"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
    batch.extend_from_slice(
        b"POST /e HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    );
    let mut out = Vec::with_capacity(1 << 20);
    // Warm-up: sizes every buffer.
    conn.feed(&batch, &mut out);
    assert_eq!(
        out.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count(),
        18
    );
    out.clear();

    COUNTING.with(|c| c.set(true));
    for _ in 0..100 {
        conn.feed(&batch, &mut out);
        out.clear();
    }
    COUNTING.with(|c| c.set(false));
    let allocs = ALLOCS.load(Ordering::SeqCst);
    assert!(!conn.finished());
    assert_eq!(
        allocs, 0,
        "{allocs} allocations for 1800 requests once warm"
    );
}
