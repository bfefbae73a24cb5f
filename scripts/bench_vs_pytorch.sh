#!/usr/bin/env bash
# Side by side on this machine, gaze against PyTorch (see BENCHMARKS.md):
# 1. encoder forward, ResNet-101 at 256x256: PyTorch (f32, and bf16 under torch.autocast) and
#    `gaze bench encoder` (--precision f32, and bf16 where the CPU has AVX-512 BF16), run
#    alternately for several rounds so that all see the same machine load; medians and ratios;
# 2. with TUTORIAL_DIR (a checkout of sgrvinod/a-PyTorch-Tutorial-to-Image-Captioning):
#    caption throughput of the tutorial's caption_image_beam_search against `gaze caption` on
#    the same weights and images, with the captions compared
#    (scripts/bench_caption_vs_tutorial.py);
# 3. with TUTORIAL_DIR: decoder-stage training, the tutorial's train() against `gaze train`
#    on the same prepared files and the same ResNet-101 weights, captions/s and the mean loss
#    of each epoch (scripts/bench_train_vs_tutorial.py).
# Needs python3 with torch, torchvision, Pillow, h5py and nltk; not run in CI.
#
#   scripts/bench_vs_pytorch.sh            # 5 rounds, batches 1 and 8, 16 images each
#   ROUNDS=9 BATCHES=1,8,32 IMAGES=32 scripts/bench_vs_pytorch.sh
#   TUTORIAL_DIR=../a-PyTorch-Tutorial-to-Image-Captioning ROUNDS=2 scripts/bench_vs_pytorch.sh
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

# bf16 on both sides where this CPU has AVX-512 BF16 (PRECISIONS=f32 to skip it).
if grep -q -w avx512_bf16 /proc/cpuinfo; then PRECISIONS=${PRECISIONS:-f32,bf16}; else PRECISIONS=${PRECISIONS:-f32}; fi
echo "precisions: $PRECISIONS"

run_pytorch() {
    python3 scripts/bench_vs_pytorch.py bench --batch-sizes "$BATCHES" --images "$IMAGES" \
        --precisions "$PRECISIONS" | tee -a "$log"
}
run_gaze() {
    local p
    for p in ${PRECISIONS//,/ }; do
        target/release/gaze bench encoder --encoder resnet101 --image-size 256 --precision "$p" \
            --batch-sizes "$BATCHES" --images "$IMAGES" | tee -a "$log"
    done
}

for round in $(seq "$ROUNDS"); do
    echo "--- round $round (load $(cut -d' ' -f1 /proc/loadavg))"
    # Alternate who goes first, so neither always runs on a warmer or calmer machine.
    if (( round % 2 )); then run_pytorch; run_gaze; else run_gaze; run_pytorch; fi
done

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 scripts/bench_vs_pytorch.py summary "$log"

[[ -n ${TUTORIAL_DIR:-} ]] || exit 0
[[ -f $TUTORIAL_DIR/caption.py && -f $TUTORIAL_DIR/train.py ]] ||
    { echo "TUTORIAL_DIR=$TUTORIAL_DIR: no caption.py/train.py there" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -f "$log"; rm -rf "$work"' EXIT

# Data both sides read: 64 training, 8 validation and 8 test images (256x256) prepared into
# the tutorial's files, and one ResNet-101 state dict (random weights, zero-initialised
# residual branches so that the features stay in a trainable range) for both encoders.
target/release/gaze synth --out "$work/synth" --train 64 --val 8 --test 8 --seed 3 --log-level warn >/dev/null
target/release/gaze prepare --dataset synth --karpathy-json "$work/synth/dataset_synth.json" \
    --image-folder "$work/synth/images" --output-folder "$work/prepared" --log-level warn >/dev/null
python3 -c 'import sys, torch, torchvision; torch.manual_seed(0)
torch.save(torchvision.models.resnet101(zero_init_residual=True).state_dict(), sys.argv[1])' \
    "$work/resnet101.pth"

echo
echo "== captioning: the tutorial's caption_image_beam_search against gaze caption"
python3 scripts/bench_caption_vs_tutorial.py --tutorial-dir "$TUTORIAL_DIR" \
    --images "$work/synth/images" --count 16 --beam-sizes 1,5 --batch-sizes 1,8,16

echo
echo "== decoder-stage training: the tutorial's train() against gaze train (3 epochs of 320 captions)"
base=synth_5_cap_per_img_5_min_word_freq
target/release/gaze train --data-folder "$work/prepared" --data-name $base --encoder resnet101 \
    --encoder-weights "$work/resnet101.pth" --epochs 3 --out "$work/run" --quiet --log-level warn >/dev/null
python3 - "$work/run/train_log.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"gaze epoch={r['epoch']} loss={r['train_loss']:.4f} captions_per_s={r['captions_per_second']:.2f}")
EOF
python3 scripts/bench_train_vs_tutorial.py --tutorial-dir "$TUTORIAL_DIR" --data-folder "$work/prepared" \
    --data-name $base --batches 10 --warmup 0 --epochs 3 --encoder-weights "$work/resnet101.pth" |
    grep '^tutorial epoch='
