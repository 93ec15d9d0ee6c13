//! Stops an orchestrator likes: the shutdown delay (serve on, closing each connection after its
//! response, then drain), and a master that reaps the orphans re-parented to it as PID 1 of a
//! PID namespace or as a subreaper.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{Master, Outcome, all_gone, children_of, get};
use crate::{SEC, ensure, measure, stop_cleanly};

const DELAY_MS: u64 = 1500;

/// One keep-alive request on `s` (no `Connection: close` asked); the response's head and body.
fn exchange(s: &mut TcpStream, path: &str) -> Result<(String, String), String> {
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
            if raw.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&raw[end + 4..end + 4 + len]).into_owned();
                return Ok((head, body));
            }
        }
        match s.read(&mut buf) {
            Ok(0) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&raw))),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => {
                return Err(format!(
                    "read: {e} after {:?}",
                    String::from_utf8_lossy(&raw)
                ));
            }
        }
    }
}

fn connect(port: u16) -> Result<TcpStream, String> {
    let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(5 * SEC))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

fn closes(head: &str) -> bool {
    head.to_ascii_lowercase().contains("\r\nconnection: close")
}

/// Reads until the server closes `s`; true when it did (EOF) within the read timeout.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0))
}

pub fn shutdown_delay_serves_on_closing_each_connection() -> Outcome {
    serves_on_through_the_delay(false)
}

/// The same with one SO_REUSEPORT socket per child, which the master closes at the stop's
/// start while each child keeps its own open through the delay.
pub fn shutdown_delay_serves_on_closing_each_connection_reuseport() -> Outcome {
    serves_on_through_the_delay(true)
}

/// Through the delay after SIGTERM the children accept and answer (every response with
/// `Connection: close`, `stopping()` true), keep-alive connections included; then they drain,
/// and the stop takes the delay plus the drain, not more.
fn serves_on_through_the_delay(reuseport: bool) -> Outcome {
    let delay = DELAY_MS.to_string();
    let env = [
        ("PF_CHILDREN", "2"),
        ("PF_GRACE_MS", "3000"),
        ("PF_SHUTDOWN_DELAY_MS", &delay),
    ];
    let mut m = Master::start_in_mode(&env, reuseport);
    let (ready, port) = m.ready()?;
    let mut early = connect(port)?;
    let (head, body) = exchange(&mut early, "/stopping")?;
    ensure!(
        body == "false" && !closes(&head),
        "before the stop: {head:?} {body:?}"
    );
    let mut idle = connect(port)?;
    let (head, _) = exchange(&mut idle, "/pid")?;
    ensure!(
        !closes(&head),
        "before the stop, a keep-alive response closed: {head:?}"
    );

    let asked = Instant::now();
    m.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    let (head, body) = exchange(&mut early, "/stopping")?;
    ensure!(
        body == "true" && closes(&head),
        "in the delay, a keep-alive request got {head:?} {body:?}"
    );
    ensure!(
        closed_by_server(&mut early),
        "the connection stayed open after its Connection: close"
    );
    // New connections are still accepted and answered, each closed after its response.
    let mut fresh = 0;
    while asked.elapsed() < Duration::from_millis(DELAY_MS - 400) {
        let mut s =
            connect(port).map_err(|e| format!("{e} {:?} into the delay", asked.elapsed()))?;
        let (head, _) = exchange(&mut s, "/")?;
        ensure!(
            closes(&head),
            "a response in the delay kept its connection: {head:?}"
        );
        fresh += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // A keep-alive connection idle since before the stop is still served.
    let (head, _) = exchange(&mut idle, "/pid")
        .map_err(|e| format!("the idle keep-alive connection, late in the delay: {e}"))?;
    ensure!(closes(&head), "late in the delay: {head:?}");
    ensure!(
        closed_by_server(&mut idle),
        "the idle connection stayed open after its Connection: close"
    );
    // Closed on this side too, or the server's lingering close would wait for it.
    drop((early, idle));

    let status = m.wait_exit(10 * SEC)?;
    let stopped = asked.elapsed();
    measure(
        &format!("SIGTERM to master exit with a {DELAY_MS} ms shutdown delay"),
        stopped,
    );
    println!("    measure: {fresh} new connections answered during the delay");
    m.exited_ok(status)?;
    ensure!(
        stopped >= Duration::from_millis(DELAY_MS),
        "the master exited {stopped:?} after SIGTERM, inside the delay"
    );
    ensure!(
        stopped < Duration::from_millis(DELAY_MS + 2500),
        "the stop took {stopped:?}: the drain after the delay waited for nothing"
    );
    ensure!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the port still accepts after the stop"
    );
    all_gone(&ready, 2 * SEC).map(|_| ())
}

/// SIGTERM to the master, and a child asked 300 ms later says it is stopping: the shutdown
/// delay has begun.
fn sigterm_into_the_delay(m: &mut Master, port: u16) -> Outcome {
    m.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    let stopping = get(port, "/stopping").map_err(|e| format!("in the delay: {e}"))?;
    ensure!(
        stopping == "true",
        "in the delay, /stopping said {stopping:?}"
    );
    Ok(())
}

/// A second SIGTERM during a long delay ends it: the children drain at once.
pub fn second_stop_request_skips_the_shutdown_delay() -> Outcome {
    let mut m = Master::start(&[
        ("PF_CHILDREN", "2"),
        ("PF_GRACE_MS", "5000"),
        ("PF_SHUTDOWN_DELAY_MS", "30000"),
    ]);
    let (ready, port) = m.ready()?;
    sigterm_into_the_delay(&mut m, port)?;
    let asked = Instant::now();
    m.signal(libc::SIGTERM);
    let status = m.wait_exit(10 * SEC)?;
    measure(
        "second SIGTERM in a 30 s shutdown delay to master exit",
        asked.elapsed(),
    );
    ensure!(
        asked.elapsed() < 2 * SEC,
        "the second SIGTERM took {:?} to stop the master",
        asked.elapsed()
    );
    m.exited_ok(status)?;
    all_gone(&ready, 2 * SEC).map(|_| ())
}

/// Serve mode: the stop descriptor fires when the delay is over, and `stopping()` tells the
/// serve function about the delay before that.
pub fn serve_mode_stop_signal_waits_for_the_shutdown_delay() -> Outcome {
    let delay = DELAY_MS.to_string();
    let mut m = Master::start(&[
        ("PF_CHILDREN", "2"),
        ("PF_SERVE", "start"),
        ("PF_SHUTDOWN_DELAY_MS", &delay),
    ]);
    let (ready, port) = m.ready()?;
    let asked = Instant::now();
    sigterm_into_the_delay(&mut m, port)?;
    m.expect("serve-stop ", 10 * SEC)?;
    let signalled = asked.elapsed();
    measure("SIGTERM to the serve function's stop descriptor", signalled);
    ensure!(
        signalled >= Duration::from_millis(DELAY_MS - 50),
        "the stop descriptor fired {signalled:?} after SIGTERM, inside the delay"
    );
    let status = m.wait_exit(10 * SEC)?;
    m.exited_ok(status)?;
    all_gone(&ready, 2 * SEC).map(|_| ())
}

/// The orphans a child leaves behind (`/orphan`: `sh -c 'sleep 1 &'`) come to `master`, and
/// are reaped when they exit, while the master's own children keep their exit status.
fn reaps_orphans(m: &mut Master, master: i32, port: u16) -> Outcome {
    let workers: BTreeSet<i32> = children_of(master).into_iter().map(|(p, _)| p).collect();
    for _ in 0..3 {
        let body = get(port, "/orphan").map_err(|e| format!("/orphan: {e}"))?;
        ensure!(body == "orphaned", "/orphan said {body:?}");
    }
    // The sleeps outlive their sh by a second: they must show up as the master's children,
    // or this test would prove nothing.
    let mut adopted = BTreeSet::new();
    let looked = Instant::now();
    while looked.elapsed() < Duration::from_millis(800) {
        adopted.extend(
            children_of(master)
                .into_iter()
                .map(|(p, _)| p)
                .filter(|p| !workers.contains(p)),
        );
        if adopted.len() >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    ensure!(
        adopted.len() >= 3,
        "only {adopted:?} of the 3 orphans came to the master {master}"
    );
    let reaped = Instant::now();
    loop {
        let left: Vec<(i32, char)> = children_of(master)
            .into_iter()
            .filter(|(p, _)| adopted.contains(p))
            .collect();
        if left.is_empty() {
            break;
        }
        ensure!(
            reaped.elapsed() < 4 * SEC,
            "orphans (pid, state) {left:?} are still the master's after their exit"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    measure(
        "orphans adopted until each was gone (they sleep 1 s)",
        reaped.elapsed(),
    );
    // The master's own child: its status reaches on_child_exit, not the orphan sweep.
    let _ = get(port, "/exit");
    let exit = m.expect("exit ", 5 * SEC)?;
    ensure!(
        exit.ends_with(" code 3"),
        "the crashed child's exit reads {exit:?}: its status was taken"
    );
    m.expect("recover ", 5 * SEC)?;
    get(port, "/").map_err(|e| format!("after the recovery: {e}"))?;
    Ok(())
}

/// Issue 20, item 8: the master as a container's entry point.
pub fn master_as_pid1_reaps_orphaned_grandchildren() -> Outcome {
    let Some(mut m) = Master::start_as_pid1(&[("PF_CHILDREN", "2")]) else {
        println!(
            "    skipped: unshare --pid cannot make a PID namespace here (it needs root or \
             user namespaces)"
        );
        return Ok(());
    };
    let (_, port) = m.ready()?;
    let master = m.namespace_init()?;
    reaps_orphans(&mut m, master, port)?;
    m.stop_namespace_init(master)
}

/// The same with a master that its host made a child subreaper.
pub fn subreaper_master_reaps_orphans() -> Outcome {
    let mut m = Master::start(&[("PF_CHILDREN", "2"), ("PF_SUBREAPER", "1")]);
    let (_, port) = m.ready()?;
    let master = m.pid();
    reaps_orphans(&mut m, master, port)?;
    stop_cleanly(&mut m)
}
