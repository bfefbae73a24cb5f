#!/usr/bin/env bash
# A trained model of the tutorial's architecture, for comparisons against the tutorial's own
# functions where captions must end with <end> as real ones do (BENCHMARKS.md, "Captioning
# against the tutorial"): ResNet-101 with torchvision's default initialisation and its
# BatchNorm statistics measured on 64 synthetic training images (so that every residual
# branch contributes at a normal scale), frozen; the decoder (attention 512, embedding 512,
# LSTM 512) trained a few epochs on `gaze synth` data. Needs python3 with torch and
# torchvision; not run in CI.
#
#   scripts/trained_tutorial_model.sh OUT [EPOCHS]
#
# OUT gets synth/ (the images; the test split is synth/images/test_*.jpg), data/ (the
# prepared files), resnet101_calibrated.pth, and model/ with BEST_checkpoint_*.safetensors
# and the word map.
set -euo pipefail
out=${1:?usage: trained_tutorial_model.sh OUT [EPOCHS]}
epochs=${2:-6}
cd "$(dirname "$0")/.."
cargo build --release --quiet
gaze=target/release/gaze
mkdir -p "$out"

$gaze synth --out "$out/synth" --train 300 --val 20 --test 200 --seed 11 --log-level warn
$gaze prepare --dataset synth --karpathy-json "$out/synth/dataset_synth.json" \
    --image-folder "$out/synth/images" --output-folder "$out/data" --log-level warn

python3 - "$out/synth/images" "$out/resnet101_calibrated.pth" <<'PY'
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

images, target = Path(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
net = torchvision.models.resnet101(weights=None)
for m in net.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch seen
mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
files = sorted(images.glob("train_*.jpg"))[:64]
net.train()
with torch.no_grad():
    for i in range(0, len(files), 8):
        batch = np.stack([np.asarray(Image.open(f).convert("RGB").resize((256, 256)))
                          for f in files[i:i + 8]])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
        net((x - mean) / std)
torch.save(net.state_dict(), target)
print(f"BatchNorm statistics from {len(files)} images -> {target}")
PY

$gaze train --data-folder "$out/data" --data-name synth_5_cap_per_img_5_min_word_freq \
    --encoder resnet101 --encoder-weights "$out/resnet101_calibrated.pth" \
    --epochs "$epochs" --out "$out/model" --quiet
ls "$out/model"
