#!/usr/bin/env bash
# Rust: formatting, lints as errors, the library build every later stage links (cmake, Go and
# Zig find it fresh in target/debug), and every cargo test (unit, integration, process engine).
set -euo pipefail
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo build --lib --locked
cargo test --locked 2>&1
