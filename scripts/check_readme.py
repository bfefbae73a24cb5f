#!/usr/bin/env python3
"""Runs every command README.md shows, as written, and reports which work.

    python3 scripts/check_readme.py [--quick] [--with-tests] [--work DIR] [--keep]

It reads the commands out of README.md's code blocks (and the `cargo run` commands in its
text), so the check follows the README as it changes: a command the script does not know how
to check fails the run. The commands run in README order in a scratch folder inside target/
(`cargo run` there finds the project and reuses its release build), where tests/ and
config.toml are links into the repository, so relative paths resolve as they do from a
checkout.

Some commands name inputs a checkout does not hold: Karpathy's split JSON and the COCO or
Flickr images, torchvision's ResNet-101 weights, the tutorial's released checkpoint, an
`image.jpg`, a `model.safetensors`. The script makes small stand-ins for them first (a
synthetic dataset in COCO and Flickr form, a randomly initialised ResNet-101 saved by torch,
the tutorial-style checkpoint fixture from tests/fixtures/pth) and says so. Where a command
as written would run for hours (the two COCO training stages), it adds `--epochs 1` and says
so. `--quick` also shortens the 15-minute synthetic training to one minute. Commands that
need a GPU or an NVIDIA toolchain are reported as skipped with the reason; the CUDA-only
commands are run on this build to check that they fail with the documented error.

Exit status: 0 when every command that ran did what the README says, 1 otherwise.
Needs: cargo, python3; torch+torchvision for the ResNet-101 stand-in (otherwise those
commands are skipped); the sqlite3 shell for the README's sqlite3 command (likewise).
"""

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COCO = "coco_5_cap_per_img_5_min_word_freq"
DEMO_MODEL = "gaze-demo/model/BEST_checkpoint_synth_5_cap_per_img_5_min_word_freq.safetensors"
PREFIXES = ("cargo ", "mkdir ", "cp ", "JOBS=", "gpu-bundle/", "gaze ", "target/", "scripts/")


# ---------------------------------------------------------------------------------------------
# Reading the README


def code_blocks(text):
    """Indented (4-space) code blocks, as lists of lines without the indent."""
    blocks, current, previous_blank = [], None, True
    for line in text.splitlines():
        if line.startswith("    ") and (current is not None or previous_blank):
            current = current if current is not None else []
            current.append(line[4:])
        elif not line.strip() and current is not None:
            current.append("")
        else:
            if current is not None:
                blocks.append(current)
            current = None
        previous_blank = not line.strip()
    if current is not None:
        blocks.append(current)
    return [b[: len(b) - next(i for i, l in enumerate(reversed(b)) if l.strip())] for b in blocks]


def join_command(lines, i):
    """One command from lines[i]: joins `\\` continuations and unbalanced double quotes."""
    parts = [lines[i]]
    while parts[-1].rstrip().endswith("\\") or "\n".join(parts).count('"') % 2 == 1:
        i += 1
        if i >= len(lines):
            break
        parts[-1] = parts[-1].rstrip().removesuffix("\\")
        parts.append(lines[i])
    text = "\n".join(parts) if any('"' in p for p in parts) else " ".join(p.strip() for p in parts)
    return text.strip(), i + 1


def strip_comment(command):
    """Drops a trailing `  # comment` (the README puts two spaces before one)."""
    return re.sub(r"\s{2,}#.*$", "", command)


def readme_items(text):
    """What the README shows, in order: ("command", text), ("python", code), ("toml", text)."""
    items = []
    for block in code_blocks(text):
        first = block[0]
        if any(l.startswith("$ ") for l in block):
            i = 0
            while i < len(block):
                if block[i].startswith("$ "):
                    lines = [block[i][2:]] + block[i + 1 :]
                    command, used = join_command(lines, 0)
                    items.append(("command", command))
                    i += used
                else:
                    i += 1
        elif first.startswith("import "):
            items.append(("python", "\n".join(block)))
        elif first.startswith("["):
            items.append(("toml", "\n".join(block)))
        elif first.startswith(PREFIXES) or first.startswith("# "):
            i = 0
            while i < len(block):
                line = block[i]
                if not line.strip() or line.startswith("# "):
                    i += 1
                    continue
                command, i = join_command(block, i)
                items.append(("command", strip_comment(command)))
        # anything else is output shown in the README
    for inline in re.findall(r"`(cargo run [^`]+)`", text):
        if not any(kind == "command" and c == inline for kind, c in items):
            items.append(("command", inline))
    return items


# ---------------------------------------------------------------------------------------------
# Running


class Checker:
    def __init__(self, work, quick, with_tests):
        self.work, self.quick, self.with_tests = work, quick, with_tests
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.results = []
        self.daemon = None
        self.server = None
        self.count = 0

    # -- reporting
    def report(self, status, command, detail=""):
        self.results.append((status, command, detail))
        short = command if len(command) < 100 else command[:97] + "..."
        print(f"[{status:^7}] {short}" + (f"\n          {detail}" if detail else ""), flush=True)

    # -- running one shell command in the scratch folder
    def sh(self, command, timeout=3600, env=None):
        self.count += 1
        log = self.logs / f"{self.count:02d}.log"
        started = time.time()
        with open(log, "w") as out:
            out.write(f"$ {command}\n")
            out.flush()
            try:
                proc = subprocess.run(command, shell=True, cwd=self.work, stdout=subprocess.PIPE,
                                      stderr=out, text=True, timeout=timeout,
                                      env={**os.environ, **(env or {})}, executable="/bin/bash")
                stdout, code = proc.stdout, proc.returncode
            except subprocess.TimeoutExpired as e:
                stdout, code = (e.stdout or b"").decode(errors="replace"), "timeout"
            out.write(stdout)
        return code, stdout, time.time() - started, log

    def run(self, command, expect=(0,), check=None, note="", timeout=3600, shown=None):
        """Runs a command; ok when its exit status is expected and `check` (if any) passes."""
        code, stdout, seconds, log = self.sh(command, timeout=timeout)
        detail = f"exit {code}, {seconds:.0f} s" + (f"; {note}" if note else "")
        problem = None
        if code not in expect:
            problem = f"expected exit {' or '.join(map(str, expect))}"
        elif check:
            problem = check(stdout)
        if problem:
            tail = log.read_text().splitlines()[-5:]
            self.report("FAIL", shown or command, f"{detail}: {problem} (log {log})\n          "
                        + "\n          ".join(tail))
        else:
            self.report("ok", shown or command, detail)
        return code, stdout

    def skip(self, command, why):
        self.report("skipped", command, why)

    def must_exist(self, *paths):
        def check(_stdout):
            missing = [p for p in paths if not (self.work / p).exists()]
            return f"missing {', '.join(missing)}" if missing else None
        return check

    # -- commands the README leaves running: `gaze watch` ("Watch a folder") and `gaze serve`
    # ("Serve over HTTP"), each started in a session of its own and stopped with Ctrl-C
    def start_background(self, command, log_name, ready, doing):
        """Starts `command` and waits until its log says `ready`; the process, or None."""
        log_path = self.logs / log_name
        log = open(log_path, "w")
        proc = subprocess.Popen(command, shell=True, cwd=self.work, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                executable="/bin/bash")
        proc.log = log
        deadline = time.time() + 600
        while time.time() < deadline:
            if proc.poll() is not None:
                self.report("FAIL", command, f"exited at once with {proc.returncode} "
                            f"(log {log_path})")
                log.close()
                return None
            if ready in log_path.read_text():
                self.report("ok", command, f"{doing} in the background")
                return proc
            time.sleep(0.5)
        self.report("FAIL", command, f"did not start {doing} within 10 minutes")
        return proc

    def stop_background(self, proc, what, log_name, ok_detail):
        """Ctrl-C (SIGINT, what a terminal sends) to `proc`; it must exit 0."""
        if not proc:
            return
        os.killpg(proc.pid, signal.SIGINT)
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = "killed after 120 s"
        proc.log.close()
        if code == 0:
            self.report("ok", what, ok_detail)
        else:
            self.report("FAIL", what, f"exit {code} (log {self.logs / log_name})")

    def start_daemon(self, command):
        self.daemon = self.start_background(command, "watch.log", "watching", "watching")

    def stop_daemon(self):
        self.stop_background(self.daemon, "Ctrl-C (SIGINT) to the watching daemon", "watch.log",
                             "exit 0, as the README says")
        self.daemon = None

    def start_server(self, command):
        self.server = self.start_background(command, "serve.log", "HTTP server listening",
                                            "serving")

    def stop_server(self):
        self.stop_background(self.server, "Ctrl-C (SIGINT) to gaze serve",
                             "serve.log", "exit 0")
        self.server = None

    def wait_daemon_idle(self, images):
        """Until the database holds `images` images and none is pending."""
        db = self.work / "captions.db"
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                    total, pending = conn.execute(
                        "SELECT count(*), sum(status = 'pending') FROM images").fetchone()
                if total >= images and not pending:
                    return True
            except sqlite3.Error:
                pass
            time.sleep(1)
        return False


# ---------------------------------------------------------------------------------------------
# Stand-ins for inputs the README names but a checkout does not hold


def make_small_synth(c, out):
    if not (c.work / out / "dataset_synth.json").exists():
        c.run(f"cargo run --release -- synth --out {out} --train 8 --val 4 --test 4 --seed 7",
              note="stand-in data for the COCO/Flickr commands")
    return json.loads((c.work / out / "dataset_synth.json").read_text())


def make_coco_standin(c):
    if (c.work / "dataset_coco.json").exists():
        return
    data = make_small_synth(c, "standin/synth")
    for entry in data["images"]:
        entry["filepath"] = "train2014" if entry["split"] == "train" else "val2014"
        folder = c.work / "coco/images" / entry["filepath"]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(c.work / "standin/synth/images" / entry["filename"], folder)
    data["dataset"] = "coco"
    (c.work / "dataset_coco.json").write_text(json.dumps(data))
    print("          (stand-in: dataset_coco.json and coco/images/ from 16 synthetic images)")


def make_flickr_standin(c):
    if (c.work / "dataset_flickr8k.json").exists():
        return
    data = make_small_synth(c, "standin/synth")
    data["dataset"] = "flickr8k"
    shutil.copytree(c.work / "standin/synth/images", c.work / "flickr8k/Images")
    (c.work / "dataset_flickr8k.json").write_text(json.dumps(data))
    print("          (stand-in: dataset_flickr8k.json and flickr8k/Images/ from 16 synthetic images)")


def make_resnet101_standin(c):
    """torchvision's file layout with random weights (zero-initialised last BatchNorm of each
    residual branch, so that activations stay in a trainable range without ImageNet weights)."""
    path = c.work / "resnet101-63fe2227.pth"
    if path.exists():
        return True
    code = ("import torch, torchvision, sys; torch.manual_seed(0); "
            "torch.save(torchvision.models.resnet101(zero_init_residual=True).state_dict(), sys.argv[1])")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        return False
    print("          (stand-in: resnet101-63fe2227.pth, random weights saved by torchvision)")
    return True


# ---------------------------------------------------------------------------------------------
# What each README command needs and how its result is judged


def check_command(c, command, toml_block):
    """Runs one README command with what it needs; reports through c."""
    words = command.split()

    if "postgres://" in command or command.startswith("scripts/postgres_sandbox.sh"):
        c.skip(command, "needs a PostgreSQL server: tests/cluster.rs, tests/store.rs and "
                        "tests/store_copy.rs run these commands' paths on a throwaway one")
        return

    if command == "cargo test --release":
        if c.with_tests:
            c.run(command)
        else:
            c.skip(command, "the test suite itself (.ci/run runs it); --with-tests runs it here")
        return

    if command.startswith("cargo run --release -- demo"):
        c.run(command, check=c.must_exist(DEMO_MODEL, "gaze-demo/gaze.db"), timeout=1800)
        return

    if command.startswith("cargo run --release -- caption --model gaze-demo/"):
        c.run(command, check=lambda out: None if out.strip() and (c.work / "pictures").is_dir()
              else "no caption printed or no pictures/ folder")
        return

    if command.startswith("cargo run --release --example caption_one -- MODEL IMAGE"):
        real = command.replace("MODEL IMAGE", f"{DEMO_MODEL} gaze-demo/synth/images/test_000001.jpg")
        c.run(real, check=lambda out: None if out.strip() else "no caption printed",
              note="MODEL and IMAGE: the demo's model and a test image", shown=command)
        return

    if command == "mkdir photos":
        c.run(command)
        return

    if " -- watch " in command and command.endswith(" photos"):
        c.start_daemon(command)
        return

    if " -- serve " in command:
        c.start_server(command)
        return

    if command.startswith("curl "):
        if not c.server:
            c.report("FAIL", command, "gaze serve is not running")
            return
        if "-o attention.png" in command:
            check = c.must_exist("attention.png")
        elif "/metrics" in command:
            check = lambda out: None if "gaze_images{" in out else "no gaze_images metric"
        elif "/v1/caption" in command:
            check = lambda out: None if '"caption"' in out else f"no caption: {out[:200]}"
        else:
            check = lambda out: None if out.strip().startswith("{") and '"error"' not in out \
                else f"not an answer: {out[:200]}"
        c.run(command, check=check)
        if "/metrics" in command:
            c.stop_server()
        return

    if command.startswith("cp tests/fixtures/images/"):
        c.run(command)
        return

    if " -- status " in command or " -- query " in command:
        if c.daemon and not c.wait_daemon_idle(5):
            c.report("FAIL", command, "the daemon did not caption the five copied files in 5 min")
            return
        check = None
        if "--attention-png red.png" in command:
            check = c.must_exist("red.png")
        elif "--search dog" in command:
            check = lambda out: None if "red_circle.png" in out else "red_circle.png not found"
        elif "--failed" in command:
            check = lambda out: None if "truncated.jpg" in out else "truncated.jpg not listed"
        c.run(command, check=check)
        return

    if command.startswith("sqlite3 "):
        if shutil.which("sqlite3"):
            c.run(command, check=lambda out: None if "red_circle.png" in out else "no rows")
        else:
            c.skip(command, "no sqlite3 shell on this machine")
        return

    if command.startswith("cargo run --release --example query_db -- captions.db"):
        c.run(command, check=lambda out: None if "newest captions" in out else "no output")
        c.stop_daemon()
        return

    if " -- prepare --dataset coco " in command:
        c.stop_daemon()
        make_coco_standin(c)
        c.run(command, check=c.must_exist(f"prepared/TRAIN_IMAGES_{COCO}.hdf5"))
        return

    if " -- prepare --dataset flickr8k " in command:
        make_flickr_standin(c)
        c.run(command, check=c.must_exist(
            "prepared/WORDMAP_flickr8k_5_cap_per_img_5_min_word_freq.json"))
        return

    if command == "cargo run --release -- synth --out data/synth":
        c.run(command, check=c.must_exist("data/synth/dataset_synth.json"))
        return

    if " -- train " in command and f"--data-name {COCO}" in command:
        if not make_resnet101_standin(c):
            c.skip(command, "needs torch and torchvision to make the ResNet-101 stand-in")
            return
        # As written, each stage trains until validation stops improving (hours on COCO).
        # Here each trains one epoch: the second stage resumes the first's epoch counter, as
        # the tutorial's does, so its one epoch is epoch 2.
        # The third (--scst) is a new stage, so it starts again at epoch 0.
        second = "--fine-tune-encoder" in command
        if "--scst" in command:
            out, epochs = ("runs/coco-scst", 1)
        else:
            out, epochs = ("runs/coco-ft", 2) if second else ("runs/coco", 1)

        def trained(_stdout):
            log = c.work / out / "train_log.jsonl"
            if not log.exists():
                return f"no {out}/train_log.jsonl"
            epochs_done = [json.loads(l).get("epoch") for l in log.read_text().splitlines() if l]
            return None if epochs_done and epochs_done[-1] == epochs - 1 else \
                f"{out}/train_log.jsonl ends at epoch {epochs_done[-1:]} instead of {epochs - 1}"

        c.run(f"{command} --epochs {epochs}", check=trained, shown=command,
              note=f"run with --epochs {epochs} added (as written it trains until it stops improving)")
        return

    if " -- prepare --dataset synth " in command:
        c.run(command, check=c.must_exist(
            "data/prepared/TRAIN_IMAGES_synth_5_cap_per_img_5_min_word_freq.hdf5"))
        return

    if " -- train --data-folder data/prepared " in command:
        real = command.replace("--max-minutes 15", "--max-minutes 1") if c.quick else command
        c.run(real, check=c.must_exist(
            "runs/synth/BEST_checkpoint_synth_5_cap_per_img_5_min_word_freq.safetensors"),
            note="--quick: --max-minutes 1" if c.quick else "", shown=command)
        return

    if " -- eval --model model.safetensors " in command:
        best = c.work / f"runs/coco/BEST_checkpoint_{COCO}.safetensors"
        if not best.exists():
            c.skip(command, "no COCO stand-in model (the COCO training above did not run)")
            return
        shutil.copy(best, c.work / "model.safetensors")
        c.run(command, check=c.must_exist("report.json", f"results/{COCO}_test_beam5.json"),
              note="model.safetensors: the model the COCO training above wrote")
        # The same results file through `gaze score`, as the README's metrics section shows.
        score = (f"cargo run --release -- score --results results/{COCO}_test_beam5.json "
                 "--karpathy-json dataset_coco.json --split test --image-ids index")
        c.run(score, check=lambda out: None if "CIDEr" in out else "no CIDEr-D in the output")
        c.run("cargo run --release -- model info model.safetensors",
              check=lambda out: None if out.strip() else "nothing printed")
        return

    if command == "cargo run --release -- retrain --now --config gaze.toml --db captions.db":
        # The README's [retrain] block, pointed at the demo's prepared data, and the demo's
        # model made the database's active model (retraining continues from the active model,
        # whose word map must be the data's).
        toml = toml_block.replace('"data/prepared"', '"gaze-demo/prepared"').replace(
            f'"{COCO}"', '"synth_5_cap_per_img_5_min_word_freq"')
        (c.work / "gaze.toml").write_text(toml + "\n")
        (c.work / "demo-inbox").mkdir(exist_ok=True)
        for image in sorted((c.work / "gaze-demo/synth/images").glob("test_00000*.jpg")):
            shutil.copy(image, c.work / "demo-inbox")
        c.run(f"cargo run --release -- watch --db captions.db --model {DEMO_MODEL} --once demo-inbox",
              note="makes the demo's model the active one")
        print("          (gaze.toml: the README's [retrain] block with prepared = \"gaze-demo/prepared\")")
        c.run(command, expect=(0, 1), note="0 promoted, 1 rejected", timeout=3600)
        return

    if " -- models " in command:
        c.run(command)
        return

    if " -- import " in command:
        shutil.copy(ROOT / "tests/fixtures/pth/checkpoint_legacy.pth.tar",
                    c.work / f"BEST_checkpoint_{COCO}.pth.tar")
        shutil.copy(ROOT / "tests/fixtures/pth/WORDMAP_fixture.json", c.work / f"WORDMAP_{COCO}.json")
        c.run(command, check=c.must_exist("coco.safetensors"),
              note="stand-in: tests/fixtures/pth/checkpoint_legacy.pth.tar, a checkpoint "
                   "saved as the tutorial's is (whole modules, legacy format)")
        return

    if command in ("cargo run --release -- caption --model coco.safetensors --beam-size 5 image.jpg",
                   "cargo run --release -- caption --precision auto --model coco.safetensors "
                   "--beam-size 5 image.jpg"):
        shutil.copy(ROOT / "tests/fixtures/images/blue_square.jpg", c.work / "image.jpg")
        c.run(command, check=lambda out: None if out.strip() else "no caption printed")
        return

    if command.startswith(("cargo build --release --features cuda",
                           "cargo build --release --features cudnn")):
        c.skip(command, "needs an NVIDIA toolchain; scripts/build_cuda.sh is checked on its own")
        return

    if "--device cuda" in command and command.startswith(("target/release/gaze", "gaze ")):
        real = re.sub(r"^(target/release/gaze|gaze) ", "cargo run --release -- ", command)
        c.run(real, expect=(1, 2), check=lambda out: None,
              note="this build has no CUDA: checked that it refuses with an error", shown=command)
        log_text = (c.logs / f"{c.count:02d}.log").read_text()
        if "cuda" not in log_text.lower():
            c.report("FAIL", command, "the error does not mention CUDA")
        return

    if command.startswith(("JOBS=", "GAZE_CUDNN=")) and "build_cuda.sh" in command:
        c.skip(command, "long (candle's CUDA kernels); run and timed on its own, see BENCHMARKS.md")
        return

    if command.startswith(("gpu-bundle/gpu_check.sh", "GAZE_IM2COL_BINARY=")) \
            and "gpu_check.sh" in command:
        c.skip(command, "needs an NVIDIA GPU")
        return

    if command == "cargo install cargo-fuzz" or "cargo fuzz " in command \
            or command.startswith("scripts/fuzz_all.sh"):
        c.skip(command, "fuzzing: its own instrumented build and 10-minute runs; "
                        "run on its own, see BENCHMARKS.md")
        return

    c.report("FAIL", command, "README command not known to scripts/check_readme.py")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one-minute synthetic training")
    parser.add_argument("--with-tests", action="store_true", help="also run cargo test --release")
    parser.add_argument("--work", type=Path, default=ROOT / "target/readme-check")
    parser.add_argument("--keep", action="store_true", help="keep the work folder's old contents")
    args = parser.parse_args()

    work = args.work.resolve()
    if not str(work).startswith(str(ROOT) + os.sep):
        sys.exit("--work must be inside the repository (so that `cargo run` finds it)")
    if work.exists() and not args.keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for name in ("tests", "config.toml", "examples", "migrations", "scripts"):
        link = work / name
        if not link.exists():
            link.symlink_to(ROOT / name)

    print("building (cargo build --release --examples) ...", flush=True)
    subprocess.run(["cargo", "build", "--release", "--bins", "--examples"], cwd=ROOT, check=True)

    items = readme_items((ROOT / "README.md").read_text())
    toml_block = next((text for kind, text in items if kind == "toml"), "")
    checker = Checker(work, args.quick, args.with_tests)
    started = time.time()
    try:
        for kind, text in items:
            if kind == "command":
                check_command(checker, text, toml_block)
            elif kind == "python":
                code, out = checker.run(f"python3 - <<'EOF'\n{text}\nEOF",
                                        check=lambda out: None if "->" in out else "no rows printed",
                                        shown="the README's Python sqlite3 snippet")
            # the TOML block is used by the retrain command
    finally:
        checker.stop_daemon()

    failed = [r for r in checker.results if r[0] == "FAIL"]
    ran = [r for r in checker.results if r[0] == "ok"]
    skipped = [r for r in checker.results if r[0] == "skipped"]
    print(f"\n{len(ran)} ok, {len(failed)} failed, {len(skipped)} skipped "
          f"in {(time.time() - started) / 60:.1f} min; logs in {checker.logs}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
