//! One error type for the whole library. Every failure carries a kind (which the C ABI maps to
//! a `prefork_result` code), a message with enough context to act on without a debugger, and,
//! when the operating system refused something, the `io::Error` it came from.

use std::fmt;
use std::io;

/// What went wrong, coarsely: the C ABI turns each kind into one `prefork_result` code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// An argument or option value is out of range or malformed.
    InvalidArgument,
    /// The call is not allowed now (already serving, already served, wrong process role).
    InvalidState,
    /// The listen address could not be resolved or bound.
    Bind,
    /// A child process could not be started, or the command producer broke its contract.
    Spawn,
    /// A child did not report "listening" within the startup timeout.
    StartupTimeout,
    /// Children exited in a crash loop (before they were ready, or within the recover min
    /// uptime of it; any exit with recover_every_exit) more often than the recover threshold
    /// allows.
    OverRecovery,
    /// A user hook returned an error or panicked.
    Hook,
    /// Any other operating-system failure.
    Io,
    /// A panic was caught at an API boundary.
    Panic,
    /// A TLS certificate or key is unusable (unreadable, missing, encrypted, not matching), or
    /// a child could not set up TLS.
    Tls,
    /// The operation does not apply to this connection (taking over a connection whose
    /// transport is not a plain socket).
    Unsupported,
}

/// Error returned by every fallible operation of the library.
///
/// An error caused by the operating system keeps the [`io::Error`] as its
/// [`source`](std::error::Error::source), and [`os_error`](Error::os_error) gives its number,
/// so a caller tells "address in use" from "permission denied" without parsing text. Following
/// the Rust convention, `Display` then shows the context only (the cause is the source's to
/// print); [`message`](Error::message) is the whole line, context and cause, as the C side's
/// `prefork_last_error()` and the library's logs show it.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    /// The whole line; its first `context_len` bytes are the context alone.
    message: String,
    context_len: usize,
    source: Option<io::Error>,
}

/// Error type user hooks and handlers return: anything printable.
pub type HookError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let message = message.into();
        Error {
            kind,
            context_len: message.len(),
            message,
            source: None,
        }
    }

    /// An OS error with a description of what was being attempted; `err` becomes the source.
    pub fn io(kind: ErrorKind, context: impl fmt::Display, err: io::Error) -> Self {
        let context = context.to_string();
        Error {
            kind,
            context_len: context.len(),
            message: format!("{context}: {err}"),
            source: Some(err),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The whole message: what was attempted and, for an OS error, the OS's reason.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The OS error number (`errno`, e.g. `libc::EADDRINUSE`) when the operating system
    /// caused this error, else `None`.
    pub fn os_error(&self) -> Option<i32> {
        self.source.as_ref().and_then(io::Error::raw_os_error)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message[..self.context_len])
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// Renders a caught panic payload as text for error messages and logs.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn an_os_error_keeps_its_cause() {
        let cause = io::Error::from_raw_os_error(libc::EADDRINUSE);
        let text = cause.to_string();
        let err = Error::io(ErrorKind::Bind, "bind 127.0.0.1:80", cause);
        assert_eq!(err.os_error(), Some(libc::EADDRINUSE));
        assert_eq!(err.to_string(), "bind 127.0.0.1:80");
        assert_eq!(err.message(), format!("bind 127.0.0.1:80: {text}"));
        let source = err.source().expect("a source");
        let io = source.downcast_ref::<io::Error>().expect("an io::Error");
        assert_eq!(io.raw_os_error(), Some(libc::EADDRINUSE));
    }

    #[test]
    fn an_error_without_an_os_cause_has_none() {
        let err = Error::invalid("children: 5000 is above 1024");
        assert_eq!(err.os_error(), None);
        assert!(err.source().is_none());
        assert_eq!(err.to_string(), err.message());
    }
}
