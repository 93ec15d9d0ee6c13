//! Every option of the library, with its default and its validation: the one place defaults
//! live. The C ABI has one setter per field; the README's option table mirrors this file.

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
    /// Default `Network::Tcp4`.
    pub network: Network,
    /// listen(2) backlog. Default 1024 (the kernel caps it at net.core.somaxconn).
    pub backlog: i32,
    /// Child exits tolerated inside `recover_window` before the master gives up with an
    /// over-recovery error. `None` (default) = max(1, children / 2), as in fasthttp.
    pub recover_threshold: Option<usize>,
    /// Delay before respawning an exited child. Default 0.
    pub recover_interval: Duration,
    /// Sliding window in which exits count against the threshold. Default 60 s; zero counts
    /// over the master's whole lifetime (the fasthttp behaviour).
    pub recover_window: Duration,
    /// Cap of the exponential backoff applied to back-to-back quick crashes (a child that
    /// dies within `startup_timeout` of its spawn). Default 10 s.
    pub recover_backoff_max: Duration,
    /// How long children get to finish after SIGTERM before SIGKILL. Default 5 s.
    pub grace_period: Duration,
    /// How long a child may take to report "listening". Default 10 s.
    pub startup_timeout: Duration,
    /// Install SIGTERM/SIGINT handlers (master) and SIGTERM (child). Default true. When false
    /// the host must call `shutdown()` itself.
    pub handle_signals: bool,
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
            grace_period: Duration::from_secs(5),
            startup_timeout: Duration::from_secs(10),
            handle_signals: true,
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
            ("grace_period", self.grace_period),
        ] {
            duration(name, value)?;
        }
        positive_duration("startup_timeout", self.startup_timeout)
    }

    pub fn validate(&self) -> Result<(), Error> {
        self.check_fields()
    }
}

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
        ] {
            positive_duration(name, value)?;
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
