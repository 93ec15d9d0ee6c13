//! The recover policy: how many exits are tolerated, and how long a replacement waits.
//!
//! Every exit counts against the threshold inside a sliding window (the whole lifetime when the
//! window is zero, as in fasthttp). A replacement waits `recover_interval`; when the same slot
//! crashes quickly again and again, the wait doubles each time up to `recover_backoff_max`, so
//! a crash loop neither spins the CPU nor hides behind a fixed delay.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::ProcessConfig;
use crate::error::{Error, ErrorKind};

/// A child that dies before it is ready, or within this time of its start, crashed quickly.
const QUICK_CRASH: Duration = Duration::from_secs(1);
/// Smallest base for the backoff when `recover_interval` is zero.
const MIN_BACKOFF: Duration = Duration::from_millis(10);

pub(crate) struct Recovery {
    threshold: usize,
    window: Duration,
    interval: Duration,
    backoff_max: Duration,
    exits: VecDeque<Instant>,
    /// Consecutive quick crashes per slot.
    quick: Vec<u32>,
}

impl Recovery {
    pub(crate) fn new(cfg: &ProcessConfig) -> Recovery {
        Recovery {
            threshold: cfg.effective_recover_threshold(),
            window: cfg.recover_window,
            interval: cfg.recover_interval,
            backoff_max: cfg.recover_backoff_max,
            exits: VecDeque::new(),
            quick: vec![0; cfg.effective_children()],
        }
    }

    /// Records an exit of `slot`'s child; returns the delay before its replacement, or the
    /// over-recovery error.
    pub(crate) fn on_exit(
        &mut self,
        slot: usize,
        lived: Duration,
        was_ready: bool,
    ) -> Result<Duration, Error> {
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
        if self.exits.len() > self.threshold {
            let scope = if self.window.is_zero() {
                "since the start".to_string()
            } else {
                format!("within {:?}", self.window)
            };
            return Err(Error::new(
                ErrorKind::OverRecovery,
                format!(
                    "children exited {} times {scope}, above the recover threshold of {}",
                    self.exits.len(),
                    self.threshold
                ),
            ));
        }
        let quick = &mut self.quick[slot];
        *quick = if !was_ready || lived < QUICK_CRASH {
            *quick + 1
        } else {
            0
        };
        let quick = *quick;
        Ok(self.delay(quick))
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

    fn policy(threshold: usize, window: Duration, interval: Duration) -> Recovery {
        let cfg = ProcessConfig {
            children: 2,
            recover_threshold: Some(threshold),
            recover_window: window,
            recover_interval: interval,
            recover_backoff_max: Duration::from_millis(500),
            ..ProcessConfig::default()
        };
        Recovery::new(&cfg)
    }

    #[test]
    fn threshold_counts_exits_and_then_fails() {
        let mut r = policy(2, Duration::ZERO, Duration::ZERO);
        let long = Duration::from_secs(5);
        assert!(r.on_exit(0, long, true).is_ok());
        assert!(r.on_exit(1, long, true).is_ok());
        let err = r.on_exit(0, long, true).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OverRecovery);
        assert!(err.message().contains("3 times since the start"), "{err}");
    }

    #[test]
    fn window_forgets_old_exits() {
        let mut r = policy(1, Duration::from_millis(30), Duration::ZERO);
        let long = Duration::from_secs(5);
        assert!(r.on_exit(0, long, true).is_ok());
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            r.on_exit(0, long, true).is_ok(),
            "the first exit fell out of the window"
        );
        assert!(r.on_exit(0, long, true).is_err());
    }

    #[test]
    fn quick_crashes_back_off_exponentially_up_to_the_cap() {
        let mut r = policy(100, Duration::ZERO, Duration::from_millis(40));
        let quick = Duration::from_millis(5);
        let delays: Vec<u128> = (0..6)
            .map(|_| r.on_exit(0, quick, false).unwrap().as_millis())
            .collect();
        assert_eq!(delays, vec![40, 80, 160, 320, 500, 500]);
        // A child that lived long resets the backoff of its slot.
        assert_eq!(
            r.on_exit(0, Duration::from_secs(3), true)
                .unwrap()
                .as_millis(),
            40
        );
        // Other slots are independent.
        assert_eq!(r.on_exit(1, quick, false).unwrap().as_millis(), 40);
    }

    #[test]
    fn zero_interval_respawns_at_once_then_backs_off_from_the_floor() {
        let mut r = policy(100, Duration::ZERO, Duration::ZERO);
        let quick = Duration::from_millis(1);
        assert_eq!(r.on_exit(0, quick, true).unwrap(), Duration::ZERO);
        assert_eq!(
            r.on_exit(0, quick, true).unwrap(),
            Duration::from_millis(20)
        );
        assert_eq!(
            r.on_exit(0, quick, true).unwrap(),
            Duration::from_millis(40)
        );
    }
}
