//! Issue 18, item 8: a client connecting every `PROBE_EVERY` through a stop, a reload or an
//! upgrade. A stop may refuse (its listeners close at once) but never accept and drop; a
//! reload or an upgrade keeps the listening sockets open throughout, so there every
//! connection must be answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::{Master, Outcome, Probe, alive, all_gone, get, probe};
use crate::{SEC, ensure, measure};

/// How often the probing client connects.
pub const PROBE_EVERY: Duration = Duration::from_millis(10);
/// How long the request in flight at the transition takes.
pub const SLOW_MS: u64 = 1500;

/// One probe's outcome: when it started, what it got, how long it took.
pub type Probed = (Instant, Probe, Duration);

/// A fresh connection every `PROBE_EVERY`, each probed on its own thread, until `finish`.
pub struct Prober {
    probing: Arc<AtomicBool>,
    thread: JoinHandle<Vec<JoinHandle<Probed>>>,
}

impl Prober {
    pub fn start(port: u16) -> Prober {
        let probing = Arc::new(AtomicBool::new(true));
        let flag = probing.clone();
        let thread = std::thread::spawn(move || {
            let mut probes = Vec::new();
            while flag.load(Ordering::Relaxed) {
                probes.push(std::thread::spawn(move || {
                    let at = Instant::now();
                    let got = probe(port, 5 * SEC);
                    (at, got, at.elapsed())
                }));
                std::thread::sleep(PROBE_EVERY);
            }
            probes
        });
        Prober { probing, thread }
    }

    pub fn finish(self) -> Result<Vec<Probed>, String> {
        self.probing.store(false, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "prober panicked")?
            .into_iter()
            .map(|p| p.join().map_err(|_| "probe panicked".to_string()))
            .collect()
    }
}

/// A master with 2 children (`threads` handler threads each) serving a slow request, and a
/// prober started 100 ms before the caller's signal.
pub struct Probing {
    pub m: Master,
    /// The children, in slot order.
    pub kids: Vec<i32>,
    /// The request in flight at the signal: its body (or error) and when it ended.
    pub slow: JoinHandle<(String, Instant)>,
    pub prober: Prober,
}

pub fn start_probing(reuseport: bool, threads: &str) -> Result<Probing, String> {
    let env = [
        ("PF_CHILDREN", "2"),
        ("PF_GRACE_MS", "8000"),
        ("PF_HANDLER_THREADS", threads),
    ];
    let mut m = Master::start_in_mode(&env, reuseport);
    let (kids, port) = m.ready()?;
    let slow = std::thread::spawn(move || {
        let body = get(port, &format!("/sleep?ms={SLOW_MS}"));
        (body.unwrap_or_else(|e| e.to_string()), Instant::now())
    });
    m.expect("sleeping ", 5 * SEC)?;
    let prober = Prober::start(port);
    std::thread::sleep(Duration::from_millis(100));
    Ok(Probing {
        m,
        kids,
        slow,
        prober,
    })
}

/// Milliseconds from `origin` to `t`, negative before it.
pub fn signed_ms(t: Instant, origin: Instant) -> f64 {
    match t.checked_duration_since(origin) {
        Some(d) => d.as_secs_f64() * 1000.0,
        None => -(origin.duration_since(t).as_secs_f64() * 1000.0),
    }
}

/// Each probe that got `bad`, with when it connected relative to `asked`.
pub fn listed(probes: &[Probed], asked: Instant, bad: impl Fn(&Probe) -> bool) -> Vec<String> {
    probes
        .iter()
        .filter(|(_, got, _)| bad(got))
        .map(|(at, got, took)| {
            format!(
                "{got:?} for a connect {:.0} ms after the signal, after {took:?}",
                signed_ms(*at, asked)
            )
        })
        .collect()
}

pub fn reload_answers_every_connection_shared_listener() -> Outcome {
    transition_under_connects(Transition::Reload, false)
}

pub fn reload_answers_every_connection_reuseport() -> Outcome {
    transition_under_connects(Transition::Reload, true)
}

pub fn upgrade_answers_every_connection_shared_listener() -> Outcome {
    transition_under_connects(Transition::Upgrade, false)
}

pub fn upgrade_answers_every_connection_reuseport() -> Outcome {
    transition_under_connects(Transition::Upgrade, true)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transition {
    Reload,
    Upgrade,
}

/// SIGHUP or SIGUSR2 with a slow request in flight (on a handler thread, so each old child's
/// loop sees its stop at once) while a client connects every `PROBE_EVERY`, from before the
/// signal until the old children (and for an upgrade the old master) are gone: every
/// connection gets its whole response, the slow one included: no refusal, reset or hang.
fn transition_under_connects(kind: Transition, reuseport: bool) -> Outcome {
    let Probing {
        mut m,
        kids: old_kids,
        slow,
        prober,
    } = start_probing(reuseport, "4")?;
    let asked = Instant::now();
    let mut new_master = None;
    let moved = (|| {
        match kind {
            Transition::Reload => {
                m.signal(libc::SIGHUP);
                m.expect("reloaded ", 10 * SEC)?;
            }
            Transition::Upgrade => {
                m.signal(libc::SIGUSR2);
                let new: i32 = m
                    .expect("master ", 10 * SEC)?
                    .parse()
                    .map_err(|e| format!("{e}"))?;
                new_master = Some(new);
                let status = m.wait_exit_then(15 * SEC, Duration::from_millis(100))?;
                ensure!(status.code() == Some(0), "old master exit {status:?}");
            }
        }
        all_gone(&old_kids, 10 * SEC)
    })();
    let done = asked.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let probes = prober.finish()?;
    let (slow_body, _) = slow.join().map_err(|_| "slow request panicked")?;
    let result = moved.and_then(|_| {
        let failed = listed(&probes, asked, |got| *got != Probe::Answered);
        let during = probes
            .iter()
            .filter(|p| p.0 >= asked && p.0 < asked + done)
            .count();
        let slowest = probes.iter().map(|p| p.2).max().unwrap_or_default();
        println!(
            "    measure: {} connects, {during} during the {kind:?}, {} not answered; slowest \
             answer {:.1} ms",
            probes.len(),
            failed.len(),
            slowest.as_secs_f64() * 1000.0
        );
        measure(&format!("{kind:?} signal to the old children gone"), done);
        ensure!(
            failed.is_empty(),
            "{} connections not answered: {failed:#?}",
            failed.len()
        );
        ensure!(
            slow_body == "slept",
            "the request in flight got {slow_body:?}"
        );
        ensure!(during > 20, "only {during} connects during the {kind:?}");
        Ok(())
    });
    let stopped = match new_master {
        None => crate::stop_cleanly(&mut m),
        Some(new) => stop_new_master(&m, new),
    };
    result.and(stopped)
}

/// SIGTERM to the master an upgrade started, and every process of the test gone; SIGKILL
/// whatever a failure left.
fn stop_new_master(m: &Master, new: i32) -> Outcome {
    unsafe { libc::kill(new, libc::SIGTERM) };
    let mut everyone = m.all_children();
    everyone.push(new);
    let gone = all_gone(&everyone, 10 * SEC).map(|_| ());
    if alive(new) {
        unsafe { libc::kill(new, libc::SIGKILL) };
        let _ = all_gone(&[new], 2 * SEC);
    }
    gone
}
