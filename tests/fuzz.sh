#!/usr/bin/env bash
# Fuzzes shim's parsers of untrusted input with cargo fuzz (libFuzzer), each target for a
# bounded time: the definitions, the app's crontab, image references, image layers
# (fuzz/fuzz_targets). A crash, a panic or a leak is a failure: libFuzzer exits non-zero and
# leaves the input under fuzz/artifacts/. The machine's stable toolchain builds it with
# RUSTC_BOOTSTRAP=1 (cargo fuzz passes -Z flags).
# Usage: tests/fuzz.sh [SECONDS per target, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-20}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for t in definitions crontab image_ref layer; do
  mkdir -p "fuzz/corpus/$t"
  echo "== fuzz $t (${SECS}s)"
  # -rss_limit_mb: the unpacker streams; a layer that makes it hold much memory is a bug.
  log="fuzz/$t.log"
  rc=0
  cargo fuzz run -O "$t" -- -max_total_time="$SECS" -rss_limit_mb=1024 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY|panicked|Failing input|Test unit written" "$log" || true
  if [ "$rc" -ne 0 ]; then
    tail -40 "$log"
    echo "fuzz $t: failed (exit $rc; the input is under fuzz/artifacts/$t)"
    exit 1
  fi
done
echo "fuzz: every target ran ${SECS}s without a crash"
