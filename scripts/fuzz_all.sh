#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ one after another, SECONDS_EACH seconds each (default 600),
# in one process each (libFuzzer's default; `-jobs=1` would fork a child that logs to fuzz-0.log)
# with the same resource bounds, and prints libFuzzer's final stats for each.
#
#   scripts/fuzz_all.sh              # image, hdf5, config, pth; 10 minutes each
#   scripts/fuzz_all.sh 60           # one minute each
#   TARGETS="config pth" scripts/fuzz_all.sh 120
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Only a stable toolchain is assumed:
# RUSTC_BOOTSTRAP=1 lets it accept the nightly-only flags cargo-fuzz passes. Built without a
# sanitizer (`-s none`; the code under test has no `unsafe`) but with debug assertions and
# overflow checks (`-a`). Seeds are read from fuzz/seeds/<target>/ (committed); the corpus
# that grows is kept in fuzz/corpus/<target>/ and crash, timeout and OOM inputs in
# fuzz/artifacts/<target>/ (both git-ignored). Exits non-zero if any target found something.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"

SECONDS_EACH=${1:-600}
TARGETS=${TARGETS:-"image hdf5 config pth"}
export RUSTC_BOOTSTRAP=1
FLAGS=(-s none -a)

cargo fuzz build "${FLAGS[@]}" || exit 1

status=0
for t in $TARGETS; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="artifacts/$t/run.log"
    echo "== $t: ${SECONDS_EACH}s" >&2
    cargo fuzz run "${FLAGS[@]}" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECONDS_EACH" \
        -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    echo "== $t: exit $rc (log: fuzz/$log)"
    # The last status line (executions, coverage, corpus) and the final stats.
    grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "$log" | tail -n 1
    grep -E '^stat::' "$log"
    grep -E 'ERROR: libFuzzer|panicked at|deadly signal|Test unit written' "$log" | head -n 5
    [ "$rc" -eq 0 ] || status=1
done
exit $status
