//! The recover policy: which exits count against the threshold, and how long a replacement
//! waits.
//!
//! A child that exits before it reported ready, or within `recover_min_uptime` of it, shows a
//! crash loop (broken code or configuration, a missing resource): replacing it again and again
//! fixes nothing, so those exits count against the threshold inside a sliding window, and too
//! many stop the master. A child that served for longer and then died (a request that hits a
//! bug, an OOM kill) is cured by its replacement: it is always replaced and never counts, so a
//! few bad requests cannot take the healthy children down with it. `recover_every_exit`
//! restores fasthttp's rule, where every exit counts (over the whole lifetime when the window
//! is zero).
//!
//! A replacement waits `recover_interval`; when the same slot crashes quickly again and again,
//! the wait doubles each time up to `recover_backoff_max`, so a crash loop neither spins the
//! CPU nor hides behind a fixed delay.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::ProcessConfig;
use crate::error::{Error, ErrorKind};

/// A child that dies before it is ready, or within this time of its start, crashed quickly:
/// its slot's next replacement backs off.
const QUICK_CRASH: Duration = Duration::from_secs(1);
/// Smallest base for the backoff when `recover_interval` is zero.
const MIN_BACKOFF: Duration = Duration::from_millis(10);

pub(crate) struct Recovery {
    threshold: usize,
    window: Duration,
    interval: Duration,
    backoff_max: Duration,
    min_uptime: Duration,
    every_exit: bool,
    /// When the exits that count happened, oldest first.
    exits: VecDeque<Instant>,
    /// Consecutive quick crashes per slot.
    quick: Vec<u32>,
}

/// How long an exited child ran.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lived {
    /// From its spawn.
    pub total: Duration,
    /// From its "listening" report; `None` when it never made one.
    pub ready: Option<Duration>,
}

impl Recovery {
    pub(crate) fn new(cfg: &ProcessConfig) -> Recovery {
        Recovery {
            threshold: cfg.effective_recover_threshold(),
            window: cfg.recover_window,
            interval: cfg.recover_interval,
            backoff_max: cfg.recover_backoff_max,
            min_uptime: cfg.recover_min_uptime,
            every_exit: cfg.recover_every_exit,
            exits: VecDeque::new(),
            quick: vec![0; cfg.effective_children()],
        }
    }

    /// Records an exit of `slot`'s child; returns the delay before its replacement, or the
    /// over-recovery error.
    pub(crate) fn on_exit(&mut self, slot: usize, lived: Lived) -> Result<Duration, Error> {
        if self.counts(lived) {
            self.count_exit()?;
        }
        if slot >= self.quick.len() {
            self.quick.resize(slot + 1, 0);
        }
        let quick = &mut self.quick[slot];
        *quick = if lived.ready.is_none() || lived.total < QUICK_CRASH {
            *quick + 1
        } else {
            0
        };
        let quick = *quick;
        Ok(self.delay(quick))
    }

    /// A slot added by scaling starts without the crash history of one removed before it.
    pub(crate) fn new_slot(&mut self, slot: usize) {
        if let Some(quick) = self.quick.get_mut(slot) {
            *quick = 0;
        }
    }

    /// Whether this exit counts against the threshold.
    fn counts(&self, lived: Lived) -> bool {
        self.every_exit || lived.ready.is_none_or(|up| up < self.min_uptime)
    }

    fn count_exit(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        self.exits.push_back(now);
        if !self.window.is_zero() {
            while self
                .exits
                .front()
                .is_some_and(|&t| now.duration_since(t) > self.window)
            {
                self.exits.pop_front();
            }
        }
        if self.exits.len() <= self.threshold {
            return Ok(());
        }
        let scope = if self.window.is_zero() {
            "since the start".to_string()
        } else {
            format!("within {:?}", self.window)
        };
        let what = if self.every_exit {
            "children exited".to_string()
        } else {
            format!(
                "children exited before they were ready or within {:?} of it (a crash loop)",
                self.min_uptime
            )
        };
        Err(Error::new(
            ErrorKind::OverRecovery,
            format!(
                "{what} {} times {scope}, above the recover threshold of {}",
                self.exits.len(),
                self.threshold
            ),
        ))
    }

    fn delay(&self, quick: u32) -> Duration {
        if quick <= 1 {
            return self.interval;
        }
        let base = self.interval.max(MIN_BACKOFF);
        let backoff = base.saturating_mul(1u32.checked_shl(quick - 1).unwrap_or(u32::MAX));
        backoff.min(self.backoff_max).max(self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fasthttp's rule, every exit counting, which the threshold and backoff tests were written
    /// for.
    fn policy(threshold: usize, window: Duration, interval: Duration) -> Recovery {
        let cfg = ProcessConfig {
            recover_every_exit: true,
            ..config(threshold, window, interval)
        };
        Recovery::new(&cfg)
    }

    fn config(threshold: usize, window: Duration, interval: Duration) -> ProcessConfig {
        ProcessConfig {
            children: 2,
            recover_threshold: Some(threshold),
            recover_window: window,
            recover_interval: interval,
            recover_backoff_max: Duration::from_millis(500),
            ..ProcessConfig::default()
        }
    }

    /// A child that ran `total` since its spawn, all of it ready when `ready`.
    fn ran(total: Duration, ready: bool) -> Lived {
        Lived {
            total,
            ready: ready.then_some(total),
        }
    }

    #[test]
    fn threshold_counts_exits_and_then_fails() {
        let mut r = policy(2, Duration::ZERO, Duration::ZERO);
        let long = Duration::from_secs(5);
        assert!(r.on_exit(0, ran(long, true)).is_ok());
        assert!(r.on_exit(1, ran(long, true)).is_ok());
        let err = r.on_exit(0, ran(long, true)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OverRecovery);
        assert!(err.message().contains("3 times since the start"), "{err}");
    }

    #[test]
    fn window_forgets_old_exits() {
        let mut r = policy(1, Duration::from_millis(30), Duration::ZERO);
        let long = Duration::from_secs(5);
        assert!(r.on_exit(0, ran(long, true)).is_ok());
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            r.on_exit(0, ran(long, true)).is_ok(),
            "the first exit fell out of the window"
        );
        assert!(r.on_exit(0, ran(long, true)).is_err());
    }

    #[test]
    fn quick_crashes_back_off_exponentially_up_to_the_cap() {
        let mut r = policy(100, Duration::ZERO, Duration::from_millis(40));
        let quick = Duration::from_millis(5);
        let delays: Vec<u128> = (0..6)
            .map(|_| r.on_exit(0, ran(quick, false)).unwrap().as_millis())
            .collect();
        assert_eq!(delays, vec![40, 80, 160, 320, 500, 500]);
        // A child that lived long resets the backoff of its slot.
        assert_eq!(
            r.on_exit(0, ran(Duration::from_secs(3), true))
                .unwrap()
                .as_millis(),
            40
        );
        // Other slots are independent.
        assert_eq!(r.on_exit(1, ran(quick, false)).unwrap().as_millis(), 40);
    }

    #[test]
    fn zero_interval_respawns_at_once_then_backs_off_from_the_floor() {
        let mut r = policy(100, Duration::ZERO, Duration::ZERO);
        let quick = Duration::from_millis(1);
        assert_eq!(r.on_exit(0, ran(quick, true)).unwrap(), Duration::ZERO);
        assert_eq!(
            r.on_exit(0, ran(quick, true)).unwrap(),
            Duration::from_millis(20)
        );
        assert_eq!(
            r.on_exit(0, ran(quick, true)).unwrap(),
            Duration::from_millis(40)
        );
    }

    #[test]
    fn crashes_after_the_min_uptime_are_always_replaced() {
        let mut r = Recovery::new(&config(1, Duration::from_secs(60), Duration::ZERO));
        let served = Lived {
            total: Duration::from_secs(3),
            ready: Some(Duration::from_secs(2)),
        };
        for slot in [0, 1, 0, 1, 0, 1] {
            assert_eq!(r.on_exit(slot, served).unwrap(), Duration::ZERO);
        }
        assert!(r.exits.is_empty(), "served children counted: {:?}", r.exits);
    }

    #[test]
    fn exits_before_ready_or_soon_after_count_as_a_crash_loop() {
        let mut r = Recovery::new(&config(2, Duration::from_secs(60), Duration::ZERO));
        let never_ready = Lived {
            total: Duration::from_secs(5),
            ready: None,
        };
        let soon_after = Lived {
            total: Duration::from_millis(900),
            ready: Some(Duration::from_millis(200)),
        };
        let served = ran(Duration::from_secs(5), true);
        assert!(r.on_exit(0, never_ready).is_ok());
        assert!(
            r.on_exit(1, served).is_ok(),
            "a served child does not count"
        );
        assert!(r.on_exit(1, soon_after).is_ok());
        let err = r.on_exit(0, soon_after).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OverRecovery);
        assert_eq!(
            err.message(),
            "children exited before they were ready or within 1s of it (a crash loop) 3 times \
             within 60s, above the recover threshold of 2"
        );
    }

    #[test]
    fn min_uptime_sets_where_a_crash_loop_ends() {
        let cfg = ProcessConfig {
            recover_min_uptime: Duration::from_millis(100),
            ..config(0, Duration::from_secs(60), Duration::ZERO)
        };
        let mut r = Recovery::new(&cfg);
        let after = |ms| Lived {
            total: Duration::from_millis(ms + 50),
            ready: Some(Duration::from_millis(ms)),
        };
        assert!(r.on_exit(0, after(150)).is_ok());
        assert!(
            r.on_exit(0, after(99)).is_err(),
            "threshold 0: the first counted exit"
        );
        let cfg = ProcessConfig {
            recover_min_uptime: Duration::ZERO,
            ..config(0, Duration::from_secs(60), Duration::ZERO)
        };
        let mut r = Recovery::new(&cfg);
        assert!(
            r.on_exit(0, after(0)).is_ok(),
            "zero: only never-ready children count"
        );
        assert!(r.on_exit(0, ran(Duration::from_secs(1), false)).is_err());
    }
}
