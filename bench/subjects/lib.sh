# Shared by every subject's ctl script. A ctl script answers three commands:
#   ctl build             build the subject in release mode; exit 3 with "skip: REASON" on
#                         stderr when it cannot exist yet (its sources are not written)
#   ctl version           one line: what exactly runs
#   ctl argv ARGS         the command that starts the server, one argv element per line,
#                         preceded by NAME=VALUE lines for its environment. ARGS are
#                         --addr HOST:PORT --children N [--handler-threads N]
#                         [--tls-cert FILE --tls-key FILE] (HTTPS: subjects whose
#                         subject.json says "tls": true; the harness made the files).
#                         $RUN_DIR is a fresh directory the server may use.
# The harness (bench/harness) sets BENCH_DIR, REPO_DIR (the tree ours is built from: the
# working tree or, with --rev, a snapshot of a commit named by SOURCE_REV), BUILD_DIR and
# CARGO_TARGET_DIR.
set -euo pipefail

skip() {
  echo "skip: $*" >&2
  exit 3
}

emit() {
  printf '%s\n' "$@"
}

ADDR=127.0.0.1:8080
CHILDREN=1
HANDLER_THREADS=
TLS_CERT=
TLS_KEY=
parse_launch_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --addr) ADDR=$2; shift 2 ;;
      --children) CHILDREN=$2; shift 2 ;;
      --handler-threads) HANDLER_THREADS=$2; shift 2 ;;
      --tls-cert) TLS_CERT=$2; shift 2 ;;
      --tls-key) TLS_KEY=$2; shift 2 ;;
      *) echo "unknown launch argument $1" >&2; exit 2 ;;
    esac
  done
}

# Builds libprefork in release mode and copies the shared library (under its file name and
# its soname) to $BUILD_DIR/lib, so a rebuild by someone else never changes what runs.
build_libprefork() {
  cargo build --release --lib --manifest-path "$REPO_DIR/Cargo.toml"
  local so="$CARGO_TARGET_DIR/release/libprefork.so"
  [ -f "$so" ] || { echo "cargo produced no $so" >&2; exit 1; }
  mkdir -p "$BUILD_DIR/lib"
  rm -f "$BUILD_DIR"/lib/libprefork.so*
  cp "$so" "$BUILD_DIR/lib/libprefork.so"
  local soname
  soname=$(objdump -p "$so" | awk '$1 == "SONAME" { print $2 }')
  if [ -n "$soname" ] && [ "$soname" != libprefork.so ]; then
    ln -s libprefork.so "$BUILD_DIR/lib/$soname"
  fi
}

ours_version() {
  local v sha
  v=$(awk -F'"' '/^version *=/ { print $2; exit }' "$REPO_DIR/Cargo.toml")
  sha=${SOURCE_REV:-$(git -C "$REPO_DIR" describe --always --dirty 2>/dev/null || echo unknown)}
  echo "libprefork $v @ $sha, $(rustc --version | cut -d' ' -f1-2)"
}

# True when ours is built from a --rev snapshot rather than the working tree around bench/.
building_snapshot() {
  [ "$(cd "$REPO_DIR" && pwd -P)" != "$(cd "$BENCH_DIR/.." && pwd -P)" ]
}
