//! Zero-downtime binary upgrade (SIGUSR2 or `upgrade()`), both halves.
//!
//! The old master starts the program from disk again (the path it was started from, so a
//! binary replaced there is the one that runs) as a new master, with its listening sockets at
//! descriptors 4.. and the write end of a pipe at 3, named in `PREFORK_UPGRADE_FDS` and
//! `PREFORK_UPGRADE_READY_FD`; every other descriptor stays close-on-exec. The new master
//! adopts the sockets instead of binding (so the port never closes), starts its children, and
//! when all are ready writes one byte to the pipe. The old master then stops its own children
//! gracefully and exits: its copies of the sockets close, the new master's and its children's
//! stay, so nothing queued is reset (in reuseport mode each slot's socket goes to the new
//! master's slot of the same number). If the new master exits, closes the pipe or is not ready
//! within twice the startup timeout, the upgrade fails: the new master is killed and reaped
//! (its children follow it through their lifelines) and the old master serves on.
//!
//! The new master is the old one's child until the old one exits, then the init process's (or
//! a subreaper's), which is what nginx's and unicorn's upgrades do too.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;

use super::bind::{self, Listener};
use super::{Master, State, describe, hook, signal_all, spawn, wait};
use crate::config::ProcessConfig;
use crate::error::{Error, ErrorKind};
use crate::hooks::{
    CHILD_ENV, Pid, UPGRADE_FDS_ENV, UPGRADE_LISTENERS_ENV, UPGRADE_READY_ENV, cloexec_fds_above,
};
use crate::listen::ListenAddr;
use crate::log::Level;

/// Where the new master finds the ready pipe; its listeners follow.
const READY_AT: RawFd = 3;
pub(super) const READY_BYTE: u8 = b'R';

/// A new master that is starting.
pub(super) struct Upgrade {
    pub pid: Pid,
    pub pidfd: Option<OwnedFd>,
    pub ready: OwnedFd,
    pub deadline: Instant,
}

/// The path the program was started from, read before anything could replace it: an upgrade
/// runs whatever is there by then. `/proc/self/exe` names a replaced file "PATH (deleted)".
pub(super) fn program_path() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let text = exe.to_str()?;
    Some(PathBuf::from(
        text.strip_suffix(" (deleted)").unwrap_or(text),
    ))
}

/// New master: the listeners and the ready pipe an old master passed, if it did.
pub(super) struct Inherited {
    pub listeners: Vec<Listener>,
    pub ready: Option<OwnedFd>,
    /// The socket files (by listener position) that become this master's once it took over.
    pub files: Vec<(usize, (PathBuf, u64))>,
}

/// One passed descriptor as `PREFORK_UPGRADE_LISTENERS` describes it: `L:flags`, `L` its
/// listener's position, flags `+`-joined of `proxy` (PROXY protocol), `slot` (one socket per
/// child slot) and `unlink` (the old master created its socket file).
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    listener: usize,
    proxy: bool,
    per_slot: bool,
    unlink: bool,
}

impl Entry {
    fn word(l: &Listener, at: usize) -> String {
        let flags: Vec<&str> = [
            (l.proxy, "proxy"),
            (l.per_slot, "slot"),
            (l.unlink.is_some(), "unlink"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        format!("{at}:{}", flags.join("+"))
    }

    fn parse(word: &str) -> Option<Entry> {
        let (at, flags) = word.split_once(':')?;
        let mut e = Entry {
            listener: at.parse().ok()?,
            proxy: false,
            per_slot: false,
            unlink: false,
        };
        for flag in flags.split('+').filter(|f| !f.is_empty()) {
            match flag {
                "proxy" => e.proxy = true,
                "slot" => e.per_slot = true,
                "unlink" => e.unlink = true,
                _ => return None,
            }
        }
        Some(e)
    }
}

/// Takes the descriptors `PREFORK_UPGRADE_FDS` and `PREFORK_UPGRADE_READY_FD` name, moved
/// above the descriptors children receive and close-on-exec, grouped into listeners as
/// `PREFORK_UPGRADE_LISTENERS` says (without it, from an older master: one listener with the
/// handle's PROXY setting `proxy`). The new master serves the old one's listeners, not those
/// of its own options. In reuseport mode a listener of one socket per slot gets `count`.
pub(super) fn inherited(
    proxy: bool,
    cfg: &ProcessConfig,
    count: usize,
) -> Result<Option<Inherited>, Error> {
    let Some(fds) = std::env::var_os(UPGRADE_FDS_ENV) else {
        return Ok(None);
    };
    let bad = |why: String| Error::new(ErrorKind::Bind, format!("{UPGRADE_FDS_ENV}: {why}"));
    let described = std::env::var(UPGRADE_LISTENERS_ENV).ok();
    let mut entries = described.as_deref().map(|d| d.split(',').map(Entry::parse));
    let mut listeners: Vec<Listener> = Vec::new();
    let mut files = Vec::new();
    for part in fds.to_string_lossy().split(',').filter(|p| !p.is_empty()) {
        let fd: RawFd = part
            .parse()
            .map_err(|_| bad(format!("{part:?} is no descriptor")))?;
        if !bind::is_listening(fd) {
            return Err(bad(format!("descriptor {fd} is not a listening socket")));
        }
        let entry = match entries.as_mut() {
            None => Some(Entry {
                listener: 0,
                proxy,
                per_slot: cfg.reuseport,
                unlink: false,
            }),
            Some(it) => it.next().flatten(),
        }
        .ok_or_else(|| bad(format!("{UPGRADE_LISTENERS_ENV} does not describe fd {fd}")))?;
        // SAFETY: a listening socket the old master passed to this process to own.
        let owned = bind::above_child_fds(unsafe { OwnedFd::from_raw_fd(fd) })?;
        if entry.listener == listeners.len() {
            let addr = ListenAddr::of(&owned)
                .ok_or_else(|| bad(format!("cannot read fd {fd}'s address")))?;
            if let (true, ListenAddr::Unix(path)) = (entry.unlink, &addr)
                && let Ok(meta) = std::fs::symlink_metadata(path)
            {
                files.push((listeners.len(), (path.clone(), meta.ino())));
            }
            let per_slot = entry.per_slot && cfg.reuseport;
            listeners.push(Listener::adopted(addr, entry.proxy, per_slot));
        }
        let listener = listeners
            .get_mut(entry.listener)
            .ok_or_else(|| bad(format!("fd {fd} names listener {}", entry.listener)))?;
        listener.fds.push(owned);
    }
    if listeners.is_empty() {
        return Err(bad("names no descriptor".into()));
    }
    for l in &mut listeners {
        while l.per_slot && l.fds.len() < count {
            l.add_slot(cfg.network, cfg.backlog)?;
        }
        l.truncate_slots(if l.per_slot { count } else { 1 });
    }
    let ready = std::env::var(UPGRADE_READY_ENV)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
        // SAFETY: F_GETFD on a number that is not open fails with EBADF and changes nothing.
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0)
        // SAFETY: the pipe's write end, passed to this process to own (checked open above).
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .map(bind::above_child_fds)
        .transpose()?;
    Ok(Some(Inherited {
        listeners,
        ready,
        files,
    }))
}

impl Master<'_> {
    /// Starts a requested upgrade when the master can: running, ready, nothing else under way.
    pub(super) fn advance_upgrade(&mut self, now: Instant) {
        if let Some(u) = &self.upgrade
            && now >= u.deadline
        {
            let why = format!("it was not ready within {:?}", self.upgrade_timeout());
            return self.fail_upgrade(&why);
        }
        let idle = self.state == State::Running
            && self.ready_announced
            && self.upgrade.is_none()
            && self.recycling.is_none();
        if idle && crate::control::take_upgrade() {
            self.begin_upgrade(now);
        }
    }

    fn upgrade_timeout(&self) -> Duration {
        self.cfg.startup_timeout * 2
    }

    fn begin_upgrade(&mut self, now: Instant) {
        match self.start_new_master() {
            Ok(u) => {
                self.log.log(
                    Level::Info,
                    &format!("upgrading: started a new master, {}", u.pid),
                );
                self.upgrade = Some(Upgrade {
                    deadline: now + self.upgrade_timeout(),
                    ..u
                });
            }
            Err(e) => self.log.log(
                Level::Error,
                &format!("upgrade failed: {}; this master serves on", e.message()),
            ),
        }
    }

    fn start_new_master(&self) -> Result<Upgrade, Error> {
        let io = |what: &str, e: std::io::Error| Error::io(ErrorKind::Spawn, what, e);
        let program = self
            .program
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::Spawn, "the program's path is unknown"))?;
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| io("create the upgrade pipe", e.into()))?;
        let mut passed: Vec<RawFd> = vec![write.as_raw_fd()];
        let mut words = Vec::new();
        for (at, l) in self.listeners.iter().enumerate() {
            for fd in &l.fds {
                passed.push(fd.as_raw_fd());
                words.push(Entry::word(l, at));
            }
        }
        let count = words.len() as RawFd;
        let last = READY_AT + count;
        // Sources above every target, so that placing one never clobbers another.
        let (sources, _lifted) = bind::lift(&passed, last)?;
        let placements: Vec<(RawFd, RawFd)> = sources.into_iter().zip(READY_AT..).collect();
        let fds: Vec<String> = (1..=count).map(|i| (READY_AT + i).to_string()).collect();
        let args: Vec<OsString> = std::env::args_os().collect();
        let mut cmd = Command::new(&program);
        if let Some(arg0) = args.first() {
            cmd.arg0(arg0);
        }
        cmd.args(args.iter().skip(1))
            .env_remove(CHILD_ENV)
            // systemd names the main process it pings for; the new master takes that role
            // (sd_watchdog_enabled(3) applies a watchdog without the variable to any reader).
            .env_remove("WATCHDOG_PID")
            .env(UPGRADE_READY_ENV, READY_AT.to_string())
            .env(UPGRADE_FDS_ENV, fds.join(","))
            .env(UPGRADE_LISTENERS_ENV, words.join(","));
        // The sockets arrive as this master's, not as systemd's.
        for var in super::ACTIVATION_ENV {
            cmd.env_remove(var);
        }
        // SAFETY: only dup2 and close_range (or fcntl) between fork and exec, no allocation:
        // `placements` was built before.
        unsafe {
            cmd.pre_exec(move || {
                for &(from, to) in &placements {
                    if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                cloexec_fds_above(last);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| io(&format!("start {}", program.display()), e))?;
        let pid = child.id() as Pid;
        Ok(Upgrade {
            pid,
            pidfd: spawn::pidfd_open(pid),
            ready: read,
            deadline: Instant::now(),
        })
    }

    /// The ready pipe is readable: the new master's byte, or EOF if it went without one.
    pub(super) fn upgrade_ready_event(&mut self) -> Result<(), Error> {
        let Some(u) = &self.upgrade else {
            return Ok(());
        };
        let mut byte = [0u8; 1];
        match nix::unistd::read(u.ready.as_fd(), &mut byte) {
            Ok(1) if byte[0] == READY_BYTE => {
                let new = u.pid;
                self.log.log(
                    Level::Info,
                    &format!("upgraded: new master {new} is ready; this master stops its children"),
                );
                self.upgrade = None;
                // From this master, which systemd still takes for the main process: it accepts
                // MAINPID= from that one only, unless the unit says NotifyAccess=all (then the
                // new master's own MAINPID= has done it already).
                self.tell_systemd(&format!("MAINPID={new}"));
                self.handed_over = true;
                // The socket files are the new master's to remove now.
                for l in &mut self.listeners {
                    l.unlink = None;
                }
                self.report_upgrade(new);
                self.begin_stop(false);
                Ok(())
            }
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => Ok(()),
            _ => {
                self.fail_upgrade("it closed the ready pipe without reporting ready");
                Ok(())
            }
        }
    }

    /// `on_upgrade`, before this master stops its children. The new master serves whatever
    /// the hook does, so its failure is logged, never a reason to stop otherwise.
    fn report_upgrade(&mut self, new: Pid) {
        let old = std::process::id() as Pid;
        let called = hook::call("on_upgrade", || {
            if let Some(f) = &mut self.hooks.on_upgrade {
                f(old, new);
            }
            Ok(())
        });
        if let Err(e) = called {
            self.log.log(Level::Error, e.message());
        }
    }

    /// The new master's pidfd is readable: it exited before it was ready.
    pub(super) fn upgrade_exit_event(&mut self) {
        let Some(u) = &self.upgrade else { return };
        if let Some(exit) = wait(u.pid, false) {
            let why = format!("it {} before it was ready", describe(exit));
            self.upgrade_reaped = true;
            self.fail_upgrade(&why);
        }
    }

    /// The master stops while a new one starts: that one goes too.
    pub(super) fn fail_upgrade_for_stop(&mut self) {
        self.fail_upgrade("was still starting when this master was told to stop");
    }

    fn fail_upgrade(&mut self, why: &str) {
        let Some(u) = self.upgrade.take() else { return };
        if !std::mem::take(&mut self.upgrade_reaped) {
            // Its children see their lifeline close and drain.
            signal_all(&[u.pid], Signal::SIGKILL);
            let _ = wait(u.pid, true);
        }
        self.log.log(
            Level::Error,
            &format!(
                "upgrade failed: the new master {} {why}; this master serves on",
                u.pid
            ),
        );
    }

    /// New master: every child is ready, so the old master may go.
    pub(super) fn report_upgraded(&mut self) {
        for (at, file) in std::mem::take(&mut self.inherited_files) {
            if let Some(l) = self.listeners.get_mut(at) {
                l.unlink = Some(file);
            }
        }
        if let Some(ready) = self.ready_pipe.take() {
            let _ = nix::unistd::write(&ready, &[READY_BYTE]);
        }
    }
}
