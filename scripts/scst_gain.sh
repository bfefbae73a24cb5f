#!/usr/bin/env bash
# What self-critical training adds over simply training longer.
#
# On a synthetic dataset made with a seed used for nothing else: cross-entropy training for
# CE_MINUTES, then, from that run's last checkpoint, two continuations with the same wall-clock
# budget (EXTRA_MINUTES each, run one after the other): more cross-entropy, and self-critical
# training (--scst). Each run keeps its best model by validation (BLEU-4 for cross-entropy,
# CIDEr-D for --scst); the test split is only scored at the end, at beam 1 and 3.
#
#   scripts/scst_gain.sh                      # defaults below
#   OUT=runs/gain CE_MINUTES=15 EXTRA_MINUTES=8 scripts/scst_gain.sh
#   GAZE=/path/to/gaze scripts/scst_gain.sh   # a binary built already (no cargo build)
#
# Prints a table of test-split CIDEr-D, BLEU-4, METEOR and ROUGE-L and writes the eval
# reports under $OUT/eval.
set -euo pipefail

OUT=${OUT:-runs/scst-gain}
SEED=${SEED:-20261202}
CE_MINUTES=${CE_MINUTES:-20}
EXTRA_MINUTES=${EXTRA_MINUTES:-10}
SCST_LR=${SCST_LR:-1e-4}
TRAIN_IMAGES=${TRAIN_IMAGES:-2000}

cd "$(dirname "$0")/.."
if [ -z "${GAZE:-}" ]; then
  cargo build --release --quiet
  GAZE=target/release/gaze
fi
NAME=synth_5_cap_per_img_5_min_word_freq
MODEL=(--encoder efficientnet-lite0 --encoded-image-size 8 --emb-dim 128 --attention-dim 128
       --decoder-dim 256)

mkdir -p "$OUT"
if [ ! -f "$OUT/prep/WORDMAP_$NAME.json" ]; then
  "$GAZE" synth --out "$OUT/synth" --seed "$SEED" --train "$TRAIN_IMAGES" --val 200 --test 200
  "$GAZE" prepare --dataset synth --karpathy-json "$OUT/synth/dataset_synth.json" \
    --image-folder "$OUT/synth/images" --output-folder "$OUT/prep"
fi

echo "== cross-entropy, $CE_MINUTES minutes"
"$GAZE" train --data-folder "$OUT/prep" --data-name "$NAME" --out "$OUT/ce" "${MODEL[@]}" \
  --decoder-lr 1e-3 --val-images 200 --seed "$SEED" --max-minutes "$CE_MINUTES" --quiet

# Both continuations start from the same checkpoint. The cross-entropy one resumes it exactly
# (optimiser, learning rate, best score), in a copy of the run's folder so that it keeps the
# first run's best model unless it beats it.
rm -rf "$OUT/ce-more" "$OUT/scst"
cp -r "$OUT/ce" "$OUT/ce-more"
rm -f "$OUT/ce-more/train_log.jsonl"
START="$OUT/ce/checkpoint_$NAME.safetensors"

echo "== more cross-entropy, $EXTRA_MINUTES minutes"
"$GAZE" train --data-folder "$OUT/prep" --data-name "$NAME" --out "$OUT/ce-more" \
  --checkpoint "$OUT/ce-more/checkpoint_$NAME.safetensors" --decoder-lr 1e-3 --val-images 200 \
  --seed "$SEED" --max-minutes "$EXTRA_MINUTES" --quiet

echo "== self-critical, $EXTRA_MINUTES minutes"
"$GAZE" train --data-folder "$OUT/prep" --data-name "$NAME" --out "$OUT/scst" \
  --checkpoint "$START" --scst --decoder-lr "$SCST_LR" --val-images 200 --seed "$SEED" \
  --max-minutes "$EXTRA_MINUTES" --quiet

mkdir -p "$OUT/eval"
for run in ce ce-more scst; do
  "$GAZE" eval --model "$OUT/$run/BEST_checkpoint_$NAME.safetensors" --data-folder "$OUT/prep" \
    --data-name "$NAME" --split test --beam-sizes 1,3 --report "$OUT/eval/$run.json" >/dev/null
done

python3 - "$OUT/eval" <<'PY'
import json, sys, os
d = sys.argv[1]
names = {"ce": "cross-entropy (before)", "ce-more": "cross-entropy continued", "scst": "self-critical"}
rows = {}
print("| model | beam | CIDEr-D | BLEU-4 | METEOR | ROUGE-L |")
print("|---|---:|---:|---:|---:|---:|")
for run in ["ce", "ce-more", "scst"]:
    report = json.load(open(os.path.join(d, run + ".json")))
    for b in report["beams"]:
        m = b["metrics"]
        rows[(run, b["beam_size"])] = m["cider_d"]
        print(f"| {names[run]} | {b['beam_size']} | {m['cider_d']:.4f} | {m['bleu_4_nltk']:.4f} "
              f"| {m['meteor_exact_stem']:.4f} | {m['rouge_l']:.4f} |")
for beam in (1, 3):
    if ("scst", beam) in rows and ("ce-more", beam) in rows:
        gain = rows[("scst", beam)] / rows[("ce-more", beam)] - 1
        print(f"beam {beam}: self-critical CIDEr-D {100 * gain:+.1f}% against continued cross-entropy")
PY
