#!/usr/bin/env python3
"""Encoder throughput of PyTorch on the CPU, for comparison with `gaze bench encoder`.

`bench`: the tutorial's encoder (torchvision ResNet-101 with random weights, children[:-2],
AdaptiveAvgPool2d(14), permute to NHWC) in eval mode under torch.no_grad, images/s per batch.
`summary LOG`: medians per implementation and batch size over a log holding several rounds of
this script's output and gaze's, and the ratio gaze / PyTorch.

Called by scripts/bench_vs_pytorch.sh; needs torch and torchvision (not run in CI).
"""
import argparse
import math
import re
import statistics
import sys
import time


def bench(args):
    import torch
    import torchvision

    torch.manual_seed(0)
    resnet = torchvision.models.resnet101(weights=None)
    modules = list(resnet.children())[:-2]
    encoder = torch.nn.Sequential(*modules, torch.nn.AdaptiveAvgPool2d(args.encoded_size)).eval()
    print(f"pytorch {torch.__version__}, {torch.get_num_threads()} threads")
    for bs in args.batch_sizes:
        x = torch.randn(bs, 3, args.image_size, args.image_size)
        rounds = max(1, math.ceil(args.images / bs))
        with torch.no_grad():
            encoder(x).permute(0, 2, 3, 1)  # warm-up
            start = time.perf_counter()
            for _ in range(rounds):
                encoder(x).permute(0, 2, 3, 1)
            secs = time.perf_counter() - start
        n = rounds * bs
        print(f"RESULT pytorch batch={bs} images_per_s={n / secs:.4f} s_per_image={secs / n:.5f}")
        sys.stdout.flush()


GAZE_ROW = re.compile(r"^\s*(\d+)\s+default\s+([0-9.]+)\s+([0-9.]+)\b")
TORCH_ROW = re.compile(r"^RESULT pytorch batch=(\d+) images_per_s=([0-9.]+)")


def summary(args):
    runs = {}
    with open(args.log) as f:
        for line in f:
            m = TORCH_ROW.match(line)
            if m:
                runs.setdefault(("pytorch", int(m[1])), []).append(float(m[2]))
                continue
            m = GAZE_ROW.match(line)
            if m:
                runs.setdefault(("gaze", int(m[1])), []).append(float(m[2]))
    batches = sorted({b for (_, b) in runs})
    print(f"{'batch':>5} {'pytorch img/s':>14} {'gaze img/s':>11} {'gaze/pytorch':>12}  runs")
    for b in batches:
        pt = runs.get(("pytorch", b), [])
        gz = runs.get(("gaze", b), [])
        if not pt or not gz:
            continue
        mp, mg = statistics.median(pt), statistics.median(gz)
        print(f"{b:>5} {mp:>14.3f} {mg:>11.3f} {mg / mp:>11.2f}x  {len(pt)}/{len(gz)}")
        ratios = [g / p for p, g in zip(pt, gz)]
        print(f"      per-round ratios: {', '.join(f'{r:.2f}' for r in ratios)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--batch-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[1, 8])
    b.add_argument("--images", type=int, default=16)
    b.add_argument("--image-size", type=int, default=256)
    b.add_argument("--encoded-size", type=int, default=14)
    s = sub.add_parser("summary")
    s.add_argument("log")
    args = p.parse_args()
    bench(args) if args.cmd == "bench" else summary(args)


if __name__ == "__main__":
    main()
