#!/usr/bin/env bash
# Runs each fuzz target for a set time, one after the other (libFuzzer via cargo-fuzz).
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     default: 600 s, all targets
# Needs the nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly --profile minimal && cargo install cargo-fuzz
# Corpora grow in fuzz/corpus/<target> (seeded from fuzz/seeds/<target>); crashes land in
# fuzz/artifacts/<target>; each run's log is fuzz/target/logs/<target>.log. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(head chunked connection proxy tls)
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: the nightly toolchain is missing: rustup toolchain install nightly --profile minimal" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 2
fi
mkdir -p target/logs
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    cp -n "seeds/$t/"* "corpus/$t/" 2>/dev/null || true
    echo "== $t: ${secs}s"
    if cargo +nightly fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"target/logs/$t.log" 2>&1; then
        grep -E "^#[0-9]+ *DONE|stat::number_of_executed_units|stat::peak_rss" "target/logs/$t.log" || true
    else
        status=1
        echo "!! $t found a failure; see fuzz/target/logs/$t.log and fuzz/artifacts/$t/" >&2
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "target/logs/$t.log" | head -20 >&2 || true
    fi
done
exit $status
