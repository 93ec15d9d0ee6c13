//! HTTPS: the TLS entry points and the certificates chosen by server name (SNI).

use std::ffi::{c_char, c_void};

use super::convert::{bytes_arg, path_arg};
use super::error::{FfiError, prefork_result};
use super::handle::{configure, prefork, serve};

/// As `prefork_listen_and_serve`, over TLS 1.3 and 1.2 (ALPN "http/1.1").
///
/// **ORDER: the certificate file first, then the key file.** fasthttp's Go
/// `ListenAndServeTLS(addr, certKey, certFile)` takes the key first; the Go binding keeps
/// fasthttp's order, C does not.
///
/// `cert_file` is a PEM file with the certificate chain, the server's own certificate first;
/// `key_file` is a PEM file with its private key: RSA or ECDSA, in PKCS#8 ("PRIVATE KEY"),
/// PKCS#1 ("RSA PRIVATE KEY") or SEC1 ("EC PRIVATE KEY") form, not encrypted. Both are
/// NUL-terminated paths. This certificate is the default; those of `prefork_add_tls_cert`
/// are served to clients that ask for one of their names.
///
/// In the master, every certificate and key is read and checked before the address is bound:
/// an unreadable file, a file with no certificate or no key, an encrypted key or a key that
/// does not match its certificate returns PREFORK_ERR_TLS at once, with the file and the
/// reason in `prefork_last_error()`, and no child is started. An expired certificate is only
/// a warning to the logger. The master then hands the certificates, the keys and the
/// session-ticket secret to each child over its lifeline (fd 4): children never open the
/// files (in a child the paths are not used), and no key appears in argv or the environment.
/// A `command_producer` needs nothing beyond the documented fd 3 and fd 4.
///
/// Every child accepts the session tickets of every other child (the ticket keys derive from
/// the master's secret and rotate every 12 hours; a ticket stays valid for at least 12 hours
/// and at most 24), so a returning client resumes whichever child takes its connection.
///
/// A client that sends plain HTTP to this port gets a clear-text 400 response and the
/// connection is closed. A TLS handshake must finish, with the first request head, within
/// the header timeout.
///
/// Serve mode has no TLS: on a handle with a serve function (`prefork_set_serve`) this
/// returns PREFORK_ERR_STATE and starts nothing.
///
/// Errors: those of `prefork_listen_and_serve`, PREFORK_ERR_NULL for a NULL path,
/// PREFORK_ERR_STATE in serve mode, and PREFORK_ERR_TLS.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_listen_and_serve_tls(
    p: *mut prefork,
    addr: *const c_char,
    cert_file: *const c_char,
    key_file: *const c_char,
) -> prefork_result {
    ffi_boundary!({
        let cert = unsafe { path_arg(cert_file, "cert_file") }?;
        let key = unsafe { path_arg(key_file, "key_file") }?;
        unsafe { serve(p, addr, |s, addr| s.listen_and_serve_tls(addr, cert, key)) }
    })
}

/// As `prefork_listen_and_serve_tls` with the PEM text in memory (fasthttp's
/// `ListenAndServeTLSEmbed`): `cert_len` bytes at `cert_pem` hold the certificate chain,
/// `key_len` bytes at `key_pem` the private key. **ORDER: the certificate first, then the
/// key**, as in fasthttp's `ListenAndServeTLSEmbed(addr, certData, keyData)`. The bytes are
/// copied; they need not be NUL-terminated. Checked as the files are (the message says
/// "in-memory TLS certificate #1" where it would name a file).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_listen_and_serve_tls_embed(
    p: *mut prefork,
    addr: *const c_char,
    cert_pem: *const c_void,
    cert_len: usize,
    key_pem: *const c_void,
    key_len: usize,
) -> prefork_result {
    ffi_boundary!({
        let cert = unsafe { pem_arg(cert_pem, cert_len, "cert_pem") }?;
        let key = unsafe { pem_arg(key_pem, key_len, "key_pem") }?;
        unsafe {
            serve(p, addr, |s, addr| {
                s.listen_and_serve_tls_pem(addr, cert, key)
            })
        }
    })
}

/// Adds a certificate chain and its key (PEM files, the certificate first, as in
/// `prefork_listen_and_serve_tls`) for clients that ask for one of its DNS names (its
/// subjectAltName; "*.example.com" matches one label) in the TLS server name (SNI), as
/// fasthttp's `AppendCert(certFile, keyFile)`. A client is served the first certificate that
/// matches its name exactly, else the first that matches by wildcard, else the default one
/// (that of the TLS entry point). Call it before a TLS entry point, as often as needed; the
/// files are read and checked when serving starts, with the entry point's errors.
/// `prefork_listen_and_serve` (plain HTTP) does not use them. Errors: PREFORK_ERR_NULL,
/// PREFORK_ERR_STATE (while serving).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_add_tls_cert(
    p: *mut prefork,
    cert_file: *const c_char,
    key_file: *const c_char,
) -> prefork_result {
    ffi_boundary!({
        let cert = unsafe { path_arg(cert_file, "cert_file") }?;
        let key = unsafe { path_arg(key_file, "key_file") }?;
        unsafe {
            configure(p, |inner| {
                inner.server.add_tls_cert(cert, key);
                Ok::<(), FfiError>(())
            })
        }
    })
}

/// `prefork_add_tls_cert` with the PEM text in memory (fasthttp's `AppendCertEmbed`): the
/// certificate chain (`cert_len` bytes at `cert_pem`) first, then the key. Copied.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_add_tls_cert_embed(
    p: *mut prefork,
    cert_pem: *const c_void,
    cert_len: usize,
    key_pem: *const c_void,
    key_len: usize,
) -> prefork_result {
    ffi_boundary!({
        let cert = unsafe { pem_arg(cert_pem, cert_len, "cert_pem") }?;
        let key = unsafe { pem_arg(key_pem, key_len, "key_pem") }?;
        unsafe {
            configure(p, |inner| {
                inner.server.add_tls_cert_pem(cert, key);
                Ok::<(), FfiError>(())
            })
        }
    })
}

/// PEM bytes: NULL is refused even with length 0, since no PEM text is empty.
///
/// # Safety
/// A non-NULL `ptr` must point to `len` readable bytes.
unsafe fn pem_arg<'a>(ptr: *const c_void, len: usize, arg: &str) -> Result<&'a [u8], FfiError> {
    if ptr.is_null() {
        return Err(FfiError::null(arg));
    }
    unsafe { bytes_arg(ptr, len, arg) }
}
