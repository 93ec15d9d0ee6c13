//! The HTTP/1.1 engine each child runs: the handler interface (`Handler`, `Request`,
//! `Response`) and `serve`, the event loop.
//!
//! Layout: `server` (the mio loop, accept, timeouts, drain) drives one `session` per
//! connection (the I/O-free protocol state machine), which uses `scan` (finding the head, size
//! caps), `parse` (httparse plus the RFC 9112 checks and framing), `chunked` (the body
//! decoder), `encode` (responses), `date` and `status`; `transport` carries each connection's
//! bytes between its socket and its session (plain, or TLS); `bytes` holds the short-span byte
//! searches they share; `workers` runs handlers on threads; `deferred` brings responses
//! completed on other threads back to the loop, `hijack` hands connections to a new owner and
//! `rate` holds the minimum transfer rates. `proxy` parses the PROXY protocol header a load
//! balancer may send first, which `preamble` reads off a new connection before the session
//! sees a byte (and before a TLS handshake).

mod bytes;
mod chunked;
mod date;
mod deferred;
mod encode;
mod hijack;
mod listener;
mod parse;
mod preamble;
pub mod proxy;
mod rate;
mod request;
mod response;
mod scan;
mod server;
mod session;
mod status;
#[doc(hidden)]
pub mod testing;
mod transport;
mod workers;

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

pub use deferred::Deferred;
pub use hijack::Hijacked;
pub(crate) use listener::Listening;
pub use proxy::ProxyHeader;
pub use request::{Handler, Header, Request};
pub use response::Response;
pub use session::MAX_BATCH;
pub(crate) use status::Status;

use crate::config::HttpConfig;
use crate::error::Error;
use crate::log::Logger;

/// How the process side steers a serving child.
pub(crate) struct ServeControl<'a> {
    /// Readable when a graceful stop was requested (SIGTERM or `shutdown()`); the engine reads
    /// it empty (it is non-blocking). Usually `crate::control::wake_fd()`; tests pass their own
    /// pipe. A `WAKE_STOP_NOW` byte stops without a grace period.
    pub wake_fd: RawFd,
    /// The child's end of the lifeline: readable with EOF when the master is gone.
    pub lifeline_fd: Option<RawFd>,
    /// Called once when the master is gone, before draining.
    pub on_master_death: Option<&'a mut (dyn FnMut() + Send)>,
    /// Longest drain before the remaining connections are dropped.
    pub grace_period: Duration,
    /// Serve TLS with this configuration (`crate::tls`); `None` serves plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Where each loop turn is published for the master (heartbeat, open connections).
    pub beat: Option<&'a crate::shared::Beat>,
}

/// Serves `listeners` (blocking or not: they are made non-blocking) on the calling thread until a
/// stop is requested (`wake_fd`, or `crate::control::stop_requested()` already set) or the
/// master dies (`lifeline_fd`), then drains: the connections waiting in the listener's accept
/// queue are taken and the listener is closed (so that none is reset by the close, and new
/// ones are refused once no process holds it), idle connections are closed at once (one that
/// has sent nothing yet gets up to a second from its accept to send its first request),
/// requests already received are answered (the last one on each connection with
/// `Connection: close`), and it returns when every connection is closed or when
/// `grace_period` has elapsed.
pub(crate) fn serve(
    listeners: Vec<Listening>,
    handler: &Arc<dyn Handler>,
    cfg: &HttpConfig,
    ctl: ServeControl<'_>,
    log: &dyn Logger,
) -> Result<(), Error> {
    server::run(listeners, handler, cfg, ctl, log)
}

/// Reuses an empty vector's allocation for elements of another lifetime: the header arrays
/// borrow each request's buffer, and this lets one allocation serve every request. Both types
/// have the same layout, so std's in-place collection keeps the buffer (see the test).
pub(crate) fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("the vector is empty"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycle_keeps_the_allocation() {
        let v: Vec<Header<'static>> = Vec::with_capacity(100);
        let ptr = v.as_ptr() as usize;
        let w: Vec<Header<'_>> = recycle(v);
        assert_eq!((w.as_ptr() as usize, w.capacity()), (ptr, 100));
        let v: Vec<httparse::Header<'static>> = Vec::with_capacity(64);
        let ptr = v.as_ptr() as usize;
        let w: Vec<httparse::Header<'_>> = recycle(v);
        assert_eq!((w.as_ptr() as usize, w.capacity()), (ptr, 64));
    }
}
