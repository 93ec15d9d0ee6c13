//! Pluggable logging. The library logs process events (spawn, exit, recovery, shutdown) and
//! engine trouble (accept failures); never one line per request.

use std::io::Write;

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(C)]
pub enum Level {
    Debug = 0,
    Info = 1,
    Warn = 2,
    Error = 3,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// Receives the library's log lines. Called on the master's or a child's serving thread; it must
/// not call back into the library.
pub trait Logger: Send + Sync {
    fn log(&self, level: Level, message: &str);
}

/// The default logger: one line per event on stderr, `prefork[PID] LEVEL: message`, at `Info`
/// and above.
#[derive(Debug, Default)]
pub struct StderrLogger;

impl Logger for StderrLogger {
    fn log(&self, level: Level, message: &str) {
        if level < Level::Info {
            return;
        }
        // One write per line so lines of concurrent processes do not interleave.
        let line = format!(
            "prefork[{}] {}: {}\n",
            std::process::id(),
            level.as_str(),
            message
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}
