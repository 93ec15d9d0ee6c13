//! Minimum transfer rates (`min_body_rate`, `min_write_rate` over `min_rate_window`). The
//! timeouts only ask for one byte per timeout, so a client trickling a body or reading a
//! response a byte at a time would hold its connection for as long as it likes; a rate asks
//! for `rate × window` bytes in every window of the transfer.
//!
//! Measured by the event loop's timeout sweep from the session's byte counters, in tumbling
//! windows that open when the transfer starts waiting on the client: nothing is added to the
//! path of a request, and a window opens at most one sweep period late, which only favours the
//! client.

use std::time::{Duration, Instant};

use crate::config::HttpConfig;

/// The configured minimums.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RateLimits {
    body: u64,
    write: u64,
    window: Duration,
}

impl RateLimits {
    pub(crate) fn new(cfg: &HttpConfig) -> RateLimits {
        RateLimits {
            body: cfg.min_body_rate,
            write: cfg.min_write_rate,
            window: cfg.min_rate_window,
        }
    }

    /// The window, when any minimum is set: the sweep must run often enough to measure it.
    pub(crate) fn window(&self) -> Option<Duration> {
        (self.body > 0 || self.write > 0).then_some(self.window)
    }
}

/// Which transfer fell below its minimum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slow {
    /// The request body: answer 408.
    Body,
    /// The response: drop the connection (a client that does not read gets no answer either).
    Write,
}

/// One connection's windows, boxed and only while a transfer waits on the client: an idle
/// keep-alive connection pays a pointer for them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Rates {
    body: Window,
    write: Window,
}

/// One sweep's look at a connection (see `Rates::check`), keeping its windows in `slot` while
/// a transfer waits on the client.
pub(crate) fn check(
    slot: &mut Option<Box<Rates>>,
    lim: &RateLimits,
    now: Instant,
    body: Option<(u64, u64)>,
    write: Option<u64>,
) -> Option<Slow> {
    if lim.window().is_none() || (body.is_none() && write.is_none()) {
        *slot = None;
        return None;
    }
    slot.get_or_insert_with(Box::default)
        .check(lim, now, body, write)
}

/// A window under way: when it opened, the byte count then, and which transfer it measures.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    open: Option<(Instant, u64)>,
    key: u64,
}

impl Rates {
    /// One sweep's look at a connection. `body` is `(request seq, bytes received)` while the
    /// connection waits for a request body; `write` the bytes sent while output waits for the
    /// client to read. `None` means that transfer is not waiting on the client.
    pub(crate) fn check(
        &mut self,
        lim: &RateLimits,
        now: Instant,
        body: Option<(u64, u64)>,
        write: Option<u64>,
    ) -> Option<Slow> {
        if self
            .write
            .too_slow(now, write.map(|n| (0, n)), lim.write, lim.window)
        {
            return Some(Slow::Write);
        }
        if self.body.too_slow(now, body, lim.body, lim.window) {
            return Some(Slow::Body);
        }
        None
    }
}

impl Window {
    /// Advances the window over a transfer that has moved `count` bytes in all (`key` names
    /// the transfer: a new one opens a new window); true when a window ended below `rate`.
    fn too_slow(
        &mut self,
        now: Instant,
        moved: Option<(u64, u64)>,
        rate: u64,
        window: Duration,
    ) -> bool {
        let Some((key, count)) = moved.filter(|_| rate > 0) else {
            self.open = None;
            return false;
        };
        match self.open {
            Some((since, at)) if self.key == key => {
                let elapsed = now.saturating_duration_since(since);
                if elapsed < window {
                    return false;
                }
                let needed = u128::from(rate) * elapsed.as_millis() / 1000;
                if u128::from(count - at) < needed {
                    return true;
                }
                self.open = Some((now, count));
                false
            }
            _ => {
                self.open = Some((now, count));
                self.key = key;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn limits(body: u64, write: u64) -> RateLimits {
        RateLimits {
            body,
            write,
            window: Duration::from_secs(1),
        }
    }

    #[test]
    fn each_window_must_move_rate_times_its_length() {
        let lim = limits(100, 0);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut r = Rates::default();
        assert_eq!(r.check(&lim, at(0), Some((1, 500)), None), None);
        // 100 bytes in the first second: just enough.
        assert_eq!(r.check(&lim, at(900), Some((1, 550)), None), None);
        assert_eq!(r.check(&lim, at(1000), Some((1, 600)), None), None);
        // 99 in the next 1.25 s, which needed 125.
        assert_eq!(
            r.check(&lim, at(2250), Some((1, 699)), None),
            Some(Slow::Body)
        );
    }

    #[test]
    fn a_new_transfer_or_a_pause_restarts_the_window() {
        let lim = limits(100, 100);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut r = Rates::default();
        r.check(&lim, at(0), Some((1, 0)), Some(0));
        // The next request's body, and output that drained meanwhile: both start over.
        assert_eq!(r.check(&lim, at(1500), Some((2, 10)), None), None);
        assert_eq!(r.check(&lim, at(1600), None, Some(10)), None);
        assert_eq!(r.check(&lim, at(2600), None, Some(60)), Some(Slow::Write));
    }

    #[test]
    fn zero_is_no_minimum() {
        let lim = limits(0, 0);
        assert_eq!(lim.window(), None);
        let t0 = Instant::now();
        let mut r = Rates::default();
        r.check(&lim, t0, Some((1, 0)), Some(0));
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(r.check(&lim, later, Some((1, 0)), Some(0)), None);
    }
}
