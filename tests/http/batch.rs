//! A handler that takes its requests in batches (`Handler::handle_batch`): which requests make
//! a batch, what an early return and a misplaced response that ends a batch do, and that the
//! answers are those `handle` would give, in order.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use prefork::{Handler, MAX_BATCH, Request, Response};

use crate::support::*;

/// `answer` in batches. Records the size of every batch and, in order, every request answered
/// (`batch /x` or `one /x`). Answers at most `take` requests per batch (0: all), and with
/// `misuse` goes on after a response that ends the batch.
#[derive(Default)]
struct Batcher {
    take: usize,
    misuse: bool,
    sizes: Mutex<Vec<usize>>,
    seen: Mutex<Vec<String>>,
}

impl Batcher {
    fn record(&self, req: &Request<'_>, how: &str) {
        if !is_probe(req) {
            self.seen
                .lock()
                .unwrap()
                .push(format!("{how} {}", req.target()));
        }
    }
}

/// `Echo`, but `/later` is deferred and completed with "late" 50 ms later, from a thread.
fn answer(req: &Request<'_>, resp: &mut Response) {
    if req.path() != "/later" {
        return Echo.handle(req, resp);
    }
    let mut d = resp.defer().unwrap();
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        d.response().write(b"late");
        d.complete();
    });
}

/// The request with which `Client::closed` tells an open connection: not the test's.
fn is_probe(req: &Request<'_>) -> bool {
    req.path().starts_with("/__probe")
}

impl Handler for Batcher {
    fn handle(&self, req: &Request<'_>, resp: &mut Response) {
        self.record(req, "one");
        answer(req, resp);
    }

    fn batches(&self) -> bool {
        true
    }

    fn handle_batch(&self, reqs: &[Request<'_>], resps: &mut [Response]) -> usize {
        if !is_probe(&reqs[0]) {
            self.sizes.lock().unwrap().push(reqs.len());
        }
        let n = match self.take {
            0 => reqs.len(),
            take => take.min(reqs.len()),
        };
        for (i, (req, resp)) in reqs.iter().zip(resps.iter_mut()).take(n).enumerate() {
            self.record(req, "batch");
            answer(req, resp);
            if resp.ends_batch() && !self.misuse {
                return i + 1;
            }
        }
        n
    }
}

/// Sends `request` in one write to a server with `handler` and reads `statuses`; returns the
/// responses, whether the connection closed after them, and the server.
fn run(handler: Arc<Batcher>, request: &[u8], statuses: &[u16]) -> (Vec<Resp>, bool, Server) {
    let server = Server::start_with(handler, cfg(), Opts::default());
    let mut c = server.connect();
    c.send(request);
    let rs = collect(&mut c, statuses.len(), head_flags(request));
    let got: Vec<u16> = rs.iter().map(|r| r.status).collect();
    assert_eq!(
        got,
        statuses,
        "statuses for {:?}",
        String::from_utf8_lossy(request)
    );
    let closed = c.closed();
    (rs, closed, server)
}

fn gets(paths: impl IntoIterator<Item = String>) -> Vec<u8> {
    paths.into_iter().flat_map(|p| get(&p)).collect()
}

fn paths(rs: &[Resp]) -> Vec<&str> {
    rs.iter().map(|r| r.header("x-path").unwrap()).collect()
}

#[test]
fn one_read_of_pipelined_requests_is_one_batch_answered_in_order() {
    let h = Arc::new(Batcher::default());
    let batch = gets((0..16).map(|i| format!("/{i}?q={i}")));
    let (rs, closed, _server) = run(Arc::clone(&h), &batch, &[200; 16]);
    assert!(!closed);
    assert_eq!(*h.sizes.lock().unwrap(), [16]);
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(r.header("x-path"), Some(format!("/{i}").as_str()));
        assert_eq!(r.header("x-query"), Some(format!("q={i}").as_str()));
        assert_eq!(
            r.header("x-headers"),
            Some("1"),
            "each request sees its own fields"
        );
        assert_eq!(r.header("x-host"), Some("t"));
    }
}

#[test]
fn more_than_max_batch_requests_make_several_batches() {
    let h = Arc::new(Batcher::default());
    let n = MAX_BATCH + 8;
    let (rs, _, _server) = run(
        Arc::clone(&h),
        &gets((0..n).map(|i| format!("/{i}"))),
        &vec![200; n],
    );
    assert_eq!(*h.sizes.lock().unwrap(), [MAX_BATCH, 8]);
    let want: Vec<String> = (0..n).map(|i| format!("/{i}")).collect();
    assert_eq!(paths(&rs), want);
}

#[test]
fn bodies_join_a_batch_when_whole_and_a_chunked_one_goes_one_by_one() {
    let h = Arc::new(Batcher::default());
    let batch = b"POST /1 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc\
GET /2 HTTP/1.1\r\nHost: t\r\n\r\n\
POST /3 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n1\r\nf\r\n0\r\n\r\n\
GET /4 HTTP/1.1\r\nHost: t\r\n\r\n";
    let (rs, closed, _server) = run(Arc::clone(&h), batch, &[200; 4]);
    assert!(!closed);
    let bodies: Vec<&[u8]> = rs.iter().map(|r| r.body.as_slice()).collect();
    assert_eq!(bodies, [&b"abc"[..], b"", b"def", b""]);
    assert_eq!(
        *h.seen.lock().unwrap(),
        ["batch /1", "batch /2", "one /3", "one /4"],
        "what follows a request taken one by one in the same read goes one by one too"
    );
}

#[test]
fn requests_left_unanswered_come_again_in_the_next_batch() {
    let h = Arc::new(Batcher {
        take: 3,
        ..Batcher::default()
    });
    let (rs, _, _server) = run(
        Arc::clone(&h),
        &gets((0..8).map(|i| format!("/{i}"))),
        &[200; 8],
    );
    assert_eq!(paths(&rs), ["/0", "/1", "/2", "/3", "/4", "/5", "/6", "/7"]);
    assert_eq!(*h.sizes.lock().unwrap(), [8, 5, 2]);
    let seen = h.seen.lock().unwrap();
    let want: Vec<String> = (0..8).map(|i| format!("batch /{i}")).collect();
    assert_eq!(*seen, want, "every request handled once, in order");
}

#[test]
fn a_batch_ends_after_a_request_that_closes_the_connection() {
    let h = Arc::new(Batcher::default());
    let batch = [
        get("/a"),
        b"GET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(),
        get("/c"),
    ]
    .concat();
    let (rs, closed, _server) = run(Arc::clone(&h), &batch, &[200, 200]);
    assert!(closed && rs[1].closes());
    assert_eq!(*h.sizes.lock().unwrap(), [2]);
}

#[test]
fn a_response_that_closes_ends_the_batch_and_the_rest_is_not_handled() {
    let h = Arc::new(Batcher::default());
    let (rs, closed, _server) = run(
        Arc::clone(&h),
        &gets(["/a", "/close", "/c"].map(String::from)),
        &[200, 200],
    );
    assert!(closed && rs[1].closes());
    assert_eq!(*h.seen.lock().unwrap(), ["batch /a", "batch /close"]);
}

#[test]
fn answers_after_a_response_that_ends_the_batch_are_dropped_and_logged() {
    let h = Arc::new(Batcher {
        misuse: true,
        ..Batcher::default()
    });
    let batch = gets(["/a", "/stream?2", "/c", "/d"].map(String::from));
    let (rs, closed, server) = run(Arc::clone(&h), &batch, &[200, 200]);
    assert_eq!(rs[1].body.len(), 2000, "the streamed body is sent whole");
    assert!(closed, "the connection closes after the streamed response");
    assert_eq!(h.seen.lock().unwrap().len(), 4);
    let log = server.log.0.lock().unwrap();
    assert!(
        log.iter()
            .any(|l| l.contains("handle_batch answered requests after")),
        "{log:?}"
    );
}

#[test]
fn a_panicking_batch_answers_500_and_closes() {
    let h = Arc::new(Batcher::default());
    let (_, closed, server) = run(
        Arc::clone(&h),
        &gets(["/a", "/panic", "/c"].map(String::from)),
        &[500],
    );
    assert!(closed);
    let log = server.log.0.lock().unwrap();
    assert!(log.iter().any(|l| l.contains("panicked")), "{log:?}");
}

#[test]
fn a_deferred_response_ends_the_batch_and_the_rest_waits_for_it() {
    let h = Arc::new(Batcher::default());
    let batch = gets(["/a", "/later", "/c"].map(String::from));
    let (rs, closed, _server) = run(Arc::clone(&h), &batch, &[200; 3]);
    assert_eq!(rs[1].body, b"late");
    assert_eq!(rs[2].header("x-path"), Some("/c"));
    assert!(!closed);
    assert_eq!(
        *h.sizes.lock().unwrap(),
        [3, 1],
        "{:?}",
        h.seen.lock().unwrap()
    );
}

#[test]
fn a_head_an_earlier_read_began_leads_the_next_batch() {
    let h = Arc::new(Batcher::default());
    let server = Server::start_with(Arc::clone(&h) as Arc<dyn Handler>, cfg(), Opts::default());
    let mut c = server.connect();
    c.send(b"GET /a HTTP/1.1\r\nHo");
    thread::sleep(Duration::from_millis(100)); // read on its own
    let rest = [b"st: t\r\n\r\n".to_vec(), get("/b"), get("/c")].concat();
    c.send(&rest);
    let rs = collect(&mut c, 3, vec![false; 3]);
    assert_eq!(paths(&rs), ["/a", "/b", "/c"]);
    assert_eq!(
        *h.seen.lock().unwrap(),
        ["batch /a", "batch /b", "batch /c"]
    );
    assert_eq!(*h.sizes.lock().unwrap(), [3]);
}

/// A server with `h`, a connection to hold its loop with, and `n` others, all accepted.
fn connected(h: &Arc<Batcher>, n: usize) -> (Server, Client, Vec<Client>) {
    let server = Server::start_with(Arc::clone(h) as Arc<dyn Handler>, cfg(), Opts::default());
    let hold = server.connect();
    let cs = (0..n).map(|_| server.connect()).collect();
    thread::sleep(Duration::from_millis(100)); // every connection accepted, idle
    (server, hold, cs)
}

/// Holds the event loop in a 400 ms `/sleep` on `hold`: what the other connections send
/// meanwhile is ready in its next turn.
fn hold_the_loop(hold: &mut Client) {
    hold.send(&get("/sleep?400"));
    thread::sleep(Duration::from_millis(50)); // the loop is in the handler now
}

/// Connections that each send `requests[i]` while the event loop is held by a `/sleep` on
/// another connection: when it turns again, all of them are ready in the same turn. Returns
/// their responses (`counts[i]` each) and whether each connection closed after them.
fn one_turn(
    h: &Arc<Batcher>,
    requests: &[Vec<u8>],
    counts: &[usize],
) -> (Vec<Vec<Resp>>, Vec<bool>) {
    let (_server, mut hold, mut cs) = connected(h, requests.len());
    hold_the_loop(&mut hold);
    for (c, req) in cs.iter_mut().zip(requests) {
        c.send(req);
    }
    let rs: Vec<Vec<Resp>> = cs
        .iter_mut()
        .zip(requests.iter().zip(counts))
        .map(|(c, (req, &n))| collect(c, n, head_flags(req)[..n].to_vec()))
        .collect();
    assert_eq!(collect(&mut hold, 1, vec![false])[0].status, 200);
    let closed = cs.iter_mut().map(Client::closed).collect();
    (rs, closed)
}

/// Whether one batch held exactly the requests with the targets `want`.
fn batched_together(h: &Batcher, want: &[&str]) -> bool {
    h.sizes.lock().unwrap().contains(&want.len())
        && want
            .iter()
            .all(|p| h.seen.lock().unwrap().contains(&format!("batch {p}")))
}

#[test]
fn requests_of_several_connections_in_one_turn_make_one_batch() {
    let h = Arc::new(Batcher::default());
    let reqs: Vec<Vec<u8>> = (1..=4).map(|i| get(&format!("/{i}?q={i}"))).collect();
    let (rs, closed) = one_turn(&h, &reqs, &[1; 4]);
    for (i, r) in rs.iter().enumerate() {
        let r = &r[0];
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-path"), Some(format!("/{}", i + 1).as_str()));
        assert_eq!(r.header("x-query"), Some(format!("q={}", i + 1).as_str()));
    }
    assert_eq!(closed, [false; 4]);
    assert!(
        batched_together(&h, &["/1?q=1", "/2?q=2", "/3?q=3", "/4?q=4"]),
        "sizes {:?}, seen {:?}",
        h.sizes.lock().unwrap(),
        h.seen.lock().unwrap()
    );
}

#[test]
fn pipelined_connections_share_a_batch_each_answered_in_its_order() {
    let h = Arc::new(Batcher::default());
    let reqs = vec![
        gets(["/a1", "/a2", "/a3"].map(String::from)),
        gets(["/b1", "/b2"].map(String::from)),
    ];
    let (rs, _) = one_turn(&h, &reqs, &[3, 2]);
    assert_eq!(paths(&rs[0]), ["/a1", "/a2", "/a3"]);
    assert_eq!(paths(&rs[1]), ["/b1", "/b2"]);
    assert!(batched_together(&h, &["/a1", "/a2", "/a3", "/b1", "/b2"]));
}

#[test]
fn requests_a_batch_across_connections_leaves_unanswered_come_again() {
    let h = Arc::new(Batcher {
        take: 3,
        ..Batcher::default()
    });
    let reqs: Vec<Vec<u8>> = (0..4)
        .map(|c| gets((0..2).map(|i| format!("/{c}-{i}"))))
        .collect();
    let (rs, closed) = one_turn(&h, &reqs, &[2; 4]);
    for (c, r) in rs.iter().enumerate() {
        assert_eq!(paths(r), [format!("/{c}-0"), format!("/{c}-1")]);
    }
    assert_eq!(closed, [false; 4]);
    let seen = h.seen.lock().unwrap();
    let answered: Vec<&String> = seen.iter().filter(|s| s.contains('-')).collect();
    assert_eq!(answered.len(), 8, "every request handled once: {seen:?}");
    assert!(answered.iter().all(|s| s.starts_with("batch ")), "{seen:?}");
    let sizes = h.sizes.lock().unwrap();
    assert!(sizes.ends_with(&[8, 5, 2]), "{sizes:?}");
}

#[test]
fn a_deferred_response_in_a_batch_across_connections_holds_only_its_own() {
    let h = Arc::new(Batcher::default());
    let reqs = vec![
        gets(["/later", "/a2"].map(String::from)),
        get("/b"),
        get("/c"),
    ];
    let (rs, closed) = one_turn(&h, &reqs, &[2, 1, 1]);
    assert_eq!(rs[0][0].body, b"late");
    assert_eq!(
        rs[0][1].header("x-path"),
        Some("/a2"),
        "after the deferred one"
    );
    assert_eq!(paths(&rs[1]), ["/b"]);
    assert_eq!(paths(&rs[2]), ["/c"]);
    assert_eq!(closed, [false; 3]);
    let sizes = h.sizes.lock().unwrap();
    assert!(
        sizes.contains(&4) && sizes.contains(&2),
        "one batch of all four, then one of the two after the deferred one: {sizes:?}"
    );
}

#[test]
fn answers_after_an_ending_response_are_dropped_for_its_connection_only() {
    let h = Arc::new(Batcher {
        misuse: true,
        ..Batcher::default()
    });
    let reqs = vec![gets(["/stream?2", "/a2"].map(String::from)), get("/b")];
    let (rs, closed) = one_turn(&h, &reqs, &[1, 1]);
    assert_eq!(rs[0][0].body.len(), 2000, "the streamed body is sent whole");
    assert_eq!(paths(&rs[1]), ["/b"]);
    assert_eq!(closed, [true, false], "only the misused connection closes");
    assert!(batched_together(&h, &["/stream?2", "/a2", "/b"]));
}

#[test]
fn a_panicking_batch_across_connections_answers_each_500_and_closes_them() {
    let h = Arc::new(Batcher::default());
    let reqs = vec![get("/a"), get("/panic"), get("/c")];
    let (rs, closed) = one_turn(&h, &reqs, &[1, 1, 1]);
    for r in &rs {
        assert_eq!(r[0].status, 500);
        assert!(r[0].closes());
    }
    assert_eq!(closed, [true; 3]);
    assert!(h.sizes.lock().unwrap().contains(&3));
}

#[test]
fn a_request_whose_client_then_shuts_its_side_is_still_answered_from_a_batch() {
    let h = Arc::new(Batcher::default());
    let (_server, mut hold, mut cs) = connected(&h, 3);
    hold_the_loop(&mut hold);
    for (i, c) in cs.iter_mut().enumerate() {
        c.send(&get(&format!("/{i}")));
        c.s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    for (i, c) in cs.iter_mut().enumerate() {
        let r = c.response(false).expect("answered before the close");
        assert_eq!(r.header("x-path"), Some(format!("/{i}").as_str()));
        assert!(c.response(false).is_none(), "then closed");
    }
    assert!(batched_together(&h, &["/0", "/1", "/2"]));
}

#[test]
fn connections_that_pipeline_take_batches_of_their_own() {
    let h = Arc::new(Batcher::default());
    let (_server, mut hold, mut cs) = connected(&h, 2);
    for (i, c) in cs.iter_mut().enumerate() {
        // One read of two requests: from then on the connection pipelines.
        let first = gets([format!("/{i}-a"), format!("/{i}-b")]);
        c.send(&first);
        collect(c, 2, vec![false; 2]);
    }
    hold_the_loop(&mut hold);
    for (i, c) in cs.iter_mut().enumerate() {
        c.send(&gets((0..3).map(|k| format!("/{i}-{k}"))));
    }
    for (i, c) in cs.iter_mut().enumerate() {
        let rs = collect(c, 3, vec![false; 3]);
        assert_eq!(paths(&rs), [0, 1, 2].map(|k| format!("/{i}-{k}")));
    }
    collect(&mut hold, 1, vec![false]);
    let sizes = h.sizes.lock().unwrap();
    assert!(
        sizes.ends_with(&[3, 3]) && !sizes.contains(&6),
        "each connection's three in a batch of their own: {sizes:?}"
    );
}

#[test]
fn a_batch_across_connections_is_answered_once_it_has_max_batch_connections() {
    let h = Arc::new(Batcher::default());
    let n = MAX_BATCH + 8;
    let reqs: Vec<Vec<u8>> = (0..n).map(|i| get(&format!("/{i}"))).collect();
    let (rs, closed) = one_turn(&h, &reqs, &vec![1; n]);
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(r[0].header("x-path"), Some(format!("/{i}").as_str()));
    }
    assert!(closed.iter().all(|c| !c));
    let sizes = h.sizes.lock().unwrap();
    assert!(
        sizes.contains(&MAX_BATCH) && sizes.iter().all(|&s| s <= MAX_BATCH),
        "{sizes:?}"
    );
    assert_eq!(
        sizes.iter().sum::<usize>(),
        n + 1,
        "each request once, and the /sleep"
    );
}
