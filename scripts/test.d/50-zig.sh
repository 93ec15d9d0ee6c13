#!/usr/bin/env bash
# Zig: the binding in bindings/zig. Installs Zig from PyPI when missing, builds libprefork with
# cargo, then `zig build test`: translate-c of include/prefork.h, the example server written in
# Zig, and its end-to-end test (real master and children, HTTP requests, SIGTERM, clean stop).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

# The version build.zig.zon names as minimum_zig_version; the build API changes between releases.
ZIG_VERSION=0.17.1
say() { echo "50-zig: $*"; }
die() { echo "50-zig: FAILED: $*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 not found (Zig comes from PyPI's ziglang package): install python3 and pip"
if [ "$(python3 -m ziglang version 2>/dev/null || true)" != "$ZIG_VERSION" ]; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "pip not found: install python3-pip, then rerun"
    say "installing python3-pip with apt-get"
    apt-get update -qq </dev/null && apt-get install -y -qq python3-pip </dev/null >/dev/null ||
      die "apt-get install python3-pip failed"
  fi
  say "installing Zig $ZIG_VERSION from PyPI (python3 -m pip install ziglang==$ZIG_VERSION)"
  pip_install() {
    python3 -m pip install --quiet --disable-pip-version-check "$@" "ziglang==$ZIG_VERSION" </dev/null 2>&1
  }
  if ! log=$(pip_install); then
    # Debian's own python refuses installs outside a venv (PEP 668); ziglang has no
    # dependencies, so a user-site install cannot break a system package.
    if grep -q externally-managed-environment <<<"$log"; then
      log=$(pip_install --user --break-system-packages) || die "pip install ziglang==$ZIG_VERSION failed: $log"
    else
      die "pip install ziglang==$ZIG_VERSION failed: $log"
    fi
  fi
  have=$(python3 -m ziglang version 2>/dev/null || true)
  [ "$have" = "$ZIG_VERSION" ] || die "python3 -m ziglang reports '${have:-nothing}', want $ZIG_VERSION"
fi

command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
say "building libprefork (cargo build --lib)"
cargo build --lib --locked --quiet || die "cargo build of libprefork failed"
lib_dir="${CARGO_TARGET_DIR:-$root/target}/debug"
[ -f "$lib_dir/libprefork.so" ] || die "no libprefork.so in $lib_dir after cargo build"

cd bindings/zig
python3 -m ziglang fmt --check build.zig build.zig.zon examples test ||
  die "Zig sources are not formatted: run 'python3 -m ziglang fmt build.zig build.zig.zon examples test' in bindings/zig"
say "zig build test (Zig $ZIG_VERSION, library from $lib_dir)"
python3 -m ziglang build test -Dprefork-lib-dir="$lib_dir" ||
  die "zig build test in bindings/zig (its output above says which check failed)"
