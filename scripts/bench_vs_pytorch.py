#!/usr/bin/env python3
"""Encoder throughput of PyTorch on the CPU, for comparison with `gaze bench encoder`.

`bench`: the tutorial's encoder (torchvision ResNet-101 with random weights, children[:-2],
AdaptiveAvgPool2d(14), permute to NHWC) in eval mode under torch.no_grad, images/s per batch,
in f32 and/or under `torch.autocast("cpu", dtype=torch.bfloat16)` (oneDNN's bf16 kernels).
`summary LOG`: medians per implementation, precision and batch size over a log holding several
rounds of this script's output and gaze's, and the ratios.

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
    for precision in args.precisions:
        autocast = precision == "bf16"
        for bs in args.batch_sizes:
            x = torch.randn(bs, 3, args.image_size, args.image_size)
            rounds = max(1, math.ceil(args.images / bs))
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                encoder(x).permute(0, 2, 3, 1)  # warm-up
                start = time.perf_counter()
                for _ in range(rounds):
                    encoder(x).permute(0, 2, 3, 1)
                secs = time.perf_counter() - start
            n = rounds * bs
            print(f"RESULT pytorch-{precision} batch={bs} images_per_s={n / secs:.4f} "
                  f"s_per_image={secs / n:.5f}")
            sys.stdout.flush()


GAZE_ROW = re.compile(r"^\s*(\d+)\s+(f32|bf16)\s+([0-9.]+)\s+([0-9.]+)\b")
TORCH_ROW = re.compile(r"^RESULT pytorch-(f32|bf16) batch=(\d+) images_per_s=([0-9.]+)")


def summary(args):
    runs = {}
    with open(args.log) as f:
        for line in f:
            m = TORCH_ROW.match(line)
            if m:
                runs.setdefault(("pytorch", m[1], int(m[2])), []).append(float(m[3]))
                continue
            m = GAZE_ROW.match(line)
            if m:
                runs.setdefault(("gaze", m[2], int(m[1])), []).append(float(m[3]))
    med = {k: statistics.median(v) for k, v in runs.items()}
    batches = sorted({b for (_, _, b) in runs})
    cols = [("pytorch", "f32"), ("pytorch", "bf16"), ("gaze", "f32"), ("gaze", "bf16")]
    present = [c for c in cols if any((c[0], c[1], b) in med for b in batches)]
    head = " ".join(f"{i + ' ' + p:>13}" for i, p in present)
    print(f"{'batch':>5} {head}   (images/s, medians of {max(map(len, runs.values()))} rounds)")
    for b in batches:
        row = " ".join(f"{med[(i, p, b)]:>13.3f}" if (i, p, b) in med else f"{'-':>13}"
                       for i, p in present)
        print(f"{b:>5} {row}")
    ratios = [("gaze f32 / pytorch f32", ("gaze", "f32"), ("pytorch", "f32")),
              ("gaze bf16 / pytorch bf16", ("gaze", "bf16"), ("pytorch", "bf16")),
              ("gaze bf16 / gaze f32", ("gaze", "bf16"), ("gaze", "f32")),
              ("pytorch bf16 / pytorch f32", ("pytorch", "bf16"), ("pytorch", "f32"))]
    for name, a, c in ratios:
        vals = [f"batch {b}: {med[a + (b,)] / med[c + (b,)]:.2f}x" for b in batches
                if a + (b,) in med and c + (b,) in med]
        if vals:
            print(f"{name:>27}: {', '.join(vals)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--batch-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[1, 8])
    b.add_argument("--images", type=int, default=16)
    b.add_argument("--precisions", type=lambda s: s.split(","), default=["f32", "bf16"])
    b.add_argument("--image-size", type=int, default=256)
    b.add_argument("--encoded-size", type=int, default=14)
    s = sub.add_parser("summary")
    s.add_argument("log")
    args = p.parse_args()
    bench(args) if args.cmd == "bench" else summary(args)


if __name__ == "__main__":
    main()
