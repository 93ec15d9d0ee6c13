//! Raw-socket conformance suite of the HTTP/1.1 engine (issue 3), run in-process against
//! `prefork::http::testing::serve_for_tests`. Every case asserts the exact statuses, the number
//! of responses and whether the connection was closed (the cases of `conformance` their exact
//! bytes too); every socket read is bounded by `support::IO_TIMEOUT`.

mod batch;
mod conformance;
mod deferred;
mod drain;
mod hijack;
mod limits;
mod malformed;
mod proxy;
mod rates;
mod smuggling;
mod support;
mod timeouts;
mod valid;

/// One case: `request` gets exactly `statuses`, then the connection is open or `closed`.
#[macro_export]
macro_rules! case {
    ($name:ident, $request:expr, [$($status:expr),*], closed) => {
        #[test]
        fn $name() {
            $crate::support::check($request, &[$($status),*], true);
        }
    };
    ($name:ident, $request:expr, [$($status:expr),*], open) => {
        #[test]
        fn $name() {
            $crate::support::check($request, &[$($status),*], false);
        }
    };
    // The same, and the responses are exactly `bytes` (`support::check_bytes`).
    ($name:ident, $request:expr, [$($status:expr),*], closed, $bytes:expr) => {
        #[test]
        fn $name() {
            $crate::support::check_bytes($request, &[$($status),*], true, &$bytes);
        }
    };
    ($name:ident, $request:expr, [$($status:expr),*], open, $bytes:expr) => {
        #[test]
        fn $name() {
            $crate::support::check_bytes($request, &[$($status),*], false, &$bytes);
        }
    };
}
