#!/usr/bin/env bash
# Side-by-side CPU throughput of the tutorial's encoder (ResNet-101, 256x256): PyTorch and
# `gaze bench encoder`, run alternately for several rounds so that both see the same machine
# load; prints the medians and their ratio. Needs python3 with torch and torchvision; not run
# in CI.
#
#   scripts/bench_vs_pytorch.sh            # 5 rounds, batches 1 and 8, 16 images each
#   ROUNDS=9 BATCHES=1,8,32 IMAGES=32 scripts/bench_vs_pytorch.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
BATCHES=${BATCHES:-1,8}
IMAGES=${IMAGES:-16}

cargo build --release --quiet
log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs"
echo "flags: $(grep -m1 '^flags' /proc/cpuinfo | grep -o -w -E 'avx2|fma|avx512f|avx512_bf16' | sort -u | xargs)"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-unset} OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"

run_pytorch() {
    python3 scripts/bench_vs_pytorch.py bench --batch-sizes "$BATCHES" --images "$IMAGES" | tee -a "$log"
}
run_gaze() {
    target/release/gaze bench encoder --encoder resnet101 --image-size 256 \
        --batch-sizes "$BATCHES" --images "$IMAGES" | tee -a "$log"
}

for round in $(seq "$ROUNDS"); do
    echo "--- round $round (load $(cut -d' ' -f1 /proc/loadavg))"
    # Alternate who goes first, so neither always runs on a warmer or calmer machine.
    if (( round % 2 )); then run_pytorch; run_gaze; else run_gaze; run_pytorch; fi
done

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 scripts/bench_vs_pytorch.py summary "$log"
