//! The panic boundary every export runs in.
//!
//! A panic must never unwind into C (since Rust 1.81 it would abort the host). The body of
//! every export runs inside `catch_unwind`; the body returns `Result<R, FfiError>` where `R`
//! is the export's C return type, and the macro turns an error into `R`'s error value after
//! recording the message, prefixed with the export's name, as the thread's last error.

use std::ffi::c_char;
use std::ptr;

use super::convert::prefork_str;
use super::error::prefork_result;

/// What an export returns when it fails (misuse, or an error of the Rust API) and when its
/// body panicked.
pub(crate) trait Boundary {
    fn failed(code: prefork_result) -> Self;
}

impl Boundary for prefork_result {
    fn failed(code: prefork_result) -> Self {
        code
    }
}

impl Boundary for () {
    fn failed(_: prefork_result) -> Self {}
}

impl Boundary for bool {
    fn failed(_: prefork_result) -> Self {
        false
    }
}

impl Boundary for usize {
    fn failed(_: prefork_result) -> Self {
        0
    }
}

/// Only `prefork_request_minor_version` returns an `int`: -1 tells failure from HTTP/1.0.
impl Boundary for i32 {
    fn failed(_: prefork_result) -> Self {
        -1
    }
}

impl Boundary for prefork_str {
    fn failed(_: prefork_result) -> Self {
        prefork_str::EMPTY
    }
}

/// Static strings: an empty one rather than NULL, so callers may print the result directly.
impl Boundary for *const c_char {
    fn failed(_: prefork_result) -> Self {
        c"".as_ptr()
    }
}

impl<T> Boundary for *mut T {
    fn failed(_: prefork_result) -> Self {
        ptr::null_mut()
    }
}

/// The export's name, from the path of a function item declared inside it (what
/// `std::any::type_name` gives, e.g. `prefork::ffi::options::prefork_set_children::here`), as
/// the caller wrote it: C code calls a `_sized` export through the header's macro of the base
/// name (`prefork_new` for `prefork_new_sized`).
pub(crate) fn export_name(path: &'static str) -> &'static str {
    let path = path.strip_suffix("::here").unwrap_or(path);
    let name = path.rsplit("::").next().unwrap_or(path);
    name.strip_suffix("_sized").unwrap_or(name)
}

/// Records `err` as the last error of the export at `here` (see `export_name`) and returns the
/// export's error value. Out of line, so that an export's success path stays short: the
/// response builders run several times per request.
#[cold]
#[inline(never)]
pub(crate) fn failed<R: Boundary>(err: super::error::FfiError, here: &'static str) -> R {
    R::failed(err.record(export_name(here)))
}

/// Runs an export's body: `ffi_boundary!({ ...; Ok(value) })`.
///
/// `signal_safe` variant: for the async-signal-safe exports only (`prefork_shutdown`,
/// `prefork_reload`, `prefork_upgrade`, `prefork_set_children_live`, `prefork_scale_children`). Its body returns the value directly
/// and the variant neither allocates nor touches thread-locals, so the export stays
/// async-signal-safe. Its catch arm is there so that no export lacks a boundary; it cannot run,
/// because those bodies (`crate::shutdown` and the like) only use atomics and write(2) and
/// cannot panic.
macro_rules! ffi_boundary {
    (signal_safe, $body:block) => {{
        match ::std::panic::catch_unwind(|| $body) {
            Ok(value) => value,
            Err(payload) => {
                // Freeing the payload could call the allocator, which a signal handler must not.
                ::std::mem::forget(payload);
                $crate::ffi::panic::Boundary::failed($crate::ffi::prefork_result::PREFORK_ERR_PANIC)
            }
        }
    }};
    ($body:block) => {{
        fn here() {}
        let body = ::std::panic::AssertUnwindSafe(
            || -> ::std::result::Result<_, $crate::ffi::error::FfiError> { $body },
        );
        match ::std::panic::catch_unwind(body) {
            Ok(Ok(value)) => value,
            Ok(Err(err)) => $crate::ffi::panic::failed(err, ::std::any::type_name_of_val(&here)),
            Err(payload) => $crate::ffi::panic::failed(
                $crate::ffi::error::FfiError::panicked(&*payload),
                ::std::any::type_name_of_val(&here),
            ),
        }
    }};
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;
    use crate::ffi::convert::prefork_str;
    use crate::ffi::prefork_last_error;

    fn last_error() -> String {
        // SAFETY: prefork_last_error returns a NUL-terminated string valid until the next failure.
        unsafe { CStr::from_ptr(prefork_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    extern "C" fn panics_with_result() -> prefork_result {
        ffi_boundary!({
            if std::hint::black_box(true) {
                panic!("boom");
            }
            Ok(prefork_result::PREFORK_OK)
        })
    }

    extern "C" fn panics_with_str() -> prefork_str {
        ffi_boundary!({
            if std::hint::black_box(true) {
                panic!("kaboom");
            }
            Ok(prefork_str::EMPTY)
        })
    }

    extern "C" fn fails() -> bool {
        ffi_boundary!({ Err(crate::ffi::error::FfiError::invalid("nope")) })
    }

    #[test]
    fn a_panic_becomes_the_error_value_and_a_message() {
        assert_eq!(panics_with_result(), prefork_result::PREFORK_ERR_PANIC);
        assert_eq!(
            last_error(),
            "panics_with_result: internal error, please report: boom"
        );
        let s = panics_with_str();
        assert!(!s.ptr.is_null() && s.len == 0);
        assert!(
            last_error().starts_with("panics_with_str: "),
            "{}",
            last_error()
        );
    }

    #[test]
    fn an_error_is_recorded_with_the_export_name() {
        assert!(!fails());
        assert_eq!(last_error(), "fails: nope");
    }

    #[test]
    fn export_names_come_from_the_item_path() {
        assert_eq!(
            export_name("prefork::ffi::options::prefork_set_children::here"),
            "prefork_set_children"
        );
        assert_eq!(export_name("prefork_new::here"), "prefork_new");
        assert_eq!(
            export_name("prefork::ffi::handle::prefork_new_sized::here"),
            "prefork_new"
        );
    }
}
