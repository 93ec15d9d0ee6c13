//! Running user code from the master: a hook's error or panic becomes an `Error`, never an
//! unwind through the supervisor (which would skip reaping the children).

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::error::{Error, ErrorKind, HookError, panic_message};

/// Calls hook `name`, turning an error or a panic into an `Error` of `kind`.
pub(crate) fn call_as<T>(
    kind: ErrorKind,
    name: &str,
    f: impl FnOnce() -> Result<T, HookError>,
) -> Result<T, Error> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Error::new(kind, format!("{name} hook failed: {e}"))),
        Err(payload) => Err(Error::new(
            kind,
            format!("{name} hook panicked: {}", panic_message(&*payload)),
        )),
    }
}

/// Calls a hook whose failure stops the master (`ErrorKind::Hook`).
pub(crate) fn call<T>(name: &str, f: impl FnOnce() -> Result<T, HookError>) -> Result<T, Error> {
    call_as(ErrorKind::Hook, name, f)
}
