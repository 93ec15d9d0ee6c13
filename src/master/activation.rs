//! systemd socket activation, the receiving side of `sd_listen_fds(3)`: a service manager
//! (systemd, `systemd-socket-activate`, or anything speaking the protocol) starts the master
//! with listening sockets at descriptors 3.. and `LISTEN_FDS` (their count), `LISTEN_PID` (the
//! pid they are meant for) and optionally `LISTEN_FDNAMES` (colon-separated names) in its
//! environment. The listener address `systemd` serves every one of them.
//!
//! The rules are libsystemd's (src/libsystemd/sd-daemon/sd-daemon.c): the variables are for
//! this process only when `LISTEN_PID` is its pid; `LISTEN_FDS` is a positive decimal count;
//! `LISTEN_FDNAMES`, when set, names every descriptor. Where `sd_listen_fds` answers "no
//! sockets" for a stale `LISTEN_PID`, asking for `systemd` makes that an error here, since
//! serving nothing is never what the caller meant; and each descriptor must be a listening
//! stream socket, which `sd_is_socket` leaves to the caller. The variables never reach a
//! child or a new master of an upgrade (every command the master builds removes them; the
//! process's own environment is left alone, as changing it is not thread-safe), and the
//! descriptors are moved above those the children receive and made close-on-exec.
//!
//! Without `systemd` among the listeners, sockets passed to this process are still taken, by
//! address: a listener whose address is a passed socket's serves that socket instead of
//! binding (as nginx adopts the sockets it inherits), so a socket unit and the program's
//! options may name the same port, and a new master started with `LISTEN_FDS` takes over
//! the sockets. Variables that are not for this process are then ignored, as
//! `sd_listen_fds` ignores them.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use super::bind::{above_child_fds, is_listening};
use crate::error::{Error, ErrorKind};
use crate::listen::ListenAddr;
use crate::log::{Level, Logger};

/// `SD_LISTEN_FDS_START`.
const FIRST: RawFd = 3;
/// The protocol's variables, removed from every command the master starts.
pub(crate) const ENV: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// One socket the service manager passed.
pub(crate) struct Passed {
    pub fd: OwnedFd,
    /// Where it listens.
    pub addr: ListenAddr,
    /// Its `LISTEN_FDNAMES` entry, or systemd's default, "unknown".
    pub name: String,
}

/// Takes the sockets passed to this process; an error when there are none for it.
pub(crate) fn take() -> Result<Vec<Passed>, Error> {
    let var = |name: &str| std::env::var(name).ok();
    let count = parse(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        std::process::id(),
    )?;
    let names = names(var("LISTEN_FDNAMES").as_deref(), count)?;
    let fds: Vec<RawFd> = (FIRST..FIRST + count as RawFd).collect();
    // Every one checked before any is taken: on an error nothing was moved or closed.
    for (&fd, name) in fds.iter().zip(&names) {
        if !is_listening(fd) {
            return Err(bad(format!(
                "descriptor {fd} ({name:?}) is not a listening stream socket: the socket unit \
                 must use ListenStream= (Accept=no)"
            )));
        }
    }
    fds.into_iter()
        .zip(names)
        .map(|(fd, name)| {
            // SAFETY: the service manager passed this listening socket (checked above) to
            // this process to own; nothing else in it knows the number.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let addr = ListenAddr::of(&owned)
                .ok_or_else(|| bad(format!("cannot read the address of descriptor {fd}")))?;
            // The copy is close-on-exec and above the children's descriptors; the original
            // closes when `owned` drops.
            Ok(Passed {
                fd: above_child_fds(owned)?,
                addr,
                name,
            })
        })
        .collect()
}

/// The sockets passed to this process when no listener is `systemd`: none when the variables
/// are missing or meant for another process; malformed ones are logged and ignored.
pub(crate) fn offered(log: &dyn Logger) -> Vec<Passed> {
    let var = |name: &str| std::env::var(name).ok();
    let for_us = var("LISTEN_PID").and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    if !for_us || var("LISTEN_FDS").is_none() {
        return Vec::new();
    }
    take().unwrap_or_else(|e| {
        log.log(
            Level::Warn,
            &format!("{}; ignoring the passed sockets", e.message()),
        );
        Vec::new()
    })
}

/// The passed socket listening on `addr`, taken out of `offered`.
pub(crate) fn take_for(offered: &mut Vec<Passed>, addr: &ListenAddr) -> Option<Passed> {
    let at = offered.iter().position(|p| &p.addr == addr)?;
    Some(offered.remove(at))
}

fn bad(why: String) -> Error {
    Error::new(
        ErrorKind::Bind,
        format!("socket activation (address systemd): {why}"),
    )
}

/// The descriptor count `LISTEN_PID` and `LISTEN_FDS` give process `me`.
fn parse(pid: Option<&str>, fds: Option<&str>, me: u32) -> Result<usize, Error> {
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Err(bad(
            "LISTEN_PID and LISTEN_FDS are not set: start the program from a systemd socket \
             unit (or systemd-socket-activate), or listen on an address"
                .into(),
        ));
    };
    let pid: u32 = pid
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| bad(format!("LISTEN_PID {pid:?} is not a process id")))?;
    if pid != me {
        return Err(bad(format!(
            "LISTEN_PID is {pid}, not this process ({me}): the variables were inherited from \
             the process they were meant for"
        )));
    }
    fds.parse::<usize>()
        .ok()
        .filter(|&n| n > 0 && n <= (i32::MAX - FIRST) as usize)
        .ok_or_else(|| bad(format!("LISTEN_FDS {fds:?} is not a positive count")))
}

/// One name per descriptor (`sd_listen_fds_with_names`: a count that differs is an error).
fn names(text: Option<&str>, count: usize) -> Result<Vec<String>, Error> {
    let Some(text) = text else {
        return Ok(vec!["unknown".to_string(); count]);
    };
    let names: Vec<String> = text.split(':').map(str::to_string).collect();
    if names.len() != count {
        return Err(bad(format!(
            "LISTEN_FDNAMES names {} descriptors, LISTEN_FDS says {count}",
            names.len()
        )));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variables_are_read_as_libsystemd_reads_them() {
        assert_eq!(parse(Some("42"), Some("2"), 42).unwrap(), 2);
        let cases = [
            (None, Some("1"), "are not set"),
            (Some("42"), None, "are not set"),
            (Some("41"), Some("1"), "not this process (42)"),
            (Some("x"), Some("1"), "is not a process id"),
            (Some("42"), Some("0"), "is not a positive count"),
            (Some("42"), Some("-1"), "is not a positive count"),
            (Some("42"), Some("two"), "is not a positive count"),
        ];
        for (pid, fds, want) in cases {
            let e = parse(pid, fds, 42).unwrap_err();
            assert!(
                e.message().contains(want),
                "{pid:?} {fds:?}: {}",
                e.message()
            );
        }
    }

    #[test]
    fn names_must_match_the_count() {
        assert_eq!(names(None, 2).unwrap(), ["unknown", "unknown"]);
        assert_eq!(names(Some("web:admin"), 2).unwrap(), ["web", "admin"]);
        assert!(names(Some("web"), 2).is_err());
    }
}
