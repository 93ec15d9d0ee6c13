//! The C ABI: thin wrappers over the Rust API, no logic of their own beyond argument checks.
//!
//! `include/prefork.h` is generated from this module by cbindgen (see `cbindgen.toml` and
//! `tests/header.rs`): the doc comments here are the C reference manual, so they speak C and
//! state, for every item, who owns what, how long borrowed data lives and which process and
//! thread runs each callback. The safety contract of each `unsafe` export is that prose.
//!
//! Every export is `#[unsafe(no_mangle)] pub unsafe extern "C"` with its body inside
//! [`ffi_boundary!`], which turns a caught panic into `PREFORK_ERR_PANIC` (or the documented
//! default) and records misuse in the thread's last-error message.
//!
//! The modules depend on each other one way only. `handle` owns the C handle; `tls` serves
//! it over TLS and adds its certificates; `options`, `hooks`, `log` and `serve` configure one
//! through it; `handle` builds the handler of `handler`; `request` and `response` are the
//! handler's views, and `takeover` the handles for a response completed later or a connection
//! taken over, built on `response`. Under them all lie the shared leaves: `error` (codes, last
//! error), `convert` (arguments in, views and text out), `extensible` (the ABI's growth rule)
//! and `user_data` (a caller's pointer and its finalizer).

// C names on purpose: they are what the header shows.
#![allow(non_camel_case_types)]
// The header, not rustdoc, carries the safety contracts (see above).
#![allow(clippy::missing_safety_doc)]

#[macro_use]
mod panic;

// The header lists items in the order of these declarations: keep it the order a reader wants.
mod version;

mod error;

mod handle;

mod tls;

mod options;

mod listeners;

mod hooks;

mod stats;

mod log;

mod serve;

mod handler;

mod request;

mod response;

mod takeover;

mod convert;

mod extensible;

mod user_data;

pub use convert::*;
pub use error::*;
pub use handle::*;
pub use handler::*;
pub use hooks::*;
pub use listeners::*;
pub use log::*;
pub use options::*;
pub use request::*;
pub use response::*;
pub use serve::*;
pub use stats::*;
pub use takeover::*;
pub use tls::*;
pub use version::*;
