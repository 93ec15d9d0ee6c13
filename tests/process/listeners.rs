//! Several listeners: TCP and Unix sockets served by every child in both listener modes, the
//! socket file's life (a stale one replaced, a live one refused, removed at the stop), the
//! request's local address, and a binary upgrade that carries every listener over.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::harness::{Master, Outcome, alive, all_gone, fd_target, fd_targets, get_at};
use crate::{SEC, ensure, stop_cleanly};

/// A directory of its own for a test's socket files, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("pf-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test's directory");
        Dir(dir)
    }

    fn sock(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The addresses the master reports serving (its `listeners` line).
fn listeners(m: &mut Master) -> Result<Vec<String>, String> {
    let line = match m.seen.iter().find_map(|l| l.strip_prefix("listeners ")) {
        Some(l) => l.to_string(),
        None => m.expect("listeners ", 10 * SEC)?,
    };
    Ok(line.split(' ').map(str::to_string).collect())
}

/// `GET /local` on `addr`: (the listener the child names, the peer, the child's pid).
fn local(addr: &str) -> Result<(String, String, i32), String> {
    let body = get_at(addr, "/local").map_err(|e| format!("GET /local on {addr}: {e}"))?;
    let mut parts = body.split(' ');
    let (Some(l), Some(p), Some(pid)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("GET /local on {addr} gave {body:?}"));
    };
    Ok((l.into(), p.into(), pid.parse().map_err(|e| format!("{e}"))?))
}

/// The socket inode behind descriptor `fd` of `pid` ("socket:[N]").
fn socket_at(pid: i32, fd: i32) -> Result<String, String> {
    let target = fd_target(pid, &fd.to_string()).unwrap_or_default();
    ensure!(
        target.starts_with("socket:"),
        "fd {fd} of child {pid} is {target:?}, not a socket"
    );
    Ok(target)
}

pub fn several_listeners_served_by_every_child() -> Outcome {
    serve_several(false)
}

pub fn several_listeners_served_by_every_child_reuseport() -> Outcome {
    serve_several(true)
}

/// Two TCP listeners, a Unix socket file and an abstract one: every child has all four at
/// fds 3..6 and its lifeline at 7 (nothing more from the master), each listener answers with
/// its own address as the request's local address, and in reuseport mode each child has its
/// own socket of each TCP listener while the Unix ones are shared.
fn serve_several(reuseport: bool) -> Outcome {
    let dir = Dir::new(if reuseport { "many-rp" } else { "many" });
    let file = dir.sock("a.sock");
    let name = format!("pf-abstract-{}-{reuseport}", std::process::id());
    let list = format!("127.0.0.1:0;unix:{};unix:@{name}", file.display());
    let env = [
        ("PF_CHILDREN", "2"),
        ("PF_LISTENERS", list.as_str()),
        ("PF_UNIX_MODE", "432"),
    ];
    let mut m = Master::start_in_mode(&env, reuseport);
    let (kids, _) = m.ready()?;
    let addrs = listeners(&mut m)?;
    ensure!(
        addrs.len() == 4
            && addrs[0].starts_with("127.0.0.1:")
            && addrs[1].starts_with("127.0.0.1:")
            && addrs[0] != addrs[1]
            && addrs[2] == format!("unix:{}", file.display())
            && addrs[3] == format!("unix:@{name}"),
        "listeners {addrs:?}"
    );
    let meta = std::fs::metadata(&file).map_err(|e| e.to_string())?;
    ensure!(
        meta.file_type().is_socket() && meta.permissions().mode() & 0o777 == 0o660,
        "the socket file has mode {:o}",
        meta.permissions().mode()
    );
    let master_fds: Vec<String> = fd_targets(m.pid()).into_iter().map(|(_, t)| t).collect();
    let mut sockets: Vec<Vec<String>> = Vec::new();
    for &kid in &kids {
        let fds: Vec<String> = (3..7)
            .map(|fd| socket_at(kid, fd))
            .collect::<Result<_, _>>()?;
        socket_at(kid, 7)?;
        // Past the lifeline, only what the child opened itself.
        for (fd, target) in fd_targets(kid) {
            ensure!(
                fd.parse::<i32>().unwrap() <= 7 || !master_fds.contains(&target),
                "child {kid} fd {fd} -> {target} came from the master"
            );
        }
        sockets.push(fds);
    }
    for (i, addr) in addrs.iter().enumerate() {
        let shared = sockets[0][i] == sockets[1][i];
        let tcp = i < 2;
        ensure!(
            shared != (reuseport && tcp),
            "listener {addr}: children's sockets {} and {}",
            sockets[0][i],
            sockets[1][i]
        );
    }
    for line in m.seen.iter().filter(|l| l.starts_with("child-listeners ")) {
        ensure!(
            line.ends_with(&addrs.join(" ")),
            "a child reports {line:?}, the master {addrs:?}"
        );
    }
    for addr in &addrs {
        // Enough requests that both children answer, on every listener: the shared queue
        // goes to whoever accepts first, so ask until each has answered (bounded).
        let mut seen = std::collections::HashSet::new();
        let deadline = Instant::now() + 10 * SEC;
        while seen.len() < kids.len() && Instant::now() < deadline {
            let (l, peer, pid) = local(addr)?;
            ensure!(&l == addr, "GET /local on {addr} names listener {l}");
            ensure!(
                addr.starts_with("unix:") == (peer == "-"),
                "peer {peer} on {addr}"
            );
            ensure!(
                kids.contains(&pid),
                "answered by {pid}, not one of {kids:?}"
            );
            seen.insert(pid);
        }
        ensure!(
            seen.len() == kids.len(),
            "on {addr} only {seen:?} of {kids:?} answered"
        );
    }
    if reuseport {
        // A slot added while serving gets its own socket of each TCP listener, and the
        // shared Unix ones.
        m.signal(libc::SIGTTIN);
        let all = crate::wait_children(&m, 3, 10 * SEC)?;
        let added = *all
            .iter()
            .find(|p| !kids.contains(p))
            .ok_or("no new child")?;
        let fds: Vec<String> = (3..7)
            .map(|fd| socket_at(added, fd))
            .collect::<Result<_, _>>()?;
        for (i, addr) in addrs.iter().enumerate() {
            let tcp = i < 2;
            ensure!(
                (fds[i] == sockets[0][i]) != tcp && (fds[i] == sockets[1][i]) != tcp,
                "the added child's socket of {addr} is {}, the others' {} and {}",
                fds[i],
                sockets[0][i],
                sockets[1][i]
            );
        }
    }
    stop_cleanly(&mut m)?;
    ensure!(
        !file.exists(),
        "the socket file outlived a clean stop: {}",
        file.display()
    );
    ensure!(
        get_at(&addrs[3], "/").is_err(),
        "the abstract socket still answers after the stop"
    );
    Ok(())
}

/// A socket file left by a crashed run (bound, then its listener closed without removing it)
/// is replaced: nobody answers on it.
pub fn stale_socket_file_is_replaced() -> Outcome {
    let dir = Dir::new("stale");
    let file = dir.sock("s.sock");
    drop(std::os::unix::net::UnixListener::bind(&file).map_err(|e| e.to_string())?);
    ensure!(file.exists(), "the stale file is not there");
    let list = format!("unix:{}", file.display());
    let mut m = Master::start(&[
        ("PF_CHILDREN", "1"),
        ("PF_ADDR", ""),
        ("PF_LISTENERS", &list),
    ]);
    m.expect("ready ", 10 * SEC)?;
    let (l, _, _) = local(&list)?;
    ensure!(l == list, "served {l}");
    stop_cleanly(&mut m)?;
    ensure!(!file.exists(), "the socket file outlived the stop");
    Ok(())
}

/// A socket someone listens on is refused at once, and left alone; so is a file that is no
/// socket.
pub fn live_socket_file_is_refused() -> Outcome {
    let dir = Dir::new("live");
    let file = dir.sock("l.sock");
    let holder = std::os::unix::net::UnixListener::bind(&file).map_err(|e| e.to_string())?;
    let list = format!("unix:{}", file.display());
    let started = Instant::now();
    let mut m = Master::start(&[("PF_CHILDREN", "1"), ("PF_LISTENERS", &list)]);
    let result = m.failure()?;
    ensure!(
        result.starts_with("result err Bind ") && result.contains("another process is listening"),
        "got {result:?}"
    );
    ensure!(started.elapsed() < 5 * SEC, "took {:?}", started.elapsed());
    ensure!(m.all_children().is_empty(), "children were started");
    ensure!(file.exists(), "the live socket's file was removed");
    drop(holder);
    let plain = dir.sock("plain");
    std::fs::write(&plain, "data").map_err(|e| e.to_string())?;
    let list = format!("unix:{}", plain.display());
    let mut m = Master::start(&[("PF_CHILDREN", "1"), ("PF_LISTENERS", &list)]);
    let result = m.failure()?;
    ensure!(
        result.contains("is not a socket"),
        "a plain file gave {result:?}"
    );
    ensure!(
        std::fs::read_to_string(&plain).ok().as_deref() == Some("data"),
        "the plain file was touched"
    );
    Ok(())
}

/// SIGUSR2 with a TCP and a Unix listener: the new master serves both with its own children;
/// the old master's exit leaves the socket file (it is the new master's now), and the new
/// master's stop removes it.
pub fn upgrade_carries_every_listener() -> Outcome {
    upgrade_with(false)
}

pub fn upgrade_carries_every_listener_reuseport() -> Outcome {
    upgrade_with(true)
}

fn upgrade_with(reuseport: bool) -> Outcome {
    let dir = Dir::new(if reuseport { "upg-rp" } else { "upg" });
    let file = dir.sock("u.sock");
    let list = format!("127.0.0.1:0;unix:{}", file.display());
    let env = [("PF_CHILDREN", "2"), ("PF_LISTENERS", list.as_str())];
    let mut m = Master::start_in_mode(&env, reuseport);
    let (old_kids, _) = m.ready()?;
    let addrs = listeners(&mut m)?;
    ensure!(addrs.len() == 3, "listeners {addrs:?}");
    m.seen.retain(|l| !l.starts_with("listeners "));
    m.signal(libc::SIGUSR2);
    let new: i32 = m
        .expect("master ", 10 * SEC)?
        .parse()
        .map_err(|e| format!("{e}"))?;
    let result = (|| {
        let new_kids: Vec<i32> = m
            .expect("ready ", 10 * SEC)?
            .split(',')
            .map(|p| p.parse().expect("pid"))
            .collect();
        let status = m.wait_exit_then(10 * SEC, Duration::ZERO)?;
        ensure!(status.code() == Some(0), "old master exit {status:?}");
        all_gone(&old_kids, 5 * SEC)?;
        ensure!(
            listeners(&mut m)? == addrs,
            "the new master serves other listeners; {}",
            m.context()
        );
        ensure!(
            file.exists(),
            "the old master removed the handed-over socket file"
        );
        for addr in &addrs {
            let (l, _, pid) = local(addr)?;
            ensure!(
                &l == addr && new_kids.contains(&pid),
                "{addr}: {l} by {pid}"
            );
        }
        unsafe { libc::kill(new, libc::SIGTERM) };
        let mut everyone = new_kids.clone();
        everyone.push(new);
        all_gone(&everyone, 10 * SEC)?;
        ensure!(!file.exists(), "the new master's stop left the socket file");
        Ok(())
    })();
    if alive(new) {
        unsafe { libc::kill(new, libc::SIGKILL) };
        let _ = all_gone(&[new], 2 * SEC);
    }
    result
}

/// PROXY protocol on one listener only (a Unix socket, as HAProxy in front would use): the
/// peer is the header's client there, the socket's peer on the other.
pub fn proxy_protocol_per_listener_over_a_unix_socket() -> Outcome {
    use std::io::{Read, Write};
    let dir = Dir::new("proxy");
    let file = dir.sock("p.sock");
    let list = format!("unix:{}+proxy", file.display());
    let mut m = Master::start(&[("PF_CHILDREN", "1"), ("PF_LISTENERS", &list)]);
    m.expect("ready ", 10 * SEC)?;
    let addrs = listeners(&mut m)?;
    let (_, peer, _) = local(&addrs[0])?;
    ensure!(peer.starts_with("127.0.0.1:"), "TCP peer {peer}");
    let mut s = std::os::unix::net::UnixStream::connect(&file).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(5 * SEC))
        .map_err(|e| e.to_string())?;
    s.write_all(
        b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n\
          GET /local HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    // Closed at once: the server's lingering close would hold the stop for its 2 s.
    drop(s);
    ensure!(
        raw.starts_with("HTTP/1.1 200")
            && raw.contains(&format!(
                "\r\n\r\nunix:{} 203.0.113.7:51234 ",
                file.display()
            )),
        "over the Unix socket with a PROXY header: {raw:?}"
    );
    // Without the header, that listener closes the connection.
    let body = get_at(&addrs[1], "/local");
    ensure!(
        body.is_err(),
        "a connection without a header was served: {body:?}"
    );
    stop_cleanly(&mut m)
}

/// Serve mode hands the application one TCP listener: added listeners are refused before
/// anything is bound or started.
pub fn serve_mode_refuses_added_listeners() -> Outcome {
    let mut m = Master::start(&[
        ("PF_CHILDREN", "1"),
        ("PF_SERVE", "start"),
        ("PF_LISTENERS", "127.0.0.1:0"),
    ]);
    let result = m.failure()?;
    ensure!(
        result.starts_with("result err InvalidState ") && result.contains("serve mode serves one"),
        "got {result:?}"
    );
    ensure!(m.all_children().is_empty(), "children were started");
    Ok(())
}
