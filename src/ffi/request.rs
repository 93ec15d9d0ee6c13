//! `prefork_request`: read-only accessors over [`crate::Request`].
//!
//! Every view returned here borrows the connection's buffers: it is valid only until the
//! `handle` callback that received the request returns.

use std::ffi::{c_char, c_int, c_void};
use std::net::IpAddr;

use super::convert::{PREFORK_IP_BYTES, bytes_arg, prefork_str, ref_arg, write_addr, write_text};
use super::error::{FfiError, prefork_result};
use crate::Request;
use crate::listen::UNIX_PREFIX;

/// A request, borrowed for the duration of one `handle` callback. Opaque: read it with the
/// `prefork_request_*` functions, on the thread that runs the callback, and never keep the
/// pointer after the callback returns.
pub struct prefork_request {
    _opaque: [u8; 0],
}

/// The request behind the opaque pointer `handle` received.
///
/// # Safety
/// `req` must be NULL or the pointer of a `handle` callback that is still running.
unsafe fn request<'a>(req: *const prefork_request) -> Result<&'a Request<'a>, FfiError> {
    // SAFETY: CHandler::handle made this pointer from a live `&Request` (see above).
    unsafe { ref_arg(req.cast::<Request<'a>>(), "req") }
}

/// The method, e.g. "GET", case-sensitive as received. Valid until `handle` returns; empty
/// if `req` is NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_request_method(req: *const prefork_request) -> prefork_str {
    ffi_boundary!({
        Ok(prefork_str::from_bytes(
            unsafe { request(req) }?.method().as_bytes(),
        ))
    })
}

/// The request-target as received: "/path?query" (origin form), "http://host/path"
/// (absolute form) or "*". Valid until `handle` returns; empty if `req` is NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_request_target(req: *const prefork_request) -> prefork_str {
    ffi_boundary!({
        Ok(prefork_str::from_bytes(
            unsafe { request(req) }?.target().as_bytes(),
        ))
    })
}

/// The path of the target, without the query (for the absolute form, the part after the
/// authority). Not percent-decoded. Valid until `handle` returns; empty if `req` is NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_request_path(req: *const prefork_request) -> prefork_str {
    ffi_boundary!({
        Ok(prefork_str::from_bytes(
            unsafe { request(req) }?.path().as_bytes(),
        ))
    })
}

/// The query after "?", without the "?"; empty when there is none. Not percent-decoded.
/// Valid until `handle` returns; empty if `req` is NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_request_query(req: *const prefork_request) -> prefork_str {
    ffi_boundary!({
        Ok(prefork_str::from_bytes(
            unsafe { request(req) }?.query().as_bytes(),
        ))
    })
}

/// The whole request body, de-chunked; empty when there is none. Valid until `handle`
/// returns; empty if `req` is NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_request_body(req: *const prefork_request) -> prefork_str {
    ffi_boundary!({ Ok(prefork_str::from_bytes(unsafe { request(req) }?.body())) })
}

/// The HTTP minor version: 1 for HTTP/1.1, 0 for HTTP/1.0; -1 if `req` is NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_request_minor_version(req: *const prefork_request) -> c_int {
    ffi_boundary!({ Ok(c_int::from(unsafe { request(req) }?.minor_version())) })
}

/// The number of header fields, repeated names counted each time; 0 if `req` is NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_request_header_count(req: *const prefork_request) -> usize {
    ffi_boundary!({ Ok(unsafe { request(req) }?.headers().len()) })
}

/// The header field at `index` (from 0 to `prefork_request_header_count` - 1), in the order
/// received, names as received. On success writes the views to `*name` and `*value` (either
/// may be NULL if not wanted) and returns true; returns false, writing nothing, when `index` is
/// out of range or `req` is NULL. The views are valid until `handle` returns.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_request_header_at(
    req: *const prefork_request,
    index: usize,
    name: *mut prefork_str,
    value: *mut prefork_str,
) -> bool {
    ffi_boundary!({
        let Some(field) = unsafe { request(req) }?.headers().get(index) else {
            return Ok(false);
        };
        // SAFETY: non-NULL outputs point to writable prefork_str (the caller's contract).
        unsafe {
            if let Some(out) = name.as_mut() {
                *out = prefork_str::from_bytes(field.name.as_bytes());
            }
            if let Some(out) = value.as_mut() {
                *out = prefork_str::from_bytes(field.value);
            }
        }
        Ok(true)
    })
}

/// Looks up a header by name (`name_len` bytes at `name`, compared case-insensitively; NULL
/// only with length 0). On success writes the first value to `*value` (which may be NULL to
/// only test presence) and returns true; returns false, writing nothing, when there is no
/// such header or `req` is NULL. The view is valid until `handle` returns. To read every value
/// of a repeated header, iterate with `prefork_request_header_at`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_request_header(
    req: *const prefork_request,
    name: *const c_char,
    name_len: usize,
    value: *mut prefork_str,
) -> bool {
    ffi_boundary!({
        let req = unsafe { request(req) }?;
        let wanted = unsafe { bytes_arg(name.cast::<c_void>(), name_len, "name") }?;
        let found = req
            .headers()
            .iter()
            .find(|h| h.name.as_bytes().eq_ignore_ascii_case(wanted));
        let Some(field) = found else { return Ok(false) };
        // SAFETY: a non-NULL output points to a writable prefork_str (the caller's contract).
        if let Some(out) = unsafe { value.as_mut() } {
            *out = prefork_str::from_bytes(field.value);
        }
        Ok(true)
    })
}

/// Writes the client's address as NUL-terminated text into `buf` (`cap` bytes):
/// "203.0.113.7:51234" or "[2001:db8::1]:51234"; "unix:" for a connection of a Unix-socket
/// listener, whose peer has no address to name (`prefork_request_local_addr` says which
/// listener). With PROXY protocol on for the listener, it is the client's address from the
/// connection's header, over a Unix socket too (how HAProxy in front on the same machine
/// passes it); for a header that names none (a balancer's own connection: version 2 LOCAL,
/// version 1 UNKNOWN, or an AF_UNSPEC or AF_UNIX address), the socket's peer, which is the
/// balancer. Returns PREFORK_OK;
/// PREFORK_ERR_INVALID_ARGUMENT when it does not fit (`PREFORK_ADDR_STRLEN` always fits);
/// PREFORK_ERR_IO when the address is unknown; PREFORK_ERR_NULL for a NULL argument. `buf`
/// is written only on success. Call it during `handle`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_request_peer_addr(
    req: *const prefork_request,
    buf: *mut c_char,
    cap: usize,
) -> prefork_result {
    ffi_boundary!({
        unsafe {
            write_request_addr(req, buf, cap, "peer address", |req, buf, cap| {
                match (req.peer_addr(), req.local_addr()) {
                    (Some(peer), _) => write_addr(peer, buf, cap).map(Some),
                    (None, Some(local)) if local.is_unix() => {
                        write_text(format_args!("{UNIX_PREFIX}"), buf, cap).map(Some)
                    }
                    (None, _) => Ok(None),
                }
            })
        }
    })
}

/// The frame of the accessors that write one of the request's addresses as text: `write`
/// writes it into `buf`, or answers `None` when the request has none (`what`, for the error).
///
/// # Safety
/// As the accessors': `req` NULL or the `handle` callback's; `buf` NULL or `cap` writable
/// bytes.
unsafe fn write_request_addr(
    req: *const prefork_request,
    buf: *mut c_char,
    cap: usize,
    what: &str,
    write: impl FnOnce(&Request<'_>, *mut c_char, usize) -> Result<Option<()>, FfiError>,
) -> Result<prefork_result, FfiError> {
    let req = unsafe { request(req) }?;
    if buf.is_null() {
        return Err(FfiError::null("buf"));
    }
    match write(req, buf, cap)? {
        Some(()) => Ok(prefork_result::PREFORK_OK),
        None => Err(FfiError::new(
            prefork_result::PREFORK_ERR_IO,
            format!("the {what} of this connection is unknown"),
        )),
    }
}

/// Writes the address of the listener that accepted the request's connection as
/// NUL-terminated text into `buf` (`cap` bytes; `PREFORK_ADDR_STRLEN` always suffices), as
/// `prefork_listener_addr` writes it: the listener's bound address, so "0.0.0.0:8080" for a
/// listener on every interface, "unix:/run/app.sock", "unix:@name". It tells which of the
/// server's listeners (`prefork_add_listener`) the request came in on. Returns PREFORK_OK;
/// PREFORK_ERR_INVALID_ARGUMENT when it does not fit; PREFORK_ERR_NULL for a NULL argument.
/// `buf` is written only on success. Call it during `handle`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_request_local_addr(
    req: *const prefork_request,
    buf: *mut c_char,
    cap: usize,
) -> prefork_result {
    ffi_boundary!({
        unsafe {
            write_request_addr(req, buf, cap, "listener", |req, buf, cap| {
                match req.local_addr() {
                    Some(local) => write_text(format_args!("{local}"), buf, cap).map(Some),
                    None => Ok(None),
                }
            })
        }
    })
}

/// Writes the client's address in binary: the IP address's bytes in network order to `ip`
/// (`PREFORK_IP_BYTES`, 16 bytes: 4 used for IPv4, all 16 for IPv6), their count (4 or 16) to
/// `*ip_len` and the port to `*port`; for IPv6 the scope id is left out (it is part of
/// `prefork_request_peer_addr`'s text). It is the address `prefork_request_peer_addr` writes:
/// with `prefork_set_proxy_protocol` on, the client's from the connection's PROXY protocol
/// header (the socket's peer, which is the balancer, for a header that names none). For
/// callers that compare or format the address themselves, such as a binding that keeps the
/// text of the last one (a keep-alive connection asks again for every request). Returns
/// PREFORK_OK; PREFORK_ERR_IO when the address is unknown or no IP address (a connection of a
/// Unix-socket listener without a PROXY header naming a client); PREFORK_ERR_NULL for a NULL
/// argument. The outputs are written only on success. Call it during `handle`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_request_peer_ip(
    req: *const prefork_request,
    ip: *mut u8,
    ip_len: *mut usize,
    port: *mut u16,
) -> prefork_result {
    ffi_boundary!({
        let req = unsafe { request(req) }?;
        if ip.is_null() || ip_len.is_null() || port.is_null() {
            let arg = if ip.is_null() {
                "ip"
            } else if ip_len.is_null() {
                "ip_len"
            } else {
                "port"
            };
            return Err(FfiError::null(arg));
        }
        let Some(peer) = req.peer_addr() else {
            return Err(FfiError::new(
                prefork_result::PREFORK_ERR_IO,
                "the peer address of this connection is unknown",
            ));
        };
        let (bytes, len) = match peer.ip() {
            IpAddr::V4(v4) => {
                let mut b = [0u8; PREFORK_IP_BYTES];
                b[..4].copy_from_slice(&v4.octets());
                (b, 4)
            }
            IpAddr::V6(v6) => (v6.octets(), 16),
        };
        // SAFETY: non-NULL outputs: ip has PREFORK_IP_BYTES writable bytes, ip_len and port
        // point to writable values (the caller's contract).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), ip, PREFORK_IP_BYTES);
            *ip_len = len;
            *port = peer.port();
        }
        Ok(prefork_result::PREFORK_OK)
    })
}

/// The PREFORK_PP2_TYPE_* values are the TLV types of PROXY protocol version 2 that its
/// specification registers, for `prefork_request_proxy_tlv` (0xE0 to 0xEF are for
/// applications, such as a cloud balancer's own; 0xF0 to 0xF7 are experimental). This one is
/// the application protocol (ALPN) the client negotiated with the balancer.
pub const PREFORK_PP2_TYPE_ALPN: u8 = 0x01;
/// The host name the client asked for (TLS SNI), UTF-8.
pub const PREFORK_PP2_TYPE_AUTHORITY: u8 = 0x02;
/// A CRC32C of the header: the library checked it (a connection whose header does not match
/// was closed).
pub const PREFORK_PP2_TYPE_CRC32C: u8 = 0x03;
/// Padding, to be ignored.
pub const PREFORK_PP2_TYPE_NOOP: u8 = 0x04;
/// An opaque id of the connection from the balancer, at most 128 bytes.
pub const PREFORK_PP2_TYPE_UNIQUE_ID: u8 = 0x05;
/// TLS details of the client's connection to the balancer: a client byte, a 32-bit verify
/// result, then sub-TLVs (version 0x21, CN 0x22, cipher 0x23, signature 0x24, key 0x25).
pub const PREFORK_PP2_TYPE_SSL: u8 = 0x20;
/// The network namespace's name.
pub const PREFORK_PP2_TYPE_NETNS: u8 = 0x30;

/// Looks up the first TLV of type `type` (a `PREFORK_PP2_TYPE_*` value, or an application's
/// 0xE0 to 0xEF) in the PROXY protocol version 2 header the request's connection began with
/// (see `prefork_set_proxy_protocol`). On success writes its value to `*value` (which may be
/// NULL to only test presence) and returns true; returns false, writing nothing, when the
/// header has no such TLV, the connection had no version 2 header (the option is off, or the
/// balancer sent version 1), or `req` is NULL. The view is valid until `handle` returns. To
/// read every TLV of a repeated type, iterate with `prefork_request_proxy_tlv_at`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_request_proxy_tlv(
    req: *const prefork_request,
    r#type: u8,
    value: *mut prefork_str,
) -> bool {
    ffi_boundary!({
        let req = unsafe { request(req) }?;
        let Some(found) = req.proxy_header().and_then(|h| h.tlv(r#type)) else {
            return Ok(false);
        };
        // SAFETY: a non-NULL output points to a writable prefork_str (the caller's contract).
        if let Some(out) = unsafe { value.as_mut() } {
            *out = prefork_str::from_bytes(found);
        }
        Ok(true)
    })
}

/// The TLV at `index` (from 0) of the connection's PROXY protocol version 2 header, in the
/// order received. On success writes its type to `*type` and its value to `*value` (either may
/// be NULL if not wanted) and returns true; returns false, writing nothing, when `index` is
/// past the last TLV, the connection had no version 2 header, or `req` is NULL. The view is
/// valid until `handle` returns.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_request_proxy_tlv_at(
    req: *const prefork_request,
    index: usize,
    r#type: *mut u8,
    value: *mut prefork_str,
) -> bool {
    ffi_boundary!({
        let req = unsafe { request(req) }?;
        let Some(tlv) = req.proxy_header().and_then(|h| h.tlvs().nth(index)) else {
            return Ok(false);
        };
        // SAFETY: non-NULL outputs point to writable storage (the caller's contract).
        unsafe {
            if let Some(out) = r#type.as_mut() {
                *out = tlv.kind;
            }
            if let Some(out) = value.as_mut() {
                *out = prefork_str::from_bytes(tlv.value);
            }
        }
        Ok(true)
    })
}
