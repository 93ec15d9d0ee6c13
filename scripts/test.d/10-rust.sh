#!/usr/bin/env bash
# Rust: formatting, lints as errors, the library build every later stage links (cmake, Go and
# Zig find it fresh in target/debug), and every cargo test (unit, integration, process engine).
set -euo pipefail
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy
# tests/tls talks to the server with openssl s_client and curl too (it skips them, saying so,
# when they are missing and this is not root).
need=()
for tool in openssl curl; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
  echo "installing ${need[*]} with apt-get"
  apt-get update -qq </dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" </dev/null >/dev/null
fi
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo build --lib --locked
cargo test --locked 2>&1
