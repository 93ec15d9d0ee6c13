//! Result codes, the thread-local last-error message, and their exports.

use std::cell::{Cell, RefCell};
use std::ffi::{CString, c_char, c_int};

use crate::{Error, ErrorKind};

/// The outcome of a fallible call. `PREFORK_OK` is 0; every failure also leaves a message
/// with context in `prefork_last_error()` on the calling thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum prefork_result {
    /// Success.
    PREFORK_OK = 0,
    /// A required pointer argument was NULL.
    PREFORK_ERR_NULL = 1,
    /// An argument or option value is out of range or malformed (also: a string that is not
    /// UTF-8, an output buffer that is too small).
    PREFORK_ERR_INVALID_ARGUMENT = 2,
    /// The call is not allowed now: the server is serving (or another thread is using the
    /// handle), or `prefork_listen_and_serve` was already called on it.
    PREFORK_ERR_STATE = 3,
    /// The listen address could not be resolved or bound (for example, it is in use).
    PREFORK_ERR_BIND = 4,
    /// A child process could not be started, or the command producer broke its contract.
    PREFORK_ERR_SPAWN = 5,
    /// A child did not report "listening" within the startup timeout.
    PREFORK_ERR_STARTUP_TIMEOUT = 6,
    /// Children exited in a crash loop (before they were ready, or within the recover min
    /// uptime of it; any exit with recover_every_exit) more often than the recover threshold
    /// allows.
    PREFORK_ERR_OVER_RECOVERY = 7,
    /// A hook returned nonzero (the message names the hook and the value it returned).
    PREFORK_ERR_HOOK = 8,
    /// Any other operating-system failure.
    PREFORK_ERR_IO = 9,
    /// A bug: a panic inside the library was caught at the API boundary.
    PREFORK_ERR_PANIC = 10,
    /// The operation does not apply to this connection: `prefork_response_hijack` on a
    /// connection whose transport is not a plain socket.
    PREFORK_ERR_UNSUPPORTED = 11,
    /// A TLS certificate or key is unusable: unreadable, not PEM, no certificate, no key, an
    /// encrypted key, or a key that does not match its certificate (the message names the
    /// file and the reason). Returned by the TLS entry points before any child starts.
    PREFORK_ERR_TLS = 12,
}

impl From<ErrorKind> for prefork_result {
    fn from(kind: ErrorKind) -> Self {
        use prefork_result::*;
        match kind {
            ErrorKind::InvalidArgument => PREFORK_ERR_INVALID_ARGUMENT,
            ErrorKind::InvalidState => PREFORK_ERR_STATE,
            ErrorKind::Bind => PREFORK_ERR_BIND,
            ErrorKind::Spawn => PREFORK_ERR_SPAWN,
            ErrorKind::StartupTimeout => PREFORK_ERR_STARTUP_TIMEOUT,
            ErrorKind::OverRecovery => PREFORK_ERR_OVER_RECOVERY,
            ErrorKind::Hook => PREFORK_ERR_HOOK,
            ErrorKind::Io => PREFORK_ERR_IO,
            ErrorKind::Panic => PREFORK_ERR_PANIC,
            ErrorKind::Unsupported => PREFORK_ERR_UNSUPPORTED,
            ErrorKind::Tls => PREFORK_ERR_TLS,
        }
    }
}

impl prefork_result {
    fn describe(code: c_int) -> &'static std::ffi::CStr {
        use prefork_result::*;
        const ALL: [prefork_result; 13] = [
            PREFORK_OK,
            PREFORK_ERR_NULL,
            PREFORK_ERR_INVALID_ARGUMENT,
            PREFORK_ERR_STATE,
            PREFORK_ERR_BIND,
            PREFORK_ERR_SPAWN,
            PREFORK_ERR_STARTUP_TIMEOUT,
            PREFORK_ERR_OVER_RECOVERY,
            PREFORK_ERR_HOOK,
            PREFORK_ERR_IO,
            PREFORK_ERR_PANIC,
            PREFORK_ERR_UNSUPPORTED,
            PREFORK_ERR_TLS,
        ];
        let Some(known) = ALL.into_iter().find(|&r| r as c_int == code) else {
            return c"unknown";
        };
        match known {
            PREFORK_OK => c"ok",
            PREFORK_ERR_NULL => c"a required pointer argument was NULL",
            PREFORK_ERR_INVALID_ARGUMENT => c"invalid argument",
            PREFORK_ERR_STATE => c"not allowed in the current state",
            PREFORK_ERR_BIND => c"cannot bind the listen address",
            PREFORK_ERR_SPAWN => c"cannot start a child process",
            PREFORK_ERR_STARTUP_TIMEOUT => c"a child did not start in time",
            PREFORK_ERR_OVER_RECOVERY => c"children exited more often than the recover threshold",
            PREFORK_ERR_HOOK => c"a hook failed",
            PREFORK_ERR_IO => c"operating-system error",
            PREFORK_ERR_PANIC => c"internal error (caught panic)",
            PREFORK_ERR_UNSUPPORTED => c"not supported on this connection",
            PREFORK_ERR_TLS => c"unusable TLS certificate or key",
        }
    }
}

/// A failure on its way out of an export: the code and the message for `prefork_last_error`.
#[derive(Debug)]
pub(crate) struct FfiError {
    code: prefork_result,
    message: String,
    /// The OS error number behind the failure, for `prefork_last_os_error`.
    os_error: Option<c_int>,
}

impl FfiError {
    pub(crate) fn new(code: prefork_result, message: impl Into<String>) -> Self {
        FfiError {
            code,
            message: message.into(),
            os_error: None,
        }
    }

    /// A required pointer argument named `arg` was NULL.
    pub(crate) fn null(arg: &str) -> Self {
        FfiError::new(prefork_result::PREFORK_ERR_NULL, format!("{arg} is NULL"))
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        FfiError::new(prefork_result::PREFORK_ERR_INVALID_ARGUMENT, message)
    }

    pub(crate) fn state(message: impl Into<String>) -> Self {
        FfiError::new(prefork_result::PREFORK_ERR_STATE, message)
    }

    pub(crate) fn panicked(payload: &(dyn std::any::Any + Send)) -> Self {
        FfiError::new(
            prefork_result::PREFORK_ERR_PANIC,
            format!(
                "internal error, please report: {}",
                crate::error::panic_message(payload)
            ),
        )
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// Stores the message (prefixed with the export's name) and the OS error number as the
    /// thread's last error, and returns the code.
    pub(crate) fn record(self, export: &str) -> prefork_result {
        set_last_error(&format!("{export}: {}", self.message), self.os_error);
        self.code
    }
}

impl From<Error> for FfiError {
    fn from(err: Error) -> Self {
        FfiError {
            code: err.kind().into(),
            message: err.message().to_string(),
            os_error: err.os_error(),
        }
    }
}

thread_local! {
    /// The last failure's message on this thread. Replaced (never cleared) by the next failure,
    /// so the pointer `prefork_last_error` hands out stays valid until then.
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
    /// The last failure's OS error number on this thread; 0 when it had no OS cause.
    static LAST_OS_ERROR: Cell<c_int> = const { Cell::new(0) };
}

fn set_last_error(message: &str, os_error: Option<c_int>) {
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // A thread being torn down has no slot left; losing the message there is harmless.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = Some(text));
    let _ = LAST_OS_ERROR.try_with(|slot| slot.set(os_error.unwrap_or(0)));
}

/// A static, human-readable description of a result code (for example "invalid argument").
/// Never NULL: a value that is not a `prefork_result` gives "unknown". The parameter is an
/// `int` so that any value may be passed. Callable from any thread, at any time.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_result_str(result: c_int) -> *const c_char {
    ffi_boundary!({ Ok(prefork_result::describe(result).as_ptr()) })
}

/// The message of the last failed prefork call on the calling thread, with context (which
/// function, which argument, the OS error), NUL-terminated; "" when no call has failed on this
/// thread yet. Never NULL. Successful calls leave it unchanged. The text is owned by the library
/// and stays valid until the next failing prefork call on the same thread: copy it to keep it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_last_error() -> *const c_char {
    ffi_boundary!({
        let ptr = LAST_ERROR
            .try_with(|slot| slot.borrow().as_ref().map(|s| s.as_ptr()))
            .ok()
            .flatten();
        Ok(ptr.unwrap_or(c"".as_ptr()))
    })
}

/// The operating-system error number (`errno`, as in <errno.h>) behind the last failed prefork
/// call on the calling thread, or 0 when that failure had no OS cause (a NULL argument, a
/// value out of range) or no call has failed yet. It tells causes apart without parsing
/// `prefork_last_error()`: a PREFORK_ERR_BIND with EADDRINUSE (the address is in use) from
/// one with EACCES (a privileged port) or EADDRNOTAVAIL (not a local address). Set and
/// replaced together with `prefork_last_error()`. Callable from any thread, at any time.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_last_os_error() -> c_int {
    ffi_boundary!({ Ok(LAST_OS_ERROR.try_with(Cell::get).unwrap_or(0)) })
}
