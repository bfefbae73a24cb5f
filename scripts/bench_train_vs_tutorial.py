#!/usr/bin/env python3
"""Training throughput of the PyTorch tutorial's own training loop, for side-by-side figures
with `gaze bench train` (see BENCHMARKS.md). Not run in CI.

It imports the tutorial's `train.py`, `models.py` and `datasets.py` from a checkout of
sgrvinod/a-PyTorch-Tutorial-to-Image-Captioning (given with --tutorial-dir; nothing of it is
copied here) and runs its `train()` function on prepared files (written by `gaze prepare` or by
the tutorial's create_input_files.py), the way its `main()` sets things up: batch size 32, one
loader worker, Adam at the tutorial's learning rates, gradient clipping at 5, the encoder
frozen (decoder stage) or layer2..layer4 trained (`--fine-tune`).

Two changes make it run at all on current PyTorch, and neither changes the work done:
- `pack_padded_sequence` now returns a four-field PackedSequence, so the tutorial's
  `scores, _ = pack_padded_sequence(...)` raises "too many values to unpack"; the module's name
  is pointed at a wrapper that returns the first two fields, as PyTorch 0.4 did.
- `torchvision.models.resnet101(pretrained=True)` downloads ImageNet weights; the benchmark
  uses randomly initialised ones (the speed is the same, and no network is needed).

Usage:
  bench_train_vs_tutorial.py --tutorial-dir T --data-folder O --data-name BASE \
      [--batches 20] [--warmup 2] [--fine-tune] [--threads N]
Prints one line: `tutorial train: stage=decoder captions=... seconds=... captions_per_s=...`.
"""
import argparse
import importlib
import os
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tutorial-dir", required=True)
    p.add_argument("--data-folder", required=True)
    p.add_argument("--data-name", required=True)
    p.add_argument("--batches", type=int, default=20, help="timed batches")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    p.add_argument("--fine-tune", action="store_true", help="train encoder layer2..layer4 too")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args()

    import torch
    import torch.nn.utils.rnn as rnn
    import torchvision

    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TORCH_HOME", "/nonexistent")  # never download anything
    real_resnet101 = torchvision.models.resnet101
    torchvision.models.resnet101 = lambda pretrained=False, **kw: real_resnet101(weights=None)

    sys.path.insert(0, os.path.abspath(args.tutorial_dir))
    tutorial = importlib.import_module("train")  # the tutorial's train.py
    models = importlib.import_module("models")
    datasets = importlib.import_module("datasets")
    real_pack = rnn.pack_padded_sequence
    tutorial.pack_padded_sequence = lambda *a, **k: tuple(real_pack(*a, **k))[:2]
    tutorial.device = torch.device("cpu")
    tutorial.print_freq = 10**9

    import json
    import torchvision.transforms as transforms
    from torch import nn

    with open(os.path.join(args.data_folder, "WORDMAP_" + args.data_name + ".json")) as f:
        word_map = json.load(f)
    decoder = models.DecoderWithAttention(
        attention_dim=tutorial.attention_dim,
        embed_dim=tutorial.emb_dim,
        decoder_dim=tutorial.decoder_dim,
        vocab_size=len(word_map),
        dropout=tutorial.dropout,
    )
    decoder_optimizer = torch.optim.Adam(
        params=filter(lambda q: q.requires_grad, decoder.parameters()), lr=tutorial.decoder_lr
    )
    encoder = models.Encoder()
    encoder.fine_tune(args.fine_tune)
    encoder_optimizer = (
        torch.optim.Adam(
            params=filter(lambda q: q.requires_grad, encoder.parameters()), lr=tutorial.encoder_lr
        )
        if args.fine_tune
        else None
    )
    criterion = nn.CrossEntropyLoss()
    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    dataset = datasets.CaptionDataset(
        args.data_folder, args.data_name, "TRAIN", transform=transforms.Compose([normalize])
    )

    def loader(count):
        count = min(count, len(dataset))
        return torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, range(count)),
            batch_size=tutorial.batch_size,
            shuffle=True,
            num_workers=tutorial.workers,
            pin_memory=False,
        )

    def run(batches):
        captions = batches * tutorial.batch_size
        start = time.perf_counter()
        tutorial.train(
            train_loader=loader(captions),
            encoder=encoder,
            decoder=decoder,
            criterion=criterion,
            encoder_optimizer=encoder_optimizer,
            decoder_optimizer=decoder_optimizer,
            epoch=0,
        )
        return min(captions, len(dataset)), time.perf_counter() - start

    if args.warmup:
        run(args.warmup)
    captions, seconds = run(args.batches)
    stage = "fine-tune" if args.fine_tune else "decoder"
    print(
        f"tutorial train: stage={stage} threads={torch.get_num_threads()} captions={captions} "
        f"seconds={seconds:.2f} captions_per_s={captions / seconds:.2f}"
    )


if __name__ == "__main__":
    main()
