//! What a child becomes before any of its code runs: the user and groups it runs as (the
//! `user` and `group` options) and the CPU it is pinned to (`cpu_affinity`). The master
//! resolves both once, before it spawns (an unknown name is an error then, not a crash loop
//! later); they are applied between fork and exec, because a re-executed child runs the
//! program's `main` before it reaches `listen_and_serve`; and a child checks on arrival that
//! it got them, since a command producer starts children its own way.

use std::ffi::CString;
use std::io;
use std::sync::Arc;

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::sys::prctl::set_no_new_privs;
use nix::unistd::{Gid, Group, Pid as NixPid, Uid, User, getgrouplist};

use crate::config::ProcessConfig;
use crate::error::{Error, ErrorKind};

/// The credentials of every child.
#[derive(Debug)]
pub(crate) struct Identity {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
    /// "user nobody, group nogroup" for messages.
    label: String,
}

/// What the master resolved for its children, once.
#[derive(Clone, Debug, Default)]
pub(crate) struct Confinement {
    identity: Option<Arc<Identity>>,
    /// The master's allowed CPUs when `cpu_affinity` is on, in order.
    cpus: Vec<usize>,
}

/// One child's share: its slot's CPU and the common identity.
#[derive(Clone, Debug, Default)]
pub(crate) struct ChildConfinement {
    identity: Option<Arc<Identity>>,
    cpu: Option<CpuSet>,
}

impl Confinement {
    /// Refuses, before anything is bound or spawned, a name that does not exist and an
    /// identity this master cannot hand out (it is not root).
    pub(crate) fn resolve(cfg: &ProcessConfig) -> Result<Confinement, Error> {
        let identity = identity(cfg)?;
        if let Some(id) = &identity {
            let (euid, egid) = (Uid::effective(), Gid::effective());
            if !euid.is_root() && (euid != id.uid || egid != id.gid) {
                return Err(Error::invalid(format!(
                    "children are to run as {}, which needs a master running as root (this \
                     one is uid {euid})",
                    id.label
                )));
            }
        }
        let identity = identity.map(Arc::new);
        let cpus = if cfg.cpu_affinity {
            allowed_cpus()?
        } else {
            Vec::new()
        };
        Ok(Confinement { identity, cpus })
    }

    pub(crate) fn for_slot(&self, slot: usize) -> ChildConfinement {
        let cpu = (!self.cpus.is_empty()).then(|| {
            let mut set = CpuSet::new();
            // The CPU came from sched_getaffinity, so it is below CpuSet::count().
            let _ = set.set(self.cpus[slot % self.cpus.len()]);
            set
        });
        ChildConfinement {
            identity: self.identity.clone(),
            cpu,
        }
    }

    /// Said once in the master's log when serving starts; None when nothing is confined.
    pub(crate) fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(id) = &self.identity {
            parts.push(format!("children run as {}", id.label));
        }
        if !self.cpus.is_empty() {
            parts.push(format!(
                "child i on CPU {:?}[i % {}]",
                self.cpus,
                self.cpus.len()
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

impl ChildConfinement {
    /// Applies it to the calling process. Runs between fork and exec, so it makes system calls
    /// only, and allocates nothing (the group list and the CPU set were built in the master).
    pub(crate) fn apply(&self) -> io::Result<()> {
        if let Some(cpu) = &self.cpu {
            sched_setaffinity(NixPid::from_raw(0), cpu)?;
        }
        let Some(id) = &self.identity else {
            return Ok(());
        };
        // Raw system calls, not glibc's wrappers: those broadcast the change to every thread of
        // the process under locks, machinery a forked child (one thread, locks copied in
        // whatever state the master's other threads held them) must not run. Groups first,
        // then the group, then the user, while still privileged to change each.
        // SAFETY: plain system calls on integers and a pointer to `groups`' buffer, valid for
        // its length; gid_t is u32, as Gid's representation.
        let failed = unsafe {
            libc::syscall(libc::SYS_setgroups, id.groups.len(), id.groups.as_ptr()) != 0
                || libc::syscall(
                    libc::SYS_setresgid,
                    id.gid.as_raw(),
                    id.gid.as_raw(),
                    id.gid.as_raw(),
                ) != 0
                || libc::syscall(
                    libc::SYS_setresuid,
                    id.uid.as_raw(),
                    id.uid.as_raw(),
                    id.uid.as_raw(),
                ) != 0
        };
        if failed {
            return Err(io::Error::last_os_error());
        }
        // No set-uid program or file capability may give a child back what it just gave up.
        set_no_new_privs()?;
        Ok(())
    }
}

/// In a child, on arrival: refuses to serve under another identity than the one configured
/// (a command producer that did not drop privileges), rather than run as root.
pub(crate) fn check_child(cfg: &ProcessConfig) -> Result<(), Error> {
    let Some(id) = identity(cfg)? else {
        return Ok(());
    };
    let (uid, gid) = (Uid::current(), Gid::current());
    if uid != id.uid || Uid::effective() != id.uid || gid != id.gid {
        return Err(Error::new(
            ErrorKind::InvalidState,
            format!(
                "this child runs as uid {uid} gid {gid}, but the options ask for {}: a \
                 command_producer must start children with that identity (SpawnRequest::command \
                 does)",
                id.label
            ),
        ));
    }
    Ok(())
}

/// The identity the options ask for; None when they ask for none.
fn identity(cfg: &ProcessConfig) -> Result<Option<Identity>, Error> {
    if cfg.user.is_none() && cfg.group.is_none() {
        return Ok(None);
    }
    let lookup = |what: &str, e: nix::Error| {
        Error::io(
            ErrorKind::InvalidArgument,
            format!("look up {what}"),
            e.into(),
        )
    };
    let user = match cfg.user.as_deref() {
        Some(name) => Some(
            User::from_name(name)
                .map_err(|e| lookup(&format!("user {name:?}"), e))?
                .ok_or_else(|| Error::invalid(format!("user = {name:?}: no such user")))?,
        ),
        None => None,
    };
    let group = match cfg.group.as_deref() {
        Some(name) => Some(
            Group::from_name(name)
                .map_err(|e| lookup(&format!("group {name:?}"), e))?
                .ok_or_else(|| Error::invalid(format!("group = {name:?}: no such group")))?,
        ),
        None => None,
    };
    let gid = group
        .as_ref()
        .map(|g| g.gid)
        .or(user.as_ref().map(|u| u.gid))
        .unwrap_or_else(Gid::current);
    let (uid, groups) = match &user {
        Some(u) => {
            let name = CString::new(u.name.as_str())
                .map_err(|_| Error::invalid(format!("user = {:?}: not a C string", u.name)))?;
            let groups = getgrouplist(&name, gid)
                .map_err(|e| lookup(&format!("the groups of {:?}", u.name), e))?;
            (u.uid, groups)
        }
        None => (Uid::current(), vec![gid]),
    };
    let label = format!(
        "user {}, group {}",
        user.as_ref()
            .map_or_else(|| format!("uid {uid}"), |u| u.name.clone()),
        group
            .as_ref()
            .map_or_else(|| format!("gid {gid}"), |g| g.name.clone()),
    );
    Ok(Some(Identity {
        uid,
        gid,
        groups,
        label,
    }))
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Result<Vec<usize>, Error> {
    let set = sched_getaffinity(NixPid::from_raw(0))
        .map_err(|e| Error::io(ErrorKind::Io, "read the master's CPU affinity", e.into()))?;
    Ok((0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect())
}
