#!/usr/bin/env python3
"""Caption throughput of the PyTorch tutorial's `caption_image_beam_search` and of
`gaze caption`, on the same weights and the same images, with a check that both write the same
captions. Not run in CI; needs torch, torchvision and Pillow, and a checkout of
sgrvinod/a-PyTorch-Tutorial-to-Image-Captioning (--tutorial-dir; nothing of it is copied here).

The model is the tutorial's own (`models.py`: ResNet-101 encoder pooled to 14x14, decoder with
attention 512/512/512) over a COCO-sized word map (9,490 entries), with random weights: no
network is needed, and the work per image is that of a trained model for a given caption
length. Random decoders rarely emit <end>, so every search runs to --max-steps (the tutorial's
`step > 50` limit is set to the same number on both sides; 20 gives COCO-like lengths). The
ResNet's last BatchNorm of each residual branch starts at zero (torchvision's
`zero_init_residual=True`), which keeps the random encoder's outputs in a normal range.

The tutorial's function runs as it is, one image at a time, model loaded once, under
`torch.no_grad()` (its caption.py does not use no_grad, which would only slow it down), with
three repairs that do not change its work: `scipy.misc.imread/imresize` (gone from SciPy) are
replaced by Pillow equivalents; `top_k_words / vocab_size` becomes floor division (true
division gives float indices on PyTorch >= 1.5, its known crash); and when no beam has ended by
the step limit it returns the best unfinished beam (instead of failing on `max()` of an empty
list), which is what gaze does.

gaze's rate excludes process start and model loading (as PyTorch's does): it runs once with
one image and once with all of them, and divides the extra images by the extra time. The
"whole" column is gaze's whole process (start, model loading, every image) against the
tutorial's function over the same images.

With --model, the weights are a trained gaze model file of the tutorial's architecture (for
example `gaze train --encoder resnet101` on `gaze synth` data) and --word-map its word map:
both sides load the same tensors (the tutorial's modules from the file's tutorial-named
tensors), captions end with <end> as real ones do, and the tutorial's step limit is its own
50 unless --max-steps says otherwise.

With --torch-precision bf16, the tutorial's function runs under
`torch.autocast("cpu", dtype=torch.bfloat16)` (PyTorch's bfloat16 for convolutions, linear
layers and the LSTM cell): run once with that and gaze in f32, once with the tutorial in f32 and
gaze in bf16, and "same captions" tells how many captions each side's bfloat16 changes.

Usage:
  bench_caption_vs_tutorial.py --tutorial-dir T --images DIR [--count 32] [--beam-sizes 1,5]
      [--batch-sizes 1,8,32] [--max-steps 20] [--threads 2] [--gaze target/release/gaze]
      [--model FILE --word-map WORDMAP.json] [--precision f32|bf16|auto]
      [--torch-precision f32|bf16]
"""
import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tutorial_beam_search(tutorial_dir, max_steps):
    """The tutorial's caption_image_beam_search, with the three repairs above."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    import torchvision.transforms as transforms
    from PIL import Image

    path = Path(tutorial_dir) / "caption.py"
    source = path.read_text()
    tree = ast.parse(source)
    node = next(n for n in tree.body
                if isinstance(n, ast.FunctionDef) and n.name == "caption_image_beam_search")
    code = ast.get_source_segment(source, node)
    repairs = [
        ("prev_word_inds = top_k_words / vocab_size",
         "prev_word_inds = torch.div(top_k_words, vocab_size, rounding_mode='floor')"),
        ("if step > 50:", "if step > MAX_STEPS:"),
        ("    i = complete_seqs_scores.index(max(complete_seqs_scores))",
         "    if not complete_seqs_scores:\n"
         "        complete_seqs.extend(seqs.tolist())\n"
         "        complete_seqs_alpha.extend(seqs_alpha.tolist())\n"
         "        complete_seqs_scores.extend(top_k_scores.squeeze(1))\n"
         "    i = complete_seqs_scores.index(max(complete_seqs_scores))"),
    ]
    for old, new in repairs:
        if old not in code:
            sys.exit(f"{path}: cannot find {old!r}; is this the tutorial's caption.py?")
        code = code.replace(old, new)

    def imread(p):
        return np.array(Image.open(p).convert("RGB"))

    def imresize(img, size):
        return np.array(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR))

    namespace = {"torch": torch, "F": F, "np": np, "transforms": transforms,
                 "imread": imread, "imresize": imresize, "device": torch.device("cpu"),
                 "MAX_STEPS": max_steps}
    exec(compile(code, str(path), "exec"), namespace)
    return namespace["caption_image_beam_search"]


def tutorial_models(tutorial_dir, vocab_size):
    import torch
    import torchvision

    real_resnet101 = torchvision.models.resnet101
    torchvision.models.resnet101 = lambda pretrained=False, **kw: real_resnet101(
        weights=None, zero_init_residual=True)
    sys.path.insert(0, os.path.abspath(tutorial_dir))
    import models  # the tutorial's models.py

    models.device = torch.device("cpu")
    torch.manual_seed(0)
    encoder = models.Encoder().eval()
    decoder = models.DecoderWithAttention(attention_dim=512, embed_dim=512, decoder_dim=512,
                                          vocab_size=vocab_size).eval()
    return encoder, decoder


def read_safetensors(path):
    """Tensors of a safetensors file (header length, JSON header, raw little-endian data)."""
    import numpy as np
    import torch

    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    dtypes = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "F16": np.float16}
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        data = np.frombuffer(raw[8 + n + start:8 + n + end], dtype=dtypes[info["dtype"]])
        tensors[name] = torch.from_numpy(data.reshape(info["shape"]).copy())
    return tensors


def load_trained(encoder, decoder, model_file):
    """The tutorial's modules with a gaze model file's tensors (named as the tutorial's)."""
    tensors = read_safetensors(model_file)
    for prefix, module in (("encoder.", encoder), ("decoder.", decoder)):
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        missing, unexpected = module.load_state_dict(state, strict=False)
        if missing or unexpected:
            sys.exit(f"{model_file}: {prefix[:-1]} tensors do not fit the tutorial's "
                     f"module: missing {missing[:5]}, unexpected {unexpected[:5]}")


def coco_sized_word_map(entries=9490):
    """The layout create_input_files.py writes: words 1..n, then <unk>, <start>, <end>; <pad> 0."""
    words = entries - 4
    wm = {f"w{i}": i + 1 for i in range(words)}
    wm["<unk>"] = words + 1
    wm["<start>"] = words + 2
    wm["<end>"] = words + 3
    wm["<pad>"] = 0
    return wm


def words_of(seq, word_map):
    rev = {v: k for k, v in word_map.items()}
    special = {word_map["<start>"], word_map["<end>"], word_map["<pad>"]}
    return " ".join(rev[t] for t in seq if t not in special)


def run_gaze(gaze, source, images, beam, batch, max_steps, precision):
    cmd = [gaze, "caption", *source, "--json", "--precision", precision,
           "--beam-size", str(beam), "--batch-size", str(batch), "--max-steps", str(max_steps),
           "--log-level", "warn", *images]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"gaze caption failed ({proc.returncode}):\n{proc.stderr}")
    lines = [json.loads(l) for l in proc.stdout.splitlines() if l.strip()]
    return seconds, {Path(l["path"]).name: l["caption"] for l in lines}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tutorial-dir", required=True)
    p.add_argument("--images", required=True, help="folder of 256x256 JPEG/PNG images")
    p.add_argument("--count", type=int, default=32)
    p.add_argument("--beam-sizes", default="1,5")
    p.add_argument("--batch-sizes", default="1,8,32", help="gaze's batch sizes")
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--model", help="a trained gaze model file of the tutorial's architecture")
    p.add_argument("--word-map", help="the word map of --model (WORDMAP_*.json)")
    p.add_argument("--precision", default="f32", help="gaze's --precision")
    p.add_argument("--torch-precision", default="f32", choices=["f32", "bf16"],
                   help="the tutorial's: bf16 runs it under torch.autocast")
    p.add_argument("--gaze", default=str(Path(__file__).resolve().parent.parent
                                         / "target/release/gaze"))
    args = p.parse_args()

    import torch
    from PIL import Image

    if args.threads:
        torch.set_num_threads(args.threads)
    images = sorted(str(f) for f in Path(args.images).iterdir()
                    if f.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.count]
    if len(images) < 2:
        sys.exit(f"need at least two images in {args.images}")
    odd = [f for f in images if Image.open(f).size != (256, 256)]
    if odd:
        print(f"note: {len(odd)} image(s) are not 256x256; resizing may differ slightly")

    if args.model:
        if not args.word_map:
            sys.exit("--model needs --word-map")
        word_map = json.loads(Path(args.word_map).read_text())
        encoder, decoder = tutorial_models(args.tutorial_dir, len(word_map))
        load_trained(encoder, decoder, args.model)
        source = ["--model", args.model]
    else:
        word_map = coco_sized_word_map()
        encoder, decoder = tutorial_models(args.tutorial_dir, len(word_map))
        work = Path(tempfile.mkdtemp(prefix="gaze-vs-tutorial-"))
        weights = str(work / "weights.pth")
        torch.save({"encoder": encoder.state_dict(), "decoder": decoder.state_dict()}, weights)
        word_map_path = str(work / "WORDMAP_bench.json")
        Path(word_map_path).write_text(json.dumps(word_map))
        source = ["--weights", weights, "--word-map", word_map_path]
    search = tutorial_beam_search(args.tutorial_dir, args.max_steps)

    print(f"machine: {os.cpu_count()} CPUs; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {len(images)} images; "
          f"{args.max_steps + 1} steps at most per caption; vocabulary {len(word_map)}")
    print(f"gaze --precision {args.precision}; tutorial {args.torch_precision}; "
          f"weights: {args.model or 'random'}")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16,
                              enabled=args.torch_precision == "bf16")
    print(f"{'beam':>4} {'tutorial img/s':>15} {'gaze batch':>10} {'gaze img/s':>11} "
          f"{'ratio':>6} {'whole':>6} {'same captions':>14}")
    for beam in [int(b) for b in args.beam_sizes.split(",")]:
        with torch.no_grad(), autocast:
            search(encoder, decoder, images[0], word_map, beam)  # warm-up
            start = time.perf_counter()
            theirs = {}
            for f in images:
                seq, _ = search(encoder, decoder, f, word_map, beam)
                theirs[Path(f).name] = words_of(seq, word_map)
            tutorial_rate = len(images) / (time.perf_counter() - start)
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            one, _ = run_gaze(args.gaze, source, images[:1], beam, batch, args.max_steps,
                              args.precision)
            everything, ours = run_gaze(args.gaze, source, images, beam, batch,
                                        args.max_steps, args.precision)
            gaze_rate = (len(images) - 1) / max(everything - one, 1e-9)
            whole = len(images) / everything / tutorial_rate
            same = sum(ours.get(name) == caption for name, caption in theirs.items())
            print(f"{beam:>4} {tutorial_rate:>15.2f} {batch:>10} {gaze_rate:>11.2f} "
                  f"{gaze_rate / tutorial_rate:>5.2f}x {whole:>5.2f}x "
                  f"{same:>8}/{len(images)}", flush=True)
            for name, caption in theirs.items():
                if ours.get(name) != caption:
                    print(f"     differs: {name}\n       tutorial: {caption}\n"
                          f"       gaze:     {ours.get(name)}")


if __name__ == "__main__":
    main()
