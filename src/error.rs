//! One error type for the whole library. Every failure carries a kind (which the C ABI maps to
//! a `prefork_result` code) and a message with enough context to act on without a debugger.

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
    /// Children exited more often than the recover threshold allows.
    OverRecovery,
    /// A user hook returned an error or panicked.
    Hook,
    /// Any other operating-system failure.
    Io,
    /// A panic was caught at an API boundary.
    Panic,
}

/// Error returned by every fallible operation of the library.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// Error type user hooks and handlers return: anything printable.
pub type HookError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// An OS error with a description of what was being attempted.
    pub fn io(kind: ErrorKind, context: impl fmt::Display, err: io::Error) -> Self {
        Error::new(kind, format!("{context}: {err}"))
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

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
