#!/usr/bin/env python3
"""Training throughput of the PyTorch tutorial's own training loop, for side-by-side figures
with `gaze bench train` (see BENCHMARKS.md). Not run in CI.

It imports the tutorial's `train.py`, `models.py` and `datasets.py` from a checkout of
sgrvinod/a-PyTorch-Tutorial-to-Image-Captioning (given with --tutorial-dir; nothing of it is
copied here) and runs its `train()` function on prepared files (written by `gaze prepare` or by
the tutorial's create_input_files.py), the way its `main()` sets things up: batch size 32, one
loader worker, Adam at the tutorial's learning rates, gradient clipping at 5, the encoder
frozen (decoder stage) or layer2..layer4 trained (`--fine-tune`).

Three changes make it run at all on current PyTorch and SciPy, and none changes the work done:
- `scipy.misc.imread/imresize` (imported by the tutorial's utils.py, used only to prepare
  data) are gone from SciPy; a stand-in `scipy.misc` module that provides them is installed;
- `pack_padded_sequence` now returns a four-field PackedSequence, so the tutorial's
  `scores, _ = pack_padded_sequence(...)` raises "too many values to unpack"; the module's name
  is pointed at a wrapper that returns the first two fields, as PyTorch 0.4 did.
- `torchvision.models.resnet101(pretrained=True)` downloads ImageNet weights; the benchmark
  uses randomly initialised ones, or the file given with --encoder-weights (the speed is the
  same, and no network is needed).

One more change, in the decoder stage only, makes the loss comparable with gaze's: the frozen
encoder stays in eval mode. The tutorial's train() calls `encoder.train()`, so although the
encoder is frozen its BatchNorm layers normalise each batch by that batch's statistics (and
keep updating their running statistics); gaze computes a frozen encoder's features in eval
mode, once, which is what makes them cacheable. The work per batch is the same either way.

To compare loss curves with `gaze train` on the same files, give both the same encoder weights
(`--encoder-weights`, a torchvision ResNet-101 state dict; gaze takes the same file) and
several epochs over the same first captions (`--epochs`, `--warmup 0`): each epoch prints its
mean loss per word (the tutorial's `losses.avg`: cross-entropy plus the attention
regularisation), which is what gaze's train_log.jsonl records as `train_loss`.

Usage:
  bench_train_vs_tutorial.py --tutorial-dir T --data-folder O --data-name BASE \
      [--batches 20] [--warmup 2] [--epochs 1] [--encoder-weights resnet101.pth] \
      [--fine-tune] [--threads N]
Prints per epoch `tutorial epoch=E loss=... captions_per_s=...`, then one line:
`tutorial train: stage=decoder captions=... seconds=... captions_per_s=...` (the last epoch).
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
    p.add_argument("--epochs", type=int, default=1, help="timed passes over the same captions")
    p.add_argument("--encoder-weights", help="torchvision ResNet-101 state dict (default random)")
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
    def resnet101(pretrained=False, **kw):
        net = real_resnet101(weights=None)
        if args.encoder_weights:
            net.load_state_dict(torch.load(args.encoder_weights, map_location="cpu"))
        return net

    torchvision.models.resnet101 = resnet101

    import types

    import numpy as np
    from PIL import Image

    misc = types.ModuleType("scipy.misc")
    misc.imread = lambda p, *a, **k: np.array(Image.open(p).convert("RGB"))
    misc.imresize = lambda img, size, *a, **k: np.array(
        Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR)
    )
    sys.modules["scipy.misc"] = misc

    sys.path.insert(0, os.path.abspath(args.tutorial_dir))
    tutorial = importlib.import_module("train")  # the tutorial's train.py
    models = importlib.import_module("models")
    datasets = importlib.import_module("datasets")
    real_pack = rnn.pack_padded_sequence
    tutorial.pack_padded_sequence = lambda *a, **k: tuple(real_pack(*a, **k))[:2]
    tutorial.device = torch.device("cpu")
    # Keep the meters train() makes, to read its mean loss afterwards.
    meters = []

    class RecordedMeter(tutorial.AverageMeter):
        def __init__(self):
            super().__init__()
            meters.append(self)

    tutorial.AverageMeter = RecordedMeter
    tutorial.print_freq = 1  # every batch: its loss and the running mean

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
    if not args.fine_tune:
        encoder.eval()
        encoder.train = lambda mode=True: encoder  # train() must not switch BatchNorm over
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
    for epoch in range(args.epochs):
        captions, seconds = run(args.batches)
        # train() makes batch_time, data_time, losses, top5accs in that order.
        loss = meters[-2].avg
        print(f"tutorial epoch={epoch} loss={loss:.4f} captions_per_s={captions / seconds:.2f}")
    stage = "fine-tune" if args.fine_tune else "decoder"
    print(
        f"tutorial train: stage={stage} threads={torch.get_num_threads()} captions={captions} "
        f"seconds={seconds:.2f} captions_per_s={captions / seconds:.2f}"
    )


if __name__ == "__main__":
    main()
