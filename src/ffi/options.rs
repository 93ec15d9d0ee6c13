//! One setter per option of [`crate::ProcessConfig`] and [`crate::HttpConfig`].
//!
//! Each setter refuses a value that breaks its option's own rule (`Config::check_fields`, in
//! src/config.rs, as every rule); rules that tie several options together are checked by
//! `prefork_listen_and_serve`, so options can be set in any order. Defaults live in `src/config.rs`; the "Default:" lines below mirror it
//! (`tests/ffi_options.rs` keeps them honest).

use std::ffi::c_char;
use std::time::Duration;

use super::convert::str_arg;
use super::error::{FfiError, prefork_result};
use super::handle::{Inner, configure, prefork};
use crate::{Cidr, Config, Network};

/// Applies one option change through `configure` (which checks it and rolls it back if refused).
///
/// # Safety
/// As `configure`.
unsafe fn set(
    p: *mut prefork,
    change: impl FnOnce(&mut Config),
) -> Result<prefork_result, FfiError> {
    unsafe {
        configure(p, |s: &mut Inner| {
            change(s.server.config_mut());
            Ok::<(), FfiError>(())
        })
    }
}

// Every setter: PREFORK_ERR_NULL for a NULL `p`, PREFORK_ERR_STATE while the server is
// serving, PREFORK_ERR_INVALID_ARGUMENT (option unchanged) for a value out of range.

/// Number of child processes. 0 = one per CPU the process may run on
/// (sched_getaffinity and cgroup quotas respected). At most 1024. Default: 0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_children(p: *mut prefork, children: u32) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.process.children = children as usize) } })
}

/// true: the master binds one SO_REUSEPORT socket per child (the kernel spreads connections
/// evenly; a replaced child gets its predecessor's socket). false: one listener shared by all
/// children. With CAP_BPF (or as root) the master also lets a removed slot's closing socket
/// hand its connections to the others (a BPF program on the group); without it, it logs so at
/// start. Default: false.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_reuseport(p: *mut prefork, reuseport: bool) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.process.reuseport = reuseport) } })
}

/// Address family, NUL-terminated: "tcp4" (IPv4 only), "tcp6" (IPv6 only) or "tcp" (dual
/// stack for an IPv6 or empty host, IPv4 for an IPv4 host). Default: "tcp4".
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_network(
    p: *mut prefork,
    network: *const c_char,
) -> prefork_result {
    ffi_boundary!({
        let network = Network::parse(unsafe { str_arg(network, "network") }?)?;
        unsafe { set(p, |c| c.process.network = network) }
    })
}

/// listen(2) backlog, at least 1 (the kernel caps it at net.core.somaxconn). Default: 1024.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_backlog(p: *mut prefork, backlog: i32) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.process.backlog = backlog) } })
}

/// Crash-loop exits tolerated within the recover window: exits of children that never
/// reported ready or exited within the recover min uptime of it (every exit with
/// `prefork_set_recover_every_exit`). One more makes the master stop the others and
/// `prefork_listen_and_serve` return PREFORK_ERR_OVER_RECOVERY. 0 = give up at the first such
/// exit. A negative value restores the default, max(1, children / 2) (as fasthttp).
/// Default: -1.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_recover_threshold(
    p: *mut prefork,
    threshold: i32,
) -> prefork_result {
    ffi_boundary!({
        unsafe {
            set(p, |c| {
                c.process.recover_threshold = usize::try_from(threshold).ok()
            })
        }
    })
}

/// Delay before an exited child is replaced, in milliseconds. Default: 0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_recover_interval_ms(
    p: *mut prefork,
    ms: u64,
) -> prefork_result {
    ffi_boundary!({
        unsafe {
            set(p, |c| {
                c.process.recover_interval = Duration::from_millis(ms)
            })
        }
    })
}

/// Sliding window, in milliseconds, in which child exits count against the recover threshold;
/// 0 counts them over the master's whole life (the fasthttp behaviour). Default: 60000.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_recover_window_ms(p: *mut prefork, ms: u64) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.process.recover_window = Duration::from_millis(ms)) } })
}

/// Cap, in milliseconds, of the exponential backoff between replacements of children that keep
/// dying right after they start. Default: 10000.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_recover_backoff_max_ms(
    p: *mut prefork,
    ms: u64,
) -> prefork_result {
    ffi_boundary!({
        unsafe {
            set(p, |c| {
                c.process.recover_backoff_max = Duration::from_millis(ms)
            })
        }
    })
}

/// How long a child must have served, in milliseconds from its "listening" report, for its
/// exit not to count against the recover threshold. A child that exits sooner, or before it
/// is ready, is taken for a crash loop (broken code or configuration, which a replacement
/// cannot cure) and counts; one that served longer (a request that hit a bug, an OOM kill) is
/// always replaced and never makes the master give up. 0 counts only children that never
/// became ready. Not used with `prefork_set_recover_every_exit(p, true)`. Default: 1000.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_recover_min_uptime_ms(
    p: *mut prefork,
    ms: u64,
) -> prefork_result {
    ffi_boundary!({
        unsafe {
            set(p, |c| {
                c.process.recover_min_uptime = Duration::from_millis(ms)
            })
        }
    })
}

/// true: every child exit counts against the recover threshold, however long the child
/// served: fasthttp's rule (with `prefork_set_recover_window_ms(p, 0)`, over the master's
/// whole life, exactly as fasthttp). false: only crash-loop exits count (see
/// `prefork_set_recover_min_uptime_ms`). Default: false.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_recover_every_exit(
    p: *mut prefork,
    every_exit: bool,
) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.process.recover_every_exit = every_exit) } })
}

/// How long children get to finish their requests after SIGTERM before they are killed, in
/// milliseconds. Default: 5000.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_grace_period_ms(p: *mut prefork, ms: u64) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.process.grace_period = Duration::from_millis(ms)) } })
}

/// The shutdown delay, in milliseconds: after SIGTERM, SIGINT or `prefork_shutdown` in the
/// master, the children keep accepting and serving for this long, answering every response
/// with `Connection: close` so that keep-alive clients reconnect elsewhere, and
/// `prefork_stopping()` is true in them (a health check can fail on it), so that a load
/// balancer takes the instance out before it stops accepting. Then the children get SIGTERM
/// and drain as without a delay, within the grace period, which starts only then: a stop takes
/// at most delay + grace period before SIGKILL (a systemd `TimeoutStopSec` or a Kubernetes
/// `terminationGracePeriodSeconds` must be longer). A second SIGTERM or SIGINT during the
/// delay skips the rest of it (a second SIGINT then stops at once, as always). Not applied to
/// the old master's stop after a binary upgrade, nor to a stop caused by a failure. In serve
/// mode the stop descriptor becomes readable only when the delay is over (it means "stop
/// accepting"); `prefork_stopping()` tells the serve function about the delay. Children told
/// to stop by anyone but their master (a SIGTERM sent to each) drain at once: send the
/// stop to the master alone (systemd: `KillMode=mixed`). Default: 0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_shutdown_delay_ms(p: *mut prefork, ms: u64) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.process.shutdown_delay = Duration::from_millis(ms)) } })
}

/// How long a child may take to report "listening" (including `init_child`), in
/// milliseconds; above zero. Default: 10000.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_startup_timeout_ms(
    p: *mut prefork,
    ms: u64,
) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.process.startup_timeout = Duration::from_millis(ms)) } })
}

/// The hung-child watchdog, in milliseconds: a ready child whose event loop has not turned
/// for this long (a handler blocking it, a deadlock) gets SIGABRT, so that a core dump or a
/// backtrace can be had, then SIGKILL a second later if it is still there, and is replaced.
/// Children report each turn through memory shared with the master, waking at least four
/// times per timeout when idle. A master that was itself suspended (SIGSTOP, a system sleep)
/// gives every child a full timeout again from its resumption rather than killing them.
/// Handlers running on handler threads do not hold the loop; only the loop is watched, and
/// serve-mode children, whose loop is the application's own, are not watched.
/// 0 = off; otherwise at least 100. Default: 0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_child_timeout_ms(p: *mut prefork, ms: u64) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.process.child_timeout = Duration::from_millis(ms)) } })
}

/// Recycling: a child that has received this many requests is replaced by a new one, which
/// starts first and takes over once it reports "listening", when the old one stops gracefully;
/// only one slot recycles at a time, so capacity never drops (a leak in the handler is
/// bounded). Counted by each child's event loop through the memory it shares with the master.
/// 0 = off. Default: 0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_max_requests(
    p: *mut prefork,
    requests: u64,
) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.process.max_requests = requests) } })
}

/// Each child's request limit is max_requests plus a random number from 0 to this, drawn when
/// it starts, so that children started together do not recycle together. Default: 0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_max_requests_jitter(
    p: *mut prefork,
    jitter: u64,
) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.process.max_requests_jitter = jitter) } })
}

/// Recycling, as max_requests: a child ready for this many milliseconds is replaced (its
/// replacement ready first, one slot at a time). 0 = off. Default: 0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_max_child_age_ms(p: *mut prefork, ms: u64) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.process.max_child_age = Duration::from_millis(ms)) } })
}

/// true: while serving, the library handles SIGTERM and SIGINT in the master (graceful stop; a
/// second SIGINT stops at once) and SIGTERM in children (drain), restoring the previous
/// handlers afterwards. false: the host keeps its signal handling and calls
/// `prefork_shutdown` itself. Default: true.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_handle_signals(
    p: *mut prefork,
    handle_signals: bool,
) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.process.handle_signals = handle_signals) } })
}

/// An account name as an option: NULL or "" unsets it.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
unsafe fn account_arg(name: *const c_char, arg: &str) -> Result<Option<String>, FfiError> {
    if name.is_null() {
        return Ok(None);
    }
    let name = unsafe { str_arg(name, arg) }?;
    Ok((!name.is_empty()).then(|| name.to_string()))
}

/// The user every child runs as, by name (NUL-terminated), as nginx's `user` and gunicorn's
/// `--user`: the master, which must then run as root, binds the listener and starts each
/// child with this user's uid, its primary group (or `group`'s) and supplementary groups from
/// the user database, set between fork and exec with `PR_SET_NO_NEW_PRIVS`, so no code of a
/// child runs as root. The master stays root to bind, spawn and signal. An unknown name, or a
/// master that is not root, fails `prefork_listen_and_serve` at once with
/// PREFORK_ERR_INVALID_ARGUMENT, before any child starts. A `command_producer` must drop
/// privileges itself (a child that finds itself under the wrong uid refuses to serve). NULL or
/// "" unsets it: children run as the master's user. Default: "".
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_user(p: *mut prefork, user: *const c_char) -> prefork_result {
    ffi_boundary!({
        let user = unsafe { account_arg(user, "user") }?;
        unsafe { set(p, |c| c.process.user = user) }
    })
}

/// The group every child runs as, by name (NUL-terminated), instead of the user's primary
/// group; with no `user`, only the children's groups change (supplementary groups: just this
/// one). Checked as `prefork_set_user` is. NULL or "" unsets it: the user's primary group, or
/// the master's. Default: "".
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_group(
    p: *mut prefork,
    group: *const c_char,
) -> prefork_result {
    ffi_boundary!({
        let group = unsafe { account_arg(group, "group") }?;
        unsafe { set(p, |c| c.process.group = group) }
    })
}

/// Pins child *i* to the *i*-th CPU of the set the master may run on (sched_getaffinity,
/// wrapping around when there are more children than CPUs); a replacement inherits its
/// slot's CPU. Default: false.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_cpu_affinity(
    p: *mut prefork,
    cpu_affinity: bool,
) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.process.cpu_affinity = cpu_affinity) } })
}

/// Longest request line (method, target, version), in bytes, before the reply is 414 (501
/// when the method alone is too long: over 32 bytes or over this cap); above zero, and at most
/// max_head_size (checked when serving starts). Default: 8192.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_max_request_line(
    p: *mut prefork,
    bytes: usize,
) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.http.max_request_line = bytes) } })
}

/// Largest request head (request line and header fields), in bytes, before the reply is 431;
/// above zero. Default: 16384.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_max_head_size(
    p: *mut prefork,
    bytes: usize,
) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.http.max_head_size = bytes) } })
}

/// Most header fields in a request before the reply is 431; above zero. Default: 100.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_max_headers(p: *mut prefork, count: usize) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.http.max_headers = count) } })
}

/// Largest request body, in bytes; a larger declared or received body gets 413. 0 refuses
/// every body. Default: 4194304.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_max_body_size(
    p: *mut prefork,
    bytes: usize,
) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.http.max_body_size = bytes) } })
}

/// Time allowed to receive a whole request head, from its first byte, in milliseconds; above
/// zero. Default: 10000.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_header_timeout_ms(p: *mut prefork, ms: u64) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.http.header_timeout = Duration::from_millis(ms)) } })
}

/// Longest silence while a request body is being received, in milliseconds; above zero.
/// Default: 30000.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_body_timeout_ms(p: *mut prefork, ms: u64) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.http.body_timeout = Duration::from_millis(ms)) } })
}

/// How long an idle keep-alive connection is kept open, in milliseconds; above zero.
/// Default: 60000.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_idle_timeout_ms(p: *mut prefork, ms: u64) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.http.idle_timeout = Duration::from_millis(ms)) } })
}

/// Longest time a pending response may make no write progress before the connection is
/// dropped, in milliseconds; above zero. Default: 30000.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_write_timeout_ms(p: *mut prefork, ms: u64) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.http.write_timeout = Duration::from_millis(ms)) } })
}

/// Open connections per child; above it the child stops accepting until one closes. Above
/// zero. Default: 16384.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_max_connections(
    p: *mut prefork,
    count: usize,
) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.http.max_connections = count) } })
}

/// Threads per child that run `handle`. 0 runs it on the child's event loop (best for
/// handlers that never block); above 0, `handle` runs concurrently on that many threads (for
/// handlers that block). At most 4096. Default: 0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_handler_threads(
    p: *mut prefork,
    threads: u32,
) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.http.handler_threads = threads as usize) } })
}

/// Output buffered for one connection, in bytes, before the child stops reading from it
/// (backpressure against pipelining clients that do not read); above zero. Default: 262144.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_max_output_buffer(
    p: *mut prefork,
    bytes: usize,
) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.http.max_output_buffer = bytes) } })
}

/// Total bytes of chunk extensions (";name=value" after a chunk size) accepted in one chunked
/// request body; more gets 400. Above zero. Default: 16384.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_max_chunk_ext_size(
    p: *mut prefork,
    bytes: usize,
) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.http.max_chunk_ext_size = bytes) } })
}

/// Largest trailer section of a chunked request body, in bytes; more gets 431 (the number of
/// trailer fields is capped by max_headers). Trailers are checked, then dropped. Above zero.
/// Default: 16384.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_max_trailer_size(
    p: *mut prefork,
    bytes: usize,
) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.http.max_trailer_size = bytes) } })
}

/// Fairness: bytes read from plus written to one connection in one event-loop turn before the
/// child serves its other connections. Above zero. Default: 262144.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_max_bytes_per_turn(
    p: *mut prefork,
    bytes: usize,
) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.http.max_bytes_per_turn = bytes) } })
}

/// Slowest request body accepted, in bytes per second: a body must bring at least this rate
/// times the rate window (`prefork_set_min_rate_window_ms`) in every such window, or the
/// reply is 408 and the connection closes. It stops a slow-body attack, which holds a
/// connection by sending a byte per body timeout. 0 = no minimum. Default: 64.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_min_body_rate(
    p: *mut prefork,
    bytes_per_second: u64,
) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.http.min_body_rate = bytes_per_second) } })
}

/// Slowest response write accepted, in bytes per second over the rate window, while output
/// waits for the client to read it; a slower client is disconnected with a reset (so that the
/// kernel stops feeding it what the socket still holds). It stops a slow-read attack, which
/// holds a connection and its output by reading a byte per write timeout. 0 = no minimum.
/// Default: 64.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_min_write_rate(
    p: *mut prefork,
    bytes_per_second: u64,
) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.http.min_write_rate = bytes_per_second) } })
}

/// The window over which the minimum body and write rates are measured, in milliseconds; above
/// zero. Default: 10000.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_min_rate_window_ms(
    p: *mut prefork,
    ms: u64,
) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.http.min_rate_window = Duration::from_millis(ms)) } })
}

/// true: every connection must begin with a PROXY protocol header, version 1 or 2 (HAProxy's
/// specification), as a load balancer in front sends it (HAProxy's `send-proxy` and
/// `send-proxy-v2`, nginx stream's `proxy_protocol on`, cloud L4 balancers); then
/// `prefork_request_peer_addr` is the client's address from the header and
/// `prefork_request_proxy_tlv` reads its TLVs. The header is required, never guessed: a
/// connection from a source outside `prefork_set_proxy_allow` is closed before anything is
/// read, and one whose header is missing, malformed (the specification's rules, a CRC32C
/// that does not match, a version 2 header over 4096 bytes of addresses and TLVs) or late
/// (`prefork_set_proxy_timeout_ms`) is closed without a response. A TLS layer would come after
/// the header. Turn it on only where every client is such a balancer. Default: false.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_proxy_protocol(p: *mut prefork, on: bool) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.http.proxy_protocol = on) } })
}

/// The networks PROXY protocol connections may come from (those of the balancers): a
/// NUL-terminated, comma-separated list of CIDRs such as "10.0.0.0/8, 2001:db8::/32" (a bare
/// address is that one host; "0.0.0.0/0,::/0" allows every source), which replaces the list.
/// A network whose address has bits set past its prefix ("10.0.0.1/8") is refused as a likely
/// typo; PREFORK_ERR_INVALID_ARGUMENT names the first bad entry, and an empty list is refused.
/// An IPv4 client of a dual-stack listener matches the IPv4 networks. Used only with
/// `prefork_set_proxy_protocol(p, true)`. Default: "127.0.0.0/8,::1/128".
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_proxy_allow(
    p: *mut prefork,
    cidrs: *const c_char,
) -> prefork_result {
    ffi_boundary!({
        let list = Cidr::parse_list(unsafe { str_arg(cidrs, "cidrs") }?)?;
        unsafe { set(p, |c| c.http.proxy_allow = list) }
    })
}

/// How long a new connection may take, from its accept, to send its whole PROXY protocol
/// header before it is closed, in milliseconds; above zero. Used only with
/// `prefork_set_proxy_protocol(p, true)`. Default: 5000.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_proxy_timeout_ms(p: *mut prefork, ms: u64) -> prefork_result {
    ffi_boundary!({ unsafe { set(p, |c| c.http.proxy_timeout = Duration::from_millis(ms)) } })
}

#[cfg(test)]
mod tests {
    use std::ffi::c_void;
    use std::ptr;

    use super::*;
    use crate::Config;
    use crate::ffi::{
        prefork_free, prefork_handler, prefork_new, prefork_request, prefork_response,
    };

    unsafe extern "C" fn handle(
        _: *mut c_void,
        _: *const prefork_request,
        _: *mut prefork_response,
    ) {
    }

    fn new_handle() -> *mut prefork {
        let handler = prefork_handler {
            user_data: ptr::null_mut(),
            init_child: None,
            handle: Some(handle),
            exit_child: None,
            user_data_free: None,
            handle_batch: None,
        };
        let mut p = ptr::null_mut();
        assert_eq!(
            unsafe { prefork_new(&handler, &mut p) },
            prefork_result::PREFORK_OK
        );
        p
    }

    fn config(p: *mut prefork) -> Config {
        let mut seen = None;
        let r = unsafe {
            configure(p, |inner| {
                seen = Some(inner.server.config().clone());
                Ok::<(), FfiError>(())
            })
        };
        assert_eq!(r.unwrap(), prefork_result::PREFORK_OK);
        seen.unwrap()
    }

    /// Each setter reaches its own field (distinct values, so a crossed wire shows).
    #[test]
    fn every_setter_sets_its_own_option() {
        use prefork_result::PREFORK_OK;
        let p = new_handle();
        let ms = Duration::from_millis;
        unsafe {
            assert_eq!(prefork_set_children(p, 3), PREFORK_OK);
            assert_eq!(prefork_set_reuseport(p, true), PREFORK_OK);
            assert_eq!(prefork_set_network(p, c"tcp6".as_ptr()), PREFORK_OK);
            assert_eq!(prefork_set_backlog(p, 77), PREFORK_OK);
            assert_eq!(prefork_set_recover_threshold(p, 5), PREFORK_OK);
            assert_eq!(prefork_set_recover_interval_ms(p, 11), PREFORK_OK);
            assert_eq!(prefork_set_recover_window_ms(p, 12), PREFORK_OK);
            assert_eq!(prefork_set_recover_backoff_max_ms(p, 13), PREFORK_OK);
            assert_eq!(prefork_set_recover_min_uptime_ms(p, 16), PREFORK_OK);
            assert_eq!(prefork_set_recover_every_exit(p, true), PREFORK_OK);
            assert_eq!(prefork_set_grace_period_ms(p, 14), PREFORK_OK);
            assert_eq!(prefork_set_shutdown_delay_ms(p, 21), PREFORK_OK);
            assert_eq!(prefork_set_startup_timeout_ms(p, 15), PREFORK_OK);
            assert_eq!(prefork_set_handle_signals(p, false), PREFORK_OK);
            assert_eq!(prefork_set_child_timeout_ms(p, 17_000), PREFORK_OK);
            assert_eq!(prefork_set_max_requests(p, 18), PREFORK_OK);
            assert_eq!(prefork_set_max_requests_jitter(p, 19), PREFORK_OK);
            assert_eq!(prefork_set_max_child_age_ms(p, 20), PREFORK_OK);
            assert_eq!(prefork_set_max_request_line(p, 101), PREFORK_OK);
            assert_eq!(prefork_set_max_head_size(p, 102), PREFORK_OK);
            assert_eq!(prefork_set_max_headers(p, 103), PREFORK_OK);
            assert_eq!(prefork_set_max_body_size(p, 104), PREFORK_OK);
            assert_eq!(prefork_set_header_timeout_ms(p, 21), PREFORK_OK);
            assert_eq!(prefork_set_body_timeout_ms(p, 22), PREFORK_OK);
            assert_eq!(prefork_set_idle_timeout_ms(p, 23), PREFORK_OK);
            assert_eq!(prefork_set_write_timeout_ms(p, 24), PREFORK_OK);
            assert_eq!(prefork_set_max_connections(p, 105), PREFORK_OK);
            assert_eq!(prefork_set_handler_threads(p, 6), PREFORK_OK);
            assert_eq!(prefork_set_max_output_buffer(p, 106), PREFORK_OK);
            assert_eq!(prefork_set_max_chunk_ext_size(p, 107), PREFORK_OK);
            assert_eq!(prefork_set_max_trailer_size(p, 108), PREFORK_OK);
            assert_eq!(prefork_set_max_bytes_per_turn(p, 109), PREFORK_OK);
            assert_eq!(prefork_set_min_body_rate(p, 110), PREFORK_OK);
            assert_eq!(prefork_set_min_write_rate(p, 111), PREFORK_OK);
            assert_eq!(prefork_set_min_rate_window_ms(p, 25), PREFORK_OK);
            assert_eq!(prefork_set_proxy_protocol(p, true), PREFORK_OK);
            assert_eq!(
                prefork_set_proxy_allow(p, c"10.0.0.0/8, ::/0".as_ptr()),
                PREFORK_OK
            );
            assert_eq!(prefork_set_proxy_timeout_ms(p, 25), PREFORK_OK);
        }
        let c = config(p);
        let pc = &c.process;
        assert_eq!(
            (pc.children, pc.reuseport, pc.network, pc.backlog),
            (3, true, Network::Tcp6, 77)
        );
        assert_eq!(pc.recover_threshold, Some(5));
        assert_eq!(pc.recover_interval, ms(11));
        assert_eq!(pc.recover_window, ms(12));
        assert_eq!(pc.recover_backoff_max, ms(13));
        assert_eq!(pc.recover_min_uptime, ms(16));
        assert!(pc.recover_every_exit);
        assert_eq!(pc.grace_period, ms(14));
        assert_eq!(pc.shutdown_delay, ms(21));
        assert_eq!(pc.startup_timeout, ms(15));
        assert!(!pc.handle_signals);
        assert_eq!(pc.child_timeout, ms(17_000));
        assert_eq!((pc.max_requests, pc.max_requests_jitter), (18, 19));
        assert_eq!(pc.max_child_age, ms(20));
        let h = &c.http;
        assert_eq!(
            (h.max_request_line, h.max_head_size, h.max_headers),
            (101, 102, 103)
        );
        assert_eq!(h.max_body_size, 104);
        assert_eq!((h.header_timeout, h.body_timeout), (ms(21), ms(22)));
        assert_eq!((h.idle_timeout, h.write_timeout), (ms(23), ms(24)));
        assert_eq!(
            (h.max_connections, h.handler_threads, h.max_output_buffer),
            (105, 6, 106)
        );
        assert_eq!(
            (h.min_body_rate, h.min_write_rate, h.min_rate_window),
            (110, 111, ms(25))
        );

        assert!(h.proxy_protocol);
        assert_eq!(h.proxy_timeout, ms(25));
        let allow: Vec<String> = h.proxy_allow.iter().map(ToString::to_string).collect();
        assert_eq!(allow, ["10.0.0.0/8", "::/0"]);

        unsafe { prefork_set_recover_threshold(p, -1) };
        assert_eq!(config(p).process.recover_threshold, None);
        unsafe { prefork_free(p) };
    }

    /// A refused value leaves the option as it was.
    #[test]
    fn a_refused_value_changes_nothing() {
        let p = new_handle();
        let before = format!("{:?}", config(p));
        unsafe {
            assert_ne!(
                prefork_set_children(p, 1_000_000),
                prefork_result::PREFORK_OK
            );
            assert_ne!(
                prefork_set_network(p, c"tcp5".as_ptr()),
                prefork_result::PREFORK_OK
            );
            assert_ne!(prefork_set_backlog(p, -3), prefork_result::PREFORK_OK);
            assert_ne!(
                prefork_set_child_timeout_ms(p, 99),
                prefork_result::PREFORK_OK
            );
            assert_ne!(
                prefork_set_write_timeout_ms(p, 0),
                prefork_result::PREFORK_OK
            );
            assert_ne!(
                prefork_set_grace_period_ms(p, crate::config::MAX_DURATION.as_millis() as u64 + 1),
                prefork_result::PREFORK_OK
            );
            assert_ne!(
                prefork_set_shutdown_delay_ms(
                    p,
                    crate::config::MAX_DURATION.as_millis() as u64 + 1
                ),
                prefork_result::PREFORK_OK
            );
            assert_ne!(
                prefork_set_max_output_buffer(p, 0),
                prefork_result::PREFORK_OK
            );
            assert_ne!(
                prefork_set_min_rate_window_ms(p, 0),
                prefork_result::PREFORK_OK
            );
            assert_ne!(
                prefork_set_proxy_timeout_ms(p, 0),
                prefork_result::PREFORK_OK
            );
            for bad in [c"", c"10.0.0.0/8,", c"10.0.0.1/8", c"10.0.0.0/8,bogus"] {
                assert_eq!(
                    prefork_set_proxy_allow(p, bad.as_ptr()),
                    prefork_result::PREFORK_ERR_INVALID_ARGUMENT
                );
            }
            let msg = std::ffi::CStr::from_ptr(crate::ffi::prefork_last_error());
            assert!(msg.to_str().unwrap().contains("\"bogus\""), "{msg:?}");
        }
        assert_eq!(format!("{:?}", config(p)), before);
        unsafe { prefork_free(p) };
    }
}
