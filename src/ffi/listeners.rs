//! Several listeners: `prefork_add_listener` (TCP, Unix sockets, systemd's sockets) and the
//! process-wide view of what is served, `prefork_listener_count` and `prefork_listener_addr`.

use std::ffi::{c_char, c_int};

use super::convert::{str_arg, write_text};
use super::error::{FfiError, prefork_result};
use super::extensible::{self, Extensible};
use super::handle::{configure, prefork};
use crate::listen::ListenerOptions;

/// `prefork_listener_options.proxy_protocol`: as the handle's `prefork_set_proxy_protocol`
/// (the default).
pub const PREFORK_LISTENER_PROXY_DEFAULT: c_int = 0;
/// `prefork_listener_options.proxy_protocol`: this listener's connections send no PROXY
/// protocol header, whatever the handle's setting.
pub const PREFORK_LISTENER_PROXY_OFF: c_int = 1;
/// `prefork_listener_options.proxy_protocol`: every connection of this listener starts with a
/// PROXY protocol header (version 1 or 2), whatever the handle's setting; the handle's
/// `proxy_allow` and `proxy_timeout_ms` apply.
pub const PREFORK_LISTENER_PROXY_ON: c_int = 2;

/// Options of one listener (`prefork_add_listener`). Extensible, as `prefork_handler`:
/// members are only ever added at the end, and one a program does not know of reads as 0,
/// its default. Initialise it by member name with the rest zero; the library copies it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct prefork_listener_options {
    /// PREFORK_LISTENER_PROXY_DEFAULT (0), PREFORK_LISTENER_PROXY_OFF or
    /// PREFORK_LISTENER_PROXY_ON. Default: 0, the handle's `prefork_set_proxy_protocol`.
    pub proxy_protocol: c_int,
    /// For a `unix:/path` listener: the socket file's permission bits (connecting needs
    /// write permission), e.g. 0660, set before the socket listens, so no client connects
    /// through the umask's bits. Default: 0, the bits the umask leaves. Refused (with
    /// PREFORK_ERR_INVALID_ARGUMENT) for other addresses and above 0777.
    pub unix_mode: u32,
}

// SAFETY: integers only, so all-zero is the unset value.
unsafe impl Extensible for prefork_listener_options {
    const NAME: &'static str = "prefork_listener_options";
    const SINCE: &'static str = "0.2";
    const FIRST_SIZE: usize = size_of::<[u32; 2]>();
}

fn options(c: &prefork_listener_options) -> Result<ListenerOptions, FfiError> {
    let proxy_protocol = match c.proxy_protocol {
        PREFORK_LISTENER_PROXY_DEFAULT => None,
        PREFORK_LISTENER_PROXY_OFF => Some(false),
        PREFORK_LISTENER_PROXY_ON => Some(true),
        other => {
            return Err(FfiError::invalid(format!(
                "opts->proxy_protocol: {other} is no PREFORK_LISTENER_PROXY_* value (0, 1 or 2)"
            )));
        }
    };
    Ok(ListenerOptions {
        proxy_protocol,
        unix_mode: (c.unix_mode != 0).then_some(c.unix_mode),
    })
}

/// Adds a listener to the handle `p`: every child serves it, with the address given to
/// `prefork_listen_and_serve` (which comes first, and may then be "") and the listeners added
/// before it, in that order. C and C++ call it through the `prefork_add_listener` macro
/// (with `p`, `addr` and `opts`), which passes `sizeof(prefork_listener_options)`; Go, Zig and other FFIs call
/// it with the size of their struct. `opts` may be NULL: every option at its default.
///
/// `addr` (NUL-terminated) is one of:
/// - "host:port": TCP, resolved for `prefork_set_network`; "[::1]:8080" for IPv6, an empty
///   host for every interface, port 0 for a free port (`prefork_listener_addr` tells which);
/// - "unix:/path": a Unix socket file. A file already there is replaced only when it is a
///   socket nobody listens on (a crashed run's); one that answers, or a file that is no
///   socket, is an error (PREFORK_ERR_BIND) and is left alone. The master that created the
///   file removes it when it stops, unless it handed it to a new master (binary upgrade),
///   which removes it in its turn;
/// - "unix:@name": a socket in Linux's abstract namespace (no file; gone with the server);
/// - "systemd": every socket the service manager passed (socket activation, `sd_listen_fds`:
///   descriptors 3.. with `LISTEN_FDS`, `LISTEN_PID` this process's pid, names in
///   `LISTEN_FDNAMES`, which the log shows). Variables that are missing, not numbers, meant
///   for another pid, or descriptors that are not listening stream sockets are an error
///   (PREFORK_ERR_BIND) when serving starts. The variables never reach the children.
///   Without a "systemd" listener, a socket passed that way serves the listener of its
///   address instead of a bind (so a socket unit and the program may name the same port, and
///   a new master started with the variables takes the sockets over); one that matches no
///   listener is logged and closed.
///
/// With `prefork_set_reuseport` each child gets its own SO_REUSEPORT socket of every TCP
/// listener the master binds; Unix sockets and systemd's are shared by all children. TLS
/// (`prefork_listen_and_serve_tls`) serves every listener. Serve mode serves one TCP listener
/// and refuses added ones (PREFORK_ERR_STATE when serving starts); a `command_producer`
/// places one listener and refuses more.
///
/// Children receive the listeners at descriptors 3, 4, ... in this order and the lifeline
/// right after them. Call it in every process (the children build the same handle; in a
/// child it only records the address). Returns PREFORK_OK; PREFORK_ERR_NULL for a NULL `p` or
/// `addr`; PREFORK_ERR_INVALID_ARGUMENT for a malformed "unix:" address, bad options, an
/// `opts_size` that is no `prefork_listener_options` size, or a struct that sets a member this
/// library does not know; PREFORK_ERR_STATE while serving. A TCP address is resolved, and
/// every address bound, when serving starts.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_add_listener_sized(
    p: *mut prefork,
    addr: *const c_char,
    opts: *const prefork_listener_options,
    opts_size: usize,
) -> prefork_result {
    ffi_boundary!({
        let addr = unsafe { str_arg(addr, "addr") }?;
        let opts = if opts.is_null() {
            ListenerOptions::default()
        } else {
            options(&unsafe { extensible::read(opts, opts_size, "opts") }?)?
        };
        unsafe {
            configure(p, |inner| {
                inner
                    .server
                    .add_listener(addr, opts)
                    .map_err(|e| FfiError::invalid(e.message().to_string()))
            })
        }
    })
}

/// How many listeners this process serves while `prefork_listen_and_serve` runs (a "systemd"
/// listener counts once per socket passed): in the master from the bind on, in a child from
/// before `init_child`; 0 before and after. Any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_listener_count() -> usize {
    ffi_boundary!({ Ok(crate::listener_addrs().len()) })
}

/// Writes the address of listener `index` (0-based, in the order of `prefork_listener_count`:
/// the address of `prefork_listen_and_serve` first, then the added ones) as NUL-terminated
/// text into `buf` (`cap` bytes; `PREFORK_ADDR_STRLEN` always suffices): "127.0.0.1:41823"
/// (with the port a port 0 got), "[::1]:8080", "unix:/run/app.sock" or "unix:@name".
/// `prefork_local_addr` is index 0. Returns PREFORK_OK; PREFORK_ERR_STATE when nothing is
/// served; PREFORK_ERR_INVALID_ARGUMENT for an index past the last or a `buf` too small;
/// PREFORK_ERR_NULL for a NULL `buf`. `buf` is written only on success. Any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_listener_addr(
    index: usize,
    buf: *mut c_char,
    cap: usize,
) -> prefork_result {
    ffi_boundary!({
        if buf.is_null() {
            return Err(FfiError::null("buf"));
        }
        let addrs = crate::listener_addrs();
        if addrs.is_empty() {
            return Err(FfiError::state("no server is running in this process"));
        }
        let Some(addr) = addrs.get(index) else {
            return Err(FfiError::invalid(format!(
                "index {index}: this process serves {} listeners",
                addrs.len()
            )));
        };
        unsafe { write_text(format_args!("{addr}"), buf, cap) }?;
        Ok(prefork_result::PREFORK_OK)
    })
}
