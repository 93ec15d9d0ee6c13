//! Moving a closing reuseport socket's connections to its siblings.
//!
//! In reuseport mode a slot removed while serving (SIGTTOU, `set_children_live`) takes its
//! socket's accept queue and closes it. Until the close, the kernel keeps hashing new
//! connections to that socket, so one that completes its handshake after the last accept
//! and before the close is reset with it (a CI run's scaling test saw 2 of 230 requests
//! reset). The kernel can instead move whatever a closing member of a reuseport group holds
//! (queued connections and handshakes under way) to the other members: for the whole network
//! namespace with the sysctl `net.ipv4.tcp_migrate_req=1`, or for one group once a program of
//! type `BPF_PROG_TYPE_SK_REUSEPORT` attached for `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE` is on it
//! (Linux 5.14). The program here is the smallest there is: it answers SK_PASS without
//! choosing, which leaves the choice to the kernel's usual hash of the connection, both for a
//! new connection and for one that moves. Loading it takes CAP_BPF (or CAP_SYS_ADMIN); without
//! it the master logs that the race remains, and serves as before.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `enum bpf_prog_type` and `enum bpf_attach_type` (include/uapi/linux/bpf.h).
const BPF_PROG_TYPE_SK_REUSEPORT: u32 = 21;
const BPF_SK_REUSEPORT_SELECT_OR_MIGRATE: u32 = 40;
const BPF_PROG_LOAD: libc::c_int = 5;
/// What an SK_REUSEPORT program returns to let the connection through.
const SK_PASS: i32 = 1;

/// One eBPF instruction (`struct bpf_insn`): the destination and source registers share a byte.
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// `r0 = SK_PASS; exit`.
const PROGRAM: [Insn; 2] = [
    Insn {
        code: 0xb7, // BPF_ALU64 | BPF_MOV | BPF_K
        regs: 0,
        off: 0,
        imm: SK_PASS,
    },
    Insn {
        code: 0x95, // BPF_JMP | BPF_EXIT
        regs: 0,
        off: 0,
        imm: 0,
    },
];

/// The members of `union bpf_attr` that BPF_PROG_LOAD reads here, at their offsets; the
/// kernel requires the rest (up to the size passed) to be zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    /// Room up to 128 bytes, zero: later members the kernel knows of.
    rest: [u64; 7],
}

/// Makes the reuseport group of `socket` (a bound, listening SO_REUSEPORT TCP socket) move a
/// closing member's connections to the others. Attaching again, to any member, replaces the
/// group's program with an identical one.
pub(crate) fn enable(socket: BorrowedFd<'_>) -> io::Result<()> {
    let program = load()?;
    let fd: libc::c_int = program.as_raw_fd();
    // SAFETY: a valid descriptor and a pointer to an int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_EBPF,
            (&raw const fd).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // The group holds the program now: its descriptor is no longer needed.
    Ok(())
}

fn load() -> io::Result<OwnedFd> {
    let license = c"Dual MIT/Apache-2.0";
    let mut name = [0u8; 16];
    name[..15].copy_from_slice(b"prefork_migrate");
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SK_REUSEPORT,
        insn_cnt: PROGRAM.len() as u32,
        insns: PROGRAM.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_SK_REUSEPORT_SELECT_OR_MIGRATE,
        ..ProgLoad::default()
    };
    // SAFETY: BPF_PROG_LOAD reads `attr` (size_of bytes, the tail zero) and the instructions
    // and license it points to, which outlive the call. The descriptor it returns is
    // close-on-exec (the kernel's default for BPF objects).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &raw const attr,
            size_of::<ProgLoad>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Socket, Type};
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    fn member(addr: SocketAddr) -> Socket {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s.listen(128).unwrap();
        s
    }

    /// 64 connections queued on two members of a group, none accepted; the first member
    /// closes; every connection is then accepted from the second and carries data both ways
    /// (without the program, the first member's share is reset by its close).
    #[test]
    fn a_closing_member_hands_its_queue_to_the_other() {
        let first = member("127.0.0.1:0".parse().unwrap());
        let addr = first.local_addr().unwrap().as_socket().unwrap();
        let second = member(addr);
        if let Err(e) = enable(first.as_fd()) {
            // Only a process without CAP_BPF may be refused (CI runs as root).
            assert!(
                e.raw_os_error() == Some(libc::EPERM) && unsafe { libc::geteuid() } != 0,
                "attaching the migration program: {e}"
            );
            eprintln!("skipped: loading a BPF program is not permitted here ({e})");
            return;
        }
        let clients: Vec<TcpStream> = (0..64).map(|_| TcpStream::connect(addr).unwrap()).collect();
        drop(first);
        second.set_nonblocking(true).unwrap();
        let mut accepted = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while accepted.len() < clients.len() && Instant::now() < deadline {
            match second.accept() {
                Ok((s, _)) => accepted.push(TcpStream::from(s)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        assert_eq!(
            accepted.len(),
            clients.len(),
            "connections accepted from the second member"
        );
        for s in &mut accepted {
            s.set_nonblocking(false).unwrap();
            s.write_all(b"x").unwrap();
        }
        for mut c in clients {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut byte = [0u8; 1];
            c.read_exact(&mut byte).expect("a moved connection works");
            assert_eq!(&byte, b"x");
        }
    }
}
