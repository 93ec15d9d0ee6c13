//! The systemd notification protocol (`sd_notify(3)`), spoken by the master when its service
//! manager asks for it with `NOTIFY_SOCKET`: a few datagrams of `KEY=VALUE` lines, no
//! libsystemd. Only the master notifies; children never see the variables (spawn removes them
//! from their environment), so a grandchild cannot speak for the service either.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The environment variables of the protocol, removed from every child's environment.
pub(crate) const ENV: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Where the service manager listens, and how often it wants a watchdog ping.
pub(crate) struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notifier the environment asks for, or `None` when `NOTIFY_SOCKET` is unset.
    pub(crate) fn from_env() -> io::Result<Option<Notifier>> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let var = |name| std::env::var(name).ok();
        let watchdog = watchdog_period(
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        );
        Notifier::new(path.to_str().unwrap_or_default(), watchdog).map(Some)
    }

    /// A notifier for `address`: a socket path, or `@name` for the abstract namespace.
    pub(crate) fn new(address: &str, watchdog: Option<Duration>) -> io::Result<Notifier> {
        let to = match address.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None if address.starts_with('/') => SocketAddr::from_pathname(address)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("NOTIFY_SOCKET={address:?} is neither an absolute path nor @name"),
                ));
            }
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            to,
            watchdog,
        })
    }

    /// Sends one notification, e.g. "READY=1\nSTATUS=2 children".
    pub(crate) fn send(&self, state: &str) -> io::Result<()> {
        self.socket
            .send_to_addr(state.as_bytes(), &self.to)
            .map(drop)
    }

    /// How often to send `WATCHDOG=1`: half the manager's timeout, as sd_watchdog_enabled(3)
    /// advises, or `None` when it asked for no watchdog.
    pub(crate) fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|timeout| timeout / 2)
    }
}

/// CLOCK_MONOTONIC in microseconds, as `MONOTONIC_USEC=` wants it.
pub(crate) fn monotonic_usec() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1000
}

/// The watchdog timeout `WATCHDOG_USEC` sets, when it is meant for this process: systemd sets
/// `WATCHDOG_PID` too, and a value for another process (an ancestor's) is not ours to honour.
fn watchdog_period(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.parse().ok().filter(|&n| n > 0)?;
    match pid.map(str::parse::<u32>) {
        None => Some(Duration::from_micros(usec)),
        Some(Ok(p)) if p == me => Some(Duration::from_micros(usec)),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(address: &str, bind: impl FnOnce() -> io::Result<UnixDatagram>) {
        let manager = bind().unwrap();
        manager
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notifier = Notifier::new(address, None).unwrap();
        notifier.send("READY=1\nSTATUS=2 children").unwrap();
        let mut buf = [0u8; 64];
        let n = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=2 children");
    }

    #[test]
    fn a_path_socket_gets_the_state() {
        let dir = std::env::temp_dir().join(format!("prefork-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let text = path.to_str().unwrap().to_string();
        listen(&text, || UnixDatagram::bind(&path));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_abstract_socket_gets_the_state() {
        let name = format!("prefork-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(&name).unwrap();
        listen(&format!("@{name}"), || UnixDatagram::bind_addr(&addr));
    }

    #[test]
    fn a_relative_address_is_refused() {
        let err = Notifier::new("notify.sock", None).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn the_watchdog_is_ours_only_when_meant_for_us() {
        let five = Some(Duration::from_secs(5));
        assert_eq!(watchdog_period(Some("5000000"), None, 42), five);
        assert_eq!(watchdog_period(Some("5000000"), Some("42"), 42), five);
        assert_eq!(watchdog_period(Some("5000000"), Some("41"), 42), None);
        assert_eq!(watchdog_period(Some("0"), None, 42), None);
        assert_eq!(watchdog_period(Some("soon"), None, 42), None);
        assert_eq!(watchdog_period(None, Some("42"), 42), None);
        let n = Notifier::new("@x", five).unwrap();
        assert_eq!(n.watchdog_interval(), Some(Duration::from_millis(2500)));
    }
}
