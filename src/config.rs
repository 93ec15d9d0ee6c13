//! Every option of the library, with its default and its validation: the one place defaults
//! live. The C ABI has one setter per field; the README's option table mirrors this file.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::error::Error;

/// Address family of the listener(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// IPv4 only (the default, as in fasthttp prefork).
    Tcp4,
    /// IPv6 only (`IPV6_V6ONLY` set).
    Tcp6,
    /// Dual stack: an IPv6 socket that also accepts IPv4 (`IPV6_V6ONLY` cleared) when the
    /// address is IPv6 or unspecified; a plain IPv4 socket for an IPv4 address.
    Tcp,
}

impl Network {
    pub fn parse(s: &str) -> Result<Network, Error> {
        match s {
            "tcp4" => Ok(Network::Tcp4),
            "tcp6" => Ok(Network::Tcp6),
            "tcp" => Ok(Network::Tcp),
            other => Err(Error::invalid(format!(
                "unknown network {other:?}: expected \"tcp4\", \"tcp6\" or \"tcp\""
            ))),
        }
    }
}

/// Options of the master: process count, binding, recovery and shutdown.
#[derive(Clone, Debug)]
pub struct ProcessConfig {
    /// Number of children. 0 (default) = `std::thread::available_parallelism()`, which honours
    /// CPU affinity and cgroup quotas.
    pub children: usize,
    /// One SO_REUSEPORT socket per child slot instead of one shared listener. Default false.
    pub reuseport: bool,
    /// How TCP listener addresses resolve. Default `Network::Tcp4`.
    pub network: Network,
    /// listen(2) backlog. Default 1024 (the kernel caps it at net.core.somaxconn).
    pub backlog: i32,
    /// Crash-loop exits (see `recover_min_uptime`; every exit with `recover_every_exit`)
    /// tolerated inside `recover_window` before the master gives up with an over-recovery
    /// error. `None` (default) = max(1, children / 2), as in fasthttp.
    pub recover_threshold: Option<usize>,
    /// Delay before respawning an exited child. Default 0.
    pub recover_interval: Duration,
    /// Sliding window in which exits count against the threshold. Default 60 s; zero counts
    /// over the master's whole lifetime (the fasthttp behaviour).
    pub recover_window: Duration,
    /// Cap of the exponential backoff applied to back-to-back quick crashes (a child that
    /// dies before it is ready or within a second of its spawn). Default 10 s.
    pub recover_backoff_max: Duration,
    /// How long a child must have served, from its "listening" report, for its exit not to
    /// count against `recover_threshold`: an exit before ready or sooner than this is a crash
    /// loop's, one after it is a crash a replacement cures (a request that hits a bug), and is
    /// always replaced. Default 1 s (pm2's `min_uptime`, supervisord's `startsecs`); zero
    /// counts only children that never became ready.
    pub recover_min_uptime: Duration,
    /// Count every child exit against `recover_threshold`, however long the child served:
    /// fasthttp's rule (with a zero `recover_window`, over the master's whole life, exactly
    /// as fasthttp). Default false.
    pub recover_every_exit: bool,
    /// How long children get to finish after SIGTERM before SIGKILL. Default 5 s.
    pub grace_period: Duration,
    /// How long the children keep serving after the master is told to stop (SIGTERM,
    /// `shutdown()`), answering every response with `Connection: close`, before they are
    /// told to drain: the time a load balancer needs to see the instance go (its health
    /// checks, which can ask `stopping()`, or an orchestrator's endpoint removal). The grace
    /// period runs after it, so a stop takes at most `shutdown_delay + grace_period`. Not
    /// applied to a stop after a binary upgrade (the new master serves on) or after a
    /// failure. Default 0.
    pub shutdown_delay: Duration,
    /// How long a child may take to report "listening". Default 10 s.
    pub startup_timeout: Duration,
    /// Install SIGTERM/SIGINT handlers (master) and SIGTERM (child). Default true. When false
    /// the host must call `shutdown()` itself.
    pub handle_signals: bool,
    /// The user every child runs as (a name from the user database), set between fork and
    /// exec, so no code of a child runs with the master's identity; its group and
    /// supplementary groups come from the user's entry unless `group` is set. Needs a root
    /// master. Default `None`: children run as the master's user.
    pub user: Option<String>,
    /// The group every child runs as (a name from the group database), instead of the user's
    /// primary group; alone, it changes only the children's groups. Default `None`.
    pub group: Option<String>,
    /// Pin child *i* to the *i*-th CPU of the master's allowed set (wrapping around); a
    /// replacement gets its slot's CPU. Default false.
    pub cpu_affinity: bool,
    /// The hung-child watchdog: how long a ready child's event loop may go without a turn
    /// before the master takes it for hung and kills it (SIGABRT, so a core or backtrace can
    /// be had, then SIGKILL after `ABORT_GRACE`) and replaces it. Zero (default) is off;
    /// otherwise at least `MIN_CHILD_TIMEOUT`.
    pub child_timeout: Duration,
    /// Recycling: a child that has received this many requests is replaced (its replacement
    /// ready first, one slot at a time), as gunicorn's `max_requests`. Zero (default) is off.
    pub max_requests: u64,
    /// Each child's limit is `max_requests` plus a random amount up to this, so children
    /// started together do not all recycle together. Default 0.
    pub max_requests_jitter: u64,
    /// Recycling: a child that has been ready for this long is replaced, as `max_requests`.
    /// Zero (default) is off.
    pub max_child_age: Duration,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            children: 0,
            reuseport: false,
            network: Network::Tcp4,
            backlog: 1024,
            recover_threshold: None,
            recover_interval: Duration::ZERO,
            recover_window: Duration::from_secs(60),
            recover_backoff_max: Duration::from_secs(10),
            recover_min_uptime: Duration::from_secs(1),
            recover_every_exit: false,
            grace_period: Duration::from_secs(5),
            shutdown_delay: Duration::ZERO,
            startup_timeout: Duration::from_secs(10),
            handle_signals: true,
            user: None,
            group: None,
            cpu_affinity: false,
            child_timeout: Duration::ZERO,
            max_requests: 0,
            max_requests_jitter: 0,
            max_child_age: Duration::ZERO,
        }
    }
}

impl ProcessConfig {
    /// The child count after resolving 0 to the available parallelism.
    pub fn effective_children(&self) -> usize {
        if self.children > 0 {
            self.children
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// The recover threshold after resolving the default.
    pub fn effective_recover_threshold(&self) -> usize {
        self.recover_threshold
            .unwrap_or_else(|| (self.effective_children() / 2).max(1))
    }

    /// Checks each option on its own; `validate` adds the rules between options (none yet).
    pub fn check_fields(&self) -> Result<(), Error> {
        at_most("children", self.children, MAX_CHILDREN)?;
        if self.backlog < 1 {
            return Err(Error::invalid(format!(
                "backlog = {} must be at least 1",
                self.backlog
            )));
        }
        for (name, value) in [
            ("recover_interval", self.recover_interval),
            ("recover_window", self.recover_window),
            ("recover_backoff_max", self.recover_backoff_max),
            ("recover_min_uptime", self.recover_min_uptime),
            ("grace_period", self.grace_period),
            ("shutdown_delay", self.shutdown_delay),
        ] {
            duration(name, value)?;
        }
        duration("child_timeout", self.child_timeout)?;
        duration("max_child_age", self.max_child_age)?;
        if !self.child_timeout.is_zero() && self.child_timeout < MIN_CHILD_TIMEOUT {
            return Err(Error::invalid(format!(
                "child_timeout = {:?} must be 0 (off) or at least {MIN_CHILD_TIMEOUT:?}",
                self.child_timeout
            )));
        }
        positive_duration("startup_timeout", self.startup_timeout)?;
        for (name, value) in [("user", &self.user), ("group", &self.group)] {
            account_name(name, value.as_deref())?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), Error> {
        self.check_fields()
    }
}

/// A user or group name: set means non-empty and free of NUL and whitespace (whether it
/// exists is checked when serving starts, against the databases of the machine it runs on).
fn account_name(option: &str, name: Option<&str>) -> Result<(), Error> {
    match name {
        Some(n) if n.is_empty() || n.contains(|c: char| c == '\0' || c.is_whitespace()) => Err(
            Error::invalid(format!("{option} = {n:?} is not a valid name")),
        ),
        _ => Ok(()),
    }
}
/// Shortest `child_timeout`: children beat four times per timeout, and a loop turn every 25 ms
/// is about what an idle child can afford.
pub const MIN_CHILD_TIMEOUT: Duration = Duration::from_millis(100);

/// Upper bound on the child count: a typo guard, far above any real core count.
pub const MAX_CHILDREN: usize = 1024;

/// Options of the HTTP/1.1 engine each child runs.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Longest request line (method, target, version) before 414 (501 when the method alone
    /// is too long: over 32 bytes or over this cap). Default 8 KiB.
    pub max_request_line: usize,
    /// Largest request head (request line and headers) before 431. Default 16 KiB.
    pub max_head_size: usize,
    /// Most header fields in a request before 431. Default 100.
    pub max_headers: usize,
    /// Largest request body; a larger declared or received body gets 413. Default 4 MiB.
    pub max_body_size: usize,
    /// Total time allowed to receive a request head, from its first byte (then 408); also the
    /// longest wait for the first byte of a new connection's first request (then a silent
    /// close). Default 10 s.
    pub header_timeout: Duration,
    /// Longest silence while a request body is being received. Default 30 s.
    pub body_timeout: Duration,
    /// How long an idle keep-alive connection is kept between requests. Default 60 s.
    pub idle_timeout: Duration,
    /// Longest time a pending response may make no write progress. Default 30 s.
    pub write_timeout: Duration,
    /// Open connections per child; accepting pauses above it. Default 16384.
    pub max_connections: usize,
    /// Worker threads per child running the handler (0 = run it on the event loop, the
    /// default, for handlers that never block).
    pub handler_threads: usize,
    /// Output buffered for one connection before reading from it pauses. Default 256 KiB.
    pub max_output_buffer: usize,
    /// Total bytes of chunk extensions (`;name=value` after a chunk size) accepted in one
    /// chunked request body; more gets 400. Default 16 KiB.
    pub max_chunk_ext_size: usize,
    /// Largest trailer section of a chunked request body; more gets 431 (the number of trailer
    /// fields is capped by `max_headers`). Trailers are validated, then dropped. Default 16 KiB.
    pub max_trailer_size: usize,
    /// Fairness: bytes read from plus written to one connection in one event-loop turn before
    /// the loop serves the others. Default 256 KiB.
    pub max_bytes_per_turn: usize,
    /// Slowest request body accepted, in bytes per second: a body must bring at least this
    /// rate times `min_rate_window` bytes in every such window, or it gets 408 (a slow-body
    /// attack otherwise holds a connection by sending a byte per `body_timeout`). 0 = no
    /// minimum. Default 64, far below any real link.
    pub min_body_rate: u64,
    /// Slowest response write accepted, in bytes per second over `min_rate_window`, while
    /// output waits for the client; a client reading slower is disconnected with a reset (a
    /// slow-read attack otherwise holds a connection and its output by reading a byte per
    /// `write_timeout`). 0 = no minimum. Default 64.
    pub min_write_rate: u64,
    /// The window over which `min_body_rate` and `min_write_rate` are measured. Default 10 s.
    pub min_rate_window: Duration,
    /// Every connection must start with a PROXY protocol header (version 1 or 2), which gives
    /// the client's address (`Request::peer_addr`) and TLVs (`Request::proxy_header`); one
    /// without a valid header is closed. Required when on, never guessed (the spec's §1).
    /// Default false.
    pub proxy_protocol: bool,
    /// With `proxy_protocol`: the networks a connection may come from (those of the balancers);
    /// one from elsewhere is closed before anything is read. Default 127.0.0.0/8 and ::1/128.
    pub proxy_allow: Vec<Cidr>,
    /// With `proxy_protocol`: how long a new connection may take to send its whole header,
    /// from its accept, before it is closed. Default 5 s.
    pub proxy_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_request_line: 8 * 1024,
            max_head_size: 16 * 1024,
            max_headers: 100,
            max_body_size: 4 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_connections: 16384,
            handler_threads: 0,
            max_output_buffer: 256 * 1024,
            max_chunk_ext_size: 16 * 1024,
            max_trailer_size: 16 * 1024,
            max_bytes_per_turn: 256 * 1024,
            min_body_rate: 64,
            min_write_rate: 64,
            min_rate_window: Duration::from_secs(10),
            proxy_protocol: false,
            proxy_allow: Cidr::loopback(),
            proxy_timeout: Duration::from_secs(5),
        }
    }
}

impl HttpConfig {
    /// Checks each option on its own; `validate` adds the rules between options.
    pub fn check_fields(&self) -> Result<(), Error> {
        for (name, value) in [
            ("max_request_line", self.max_request_line),
            ("max_head_size", self.max_head_size),
            ("max_headers", self.max_headers),
            ("max_connections", self.max_connections),
            ("max_output_buffer", self.max_output_buffer),
            ("max_chunk_ext_size", self.max_chunk_ext_size),
            ("max_trailer_size", self.max_trailer_size),
            ("max_bytes_per_turn", self.max_bytes_per_turn),
        ] {
            if value == 0 {
                return Err(Error::invalid(format!("{name} must be above zero")));
            }
        }
        at_most("handler_threads", self.handler_threads, MAX_HANDLER_THREADS)?;
        for (name, value) in [
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
            ("idle_timeout", self.idle_timeout),
            ("write_timeout", self.write_timeout),
            ("min_rate_window", self.min_rate_window),
            ("proxy_timeout", self.proxy_timeout),
        ] {
            positive_duration(name, value)?;
        }
        if self.proxy_allow.is_empty() {
            return Err(Error::invalid(
                "proxy_allow must name at least one network (0.0.0.0/0,::/0 allows every source)",
            ));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), Error> {
        self.check_fields()?;
        if self.max_request_line > self.max_head_size {
            return Err(Error::invalid(format!(
                "max_request_line ({}) cannot exceed max_head_size ({})",
                self.max_request_line, self.max_head_size
            )));
        }
        Ok(())
    }
}

/// Upper bound on handler threads per child.
pub const MAX_HANDLER_THREADS: usize = 4096;

/// An IP network, `address/prefix-length`, such as `10.0.0.0/8` or `2001:db8::/32`; a bare
/// address is the network of that one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses one network. The address must be the network's first (no bits set past the
    /// prefix), so that a typo such as `10.1.2.3/8` is an error, not a wider allowlist.
    pub fn parse(text: &str) -> Result<Cidr, Error> {
        let bad = |why: &str| Error::invalid(format!("bad network {text:?}: {why}"));
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("expected an IPv4 or IPv6 address, then /prefix-length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| bad(&format!("the prefix length must be at most {max}")))?,
            Some(_) => return Err(bad("the prefix length must be a number")),
        };
        let cidr = Cidr { addr, prefix };
        if cidr.network(addr) != bits(addr) {
            return Err(bad(&format!(
                "bits are set past the /{prefix} prefix (the network is {})",
                Cidr {
                    addr: from_bits(addr, cidr.network(addr)),
                    prefix
                }
            )));
        }
        Ok(cidr)
    }

    /// Parses a comma-separated list (spaces around the commas allowed); the error names the
    /// first bad entry.
    pub fn parse_list(text: &str) -> Result<Vec<Cidr>, Error> {
        text.split(',').map(|t| Cidr::parse(t.trim())).collect()
    }

    /// 127.0.0.0/8 and ::1/128: where a balancer on the same machine connects from.
    pub fn loopback() -> Vec<Cidr> {
        vec![
            Cidr {
                addr: IpAddr::from([127, 0, 0, 0]),
                prefix: 8,
            },
            Cidr {
                addr: IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                prefix: 128,
            },
        ]
    }

    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (how a dual-stack socket
    /// shows an IPv4 peer) counts as the IPv4 address it maps.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && self.network(ip) == bits(self.addr)
    }

    /// `ip`'s bits with those past the prefix cleared (`ip` of this network's family).
    fn network(&self, ip: IpAddr) -> u128 {
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let keep = u32::from(self.prefix);
        if keep == 0 {
            return 0;
        }
        bits(ip) & (u128::MAX << (width - keep)) & (u128::MAX >> (128 - width))
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_bits(like: IpAddr, b: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::from((b as u32).to_be_bytes()),
        IpAddr::V6(_) => IpAddr::from(b.to_be_bytes()),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// All options.
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub process: ProcessConfig,
    pub http: HttpConfig,
}

impl Config {
    /// Each option on its own: what a setter can check regardless of the order options are set.
    pub fn check_fields(&self) -> Result<(), Error> {
        self.process.check_fields()?;
        self.http.check_fields()
    }

    /// Everything, including the rules between options; `listen_and_serve` runs it.
    pub fn validate(&self) -> Result<(), Error> {
        self.process.validate()?;
        self.http.validate()
    }
}

/// Longest accepted duration of any option: a typo guard that also keeps deadline arithmetic
/// (`Instant + Duration`) far from overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

fn at_most(name: &str, value: usize, limit: usize) -> Result<(), Error> {
    if value > limit {
        return Err(Error::invalid(format!(
            "{name} = {value} is above the limit of {limit}"
        )));
    }
    Ok(())
}

fn duration(name: &str, value: Duration) -> Result<(), Error> {
    if value > MAX_DURATION {
        return Err(Error::invalid(format!(
            "{name} = {value:?} is above the limit of one year"
        )));
    }
    Ok(())
}

fn positive_duration(name: &str, value: Duration) -> Result<(), Error> {
    if value.is_zero() {
        return Err(Error::invalid(format!("{name} must be above zero")));
    }
    duration(name, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn each_rule_names_its_option() {
        let mut c = Config::default();
        c.http.idle_timeout = Duration::from_secs(u64::MAX);
        assert!(
            c.check_fields()
                .unwrap_err()
                .message()
                .contains("idle_timeout")
        );
        let mut c = Config::default();
        c.process.startup_timeout = Duration::ZERO;
        assert_eq!(
            c.check_fields().unwrap_err().message(),
            "startup_timeout must be above zero"
        );
        let mut c = Config::default();
        c.process.children = MAX_CHILDREN + 1;
        assert!(
            c.check_fields()
                .unwrap_err()
                .message()
                .contains("above the limit of 1024")
        );
    }

    #[test]
    fn networks_parse_strictly_and_match() {
        let net = |t: &str| Cidr::parse(t).unwrap();
        let ip = |t: &str| t.parse::<IpAddr>().unwrap();
        assert!(net("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!net("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(net("::/0").contains(ip("2001:db8::1")));
        assert!(net("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!net("192.0.2.7").contains(ip("192.0.2.8")));
        assert!(net("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!net("2001:db8::/32").contains(ip("2001:db9::1")));
        // A dual-stack socket's view of an IPv4 peer.
        assert!(net("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        assert!(!net("::ffff:0:0/96").contains(ip("::ffff:127.0.0.1")));
        let loopback = Cidr::loopback();
        assert_eq!(
            loopback.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["127.0.0.0/8", "::1/128"]
        );
        assert!(loopback.iter().any(|c| c.contains(ip("::1"))));
        assert!(!loopback.iter().any(|c| c.contains(ip("::2"))));

        for (bad, why) in [
            ("10.0.0.1/8", "the network is 10.0.0.0/8"),
            ("10.0.0.0/33", "at most 32"),
            ("::/129", "at most 128"),
            ("10.0.0.0/", "must be a number"),
            ("10.0.0.0/+8", "must be a number"),
            ("10.0.0.0/08x", "must be a number"),
            ("10.0.0/8", "expected an IPv4"),
            ("localhost", "expected an IPv4"),
            ("", "expected an IPv4"),
        ] {
            let e = Cidr::parse(bad).unwrap_err();
            assert!(
                e.message().contains(why) && e.message().contains(&format!("{bad:?}")),
                "{bad}: {}",
                e.message()
            );
        }
        assert_eq!(
            Cidr::parse_list("10.0.0.0/8, 192.168.0.0/16,::1")
                .unwrap()
                .len(),
            3
        );
        let e = Cidr::parse_list("10.0.0.0/8,10.0.0.1/8").unwrap_err();
        assert!(e.message().contains("\"10.0.0.1/8\""), "{}", e.message());
        assert!(Cidr::parse_list("10.0.0.0/8,").is_err());
    }

    #[test]
    fn rules_between_options_wait_for_validate() {
        let mut c = Config::default();
        c.http.max_request_line = c.http.max_head_size + 1;
        c.check_fields().unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .message()
                .contains("cannot exceed max_head_size")
        );
    }
}
