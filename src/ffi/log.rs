//! `prefork_set_logger`: routes the library's log lines to a C callback.

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use super::error::{FfiError, prefork_result};
use super::handle::{configure, prefork};
use super::user_data::UserData;
use crate::{Level, Logger};

/// Severity of a log line.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum prefork_log_level {
    /// Detail for debugging the library (the default logger drops it).
    PREFORK_LOG_DEBUG = 0,
    /// Process events: children started, exited, replaced; shutdown.
    PREFORK_LOG_INFO = 1,
    /// Trouble the library works around (a failed accept, a slow child).
    PREFORK_LOG_WARN = 2,
    /// Failures.
    PREFORK_LOG_ERROR = 3,
}

impl From<Level> for prefork_log_level {
    fn from(level: Level) -> Self {
        match level {
            Level::Debug => prefork_log_level::PREFORK_LOG_DEBUG,
            Level::Info => prefork_log_level::PREFORK_LOG_INFO,
            Level::Warn => prefork_log_level::PREFORK_LOG_WARN,
            Level::Error => prefork_log_level::PREFORK_LOG_ERROR,
        }
    }
}

type LogFn = unsafe extern "C" fn(*mut c_void, prefork_log_level, *const c_char, usize);

struct CLogger {
    log: LogFn,
    user_data: UserData,
}

impl Logger for CLogger {
    fn log(&self, level: Level, message: &str) {
        // Log lines are rare (process events, never one per request): a copy to add the NUL
        // costs nothing that matters.
        let mut text = Vec::with_capacity(message.len() + 1);
        text.extend_from_slice(message.as_bytes());
        text.push(0);
        // SAFETY: the caller's callback with its own user_data; text outlives the call.
        unsafe {
            (self.log)(
                self.user_data.ptr(),
                level.into(),
                text.as_ptr().cast(),
                message.len(),
            )
        }
    }
}

/// Sends the library's log lines to `log` instead of stderr (the default logger writes
/// "prefork[PID] LEVEL: message" lines at INFO and above). `log` receives every level,
/// DEBUG included, with `msg` holding `len` bytes followed by a NUL, borrowed for the call
/// only, and no trailing newline. It runs in the master and in every child, on any of their
/// threads, possibly concurrently; it must not call back into the library. To silence the
/// library, pass a function that does nothing.
///
/// `user_data_free` (optional) is called once with `user_data` when this logger is replaced
/// by another `prefork_set_logger` call or the handle is freed; never when this call failed
/// (PREFORK_ERR_NULL for a NULL `p` or `log`, PREFORK_ERR_STATE while serving).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefork_set_logger(
    p: *mut prefork,
    log: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            level: prefork_log_level,
            msg: *const c_char,
            len: usize,
        ),
    >,
    user_data: *mut c_void,
    user_data_free: Option<unsafe extern "C" fn(user_data: *mut c_void)>,
) -> prefork_result {
    ffi_boundary!({
        let log: LogFn = log.ok_or_else(|| FfiError::null("log"))?;
        unsafe {
            configure(p, |inner| {
                let logger = CLogger {
                    log,
                    user_data: UserData::new(user_data, user_data_free),
                };
                inner.server.set_logger(Arc::new(logger));
                Ok::<(), FfiError>(())
            })
        }
    })
}
