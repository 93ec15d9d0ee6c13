//! The C ABI: thin wrappers over the Rust API (issue 4).
