"""Whole training processes side by side: `ablate train` against `python -m open_clip_train.main`, the same model,
shards, batch, steps, optimizer settings, threads and loader workers, in alternating rounds (A/B per round on a
shared machine). A benchmark, not a test: run it by hand.

Each process is started through a small bootstrap that registers torch's global optimizer-step hook and appends
a timestamp per optimizer step to a file, then runs the trainer's own entry point unchanged; the parent takes
peak RSS from `wait4` (the process's own high-water mark). Per process:

- start-up: process start -> end of the first optimizer step, minus one steady-state step (imports, data
  indexing, model build, tracking and everything else before the loop);
- step: median interval between optimizer steps 2..N;
- shutdown: last optimizer step -> process exit (final evaluation, checkpoint, metrics, interpreter exit);
- whole: process start -> exit; peak RSS.

Ratios are ablate / open_clip per round; the summary gives their medians and ranges. Both trainers do the same
work at the end: save a checkpoint and evaluate retrieval on the same validation shards. Because
open_clip_train evaluates zero-shot on ImageNet only, the shards' manifest has no zero-shot tasks by default (as
DataComp-style caption data has none); `--zero-shot` keeps the bundled benchmark's two tasks (132 prompts through
the text tower), which only ablate then evaluates. Round 0 is a warm-up and is not counted: it fills the page
cache, ablate's per-architecture efficiency cache and creates the MLflow database that the later rounds' runs
log into, as repeated runs and the trials of a study do (creating the sqlite schema takes seconds).

open_clip_train 3.3.0 fails on webdataset 1.0 (our pin: `KeyError: 'fname'` at the empty end-of-shard
sample), so it runs as its users run it: in its own venv (`$ABLATE_CACHE/bench-venv`, created on first use)
with `pip install open_clip_torch[training]`, which brings the webdataset it supports. That venv reuses this
environment's torch stack through a `.pth` entry placed after its own site-packages, so what pip installs
there (open_clip, webdataset 0.2.x, transformers) shadows ours and nothing of ours is modified.

    .venv/bin/python benchmarks/open_clip_vs_ablate.py --model MobileCLIP2-S0 --image-size 256 --batch 4 \\
        --steps 20 --rounds 4
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import open_clip
import torch

from ablate.core.data.bundled import cache_dir
from ablate.core.data.manifest import load_manifest
from ablate.core.data.shapes import generate_shapes

BOOTSTRAP = """
import runpy, sys, time
import torch.optim.optimizer as optimizer
stamps = open(sys.argv[1], "a", buffering=1)
optimizer.register_optimizer_step_post_hook(lambda *args: stamps.write(f"{time.time()}\\n"))
module = sys.argv[2]
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _printed(python: Path, code: str) -> str:
    """What `code` prints when run by the interpreter `python`."""
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def bench_venv(folder: Path) -> Path:
    """The open_clip venv's python, created (once) with open_clip_torch[training] at our open_clip version."""
    python = folder / "bin" / "python"
    if (folder / "ready").is_file():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    site = _printed(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    (Path(site) / "zz_reuse_torch_stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    requirement = f"open_clip_torch[training]=={open_clip.__version__}"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", requirement], check=True)
    found = _printed(python, "import webdataset, open_clip_train; print(webdataset.__file__)")
    if not found.startswith(str(folder)):
        raise RuntimeError(f"the bench venv imports webdataset from {found}, not from its own site-packages")
    (folder / "ready").touch()
    return python


def timed_process(python: Path, module: str, arguments: list[str], scratch: Path, env: dict[str, str]) -> dict:
    """Run `python -m module arguments` through the bootstrap; return its phases in seconds and peak RSS."""
    stamps = scratch / "steps.txt"
    stamps.unlink(missing_ok=True)
    log = scratch / "log.txt"
    command = [str(python), "-c", BOOTSTRAP, str(stamps), module, *arguments]
    with open(log, "w") as output:
        started = time.time()
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=scratch)
        _, status, usage = os.wait4(process.pid, 0)
        ended = time.time()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{module} failed ({process.returncode}):\n{log.read_text()[-3000:]}")
    times = [float(line) for line in stamps.read_text().split()]
    step = statistics.median(b - a for a, b in itertools.pairwise(times[1:]))
    return {
        "startup_s": times[0] - started - step,
        "step_s": step,
        "shutdown_s": ended - times[-1],
        "whole_s": ended - started,
        "peak_rss_gib": usage.ru_maxrss / 2**20,  # kilobytes on Linux
        "steps": len(times),
    }


def drop_zero_shot_tasks(manifest: Path) -> None:
    """Retrieval only, like caption data without class labels: what both trainers evaluate."""
    tree = json.loads(manifest.read_text())
    tree.pop("zero_shot", None)
    manifest.write_text(json.dumps(tree, indent=2))


def ablate_arguments(args: argparse.Namespace, data: Path, run_dir: Path, tracking: Path) -> list[str]:
    settings = {
        "model.name": args.model,
        "model.image_size": args.image_size,
        "data.root": data,
        "data.num_workers": args.workers,
        "train.batch_size": args.batch,
        "train.steps": args.steps,
        "train.threads": args.threads,
        "train.precision": "fp32",
        "train.log_every": args.steps,
        "train.progress": "false",
        "optim.lr": args.lr,
        "optim.weight_decay": args.wd,
        "optim.warmup_steps": args.warmup,
        "run_dir": run_dir,
        "tracking.uri": f"sqlite:///{tracking}",
    }
    return ["train", *[part for key, value in settings.items() for part in ("--set", f"{key}={value}")]]


def open_clip_arguments(args: argparse.Namespace, data: Path, logs: Path, name: str) -> list[str]:
    manifest = load_manifest(data)
    train, val = manifest.shard_paths("train"), manifest.shard_paths("val")
    return [
        "--model",
        args.model,
        "--train-data",
        "::".join(str(p) for p in train),
        "--train-num-samples",
        str(args.steps * args.batch),
        "--val-data",
        "::".join(str(p) for p in val),
        "--val-num-samples",
        str(manifest.splits["val"].num_samples),
        "--dataset-type",
        "webdataset",
        "--batch-size",
        str(args.batch),
        "--epochs",
        "1",
        "--lr",
        str(args.lr),
        "--wd",
        str(args.wd),
        "--warmup",
        str(args.warmup),
        "--beta1",
        "0.9",
        "--beta2",
        "0.98",
        "--eps",
        "1e-6",
        "--workers",
        str(args.workers),
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--force-image-size",
        str(args.image_size),
        "--save-frequency",
        "1",
        "--log-every-n-steps",
        str(args.steps),
        "--logs",
        str(logs),
        "--name",
        name,
        "--report-to",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="MobileCLIP2-S0")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="loader processes of both trainers")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--wd", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--venv", type=Path, default=None, help="open_clip's venv (default: $ABLATE_CACHE/bench-venv)")
    parser.add_argument(
        "--zero-shot", action="store_true", help="keep the benchmark's zero-shot tasks (ablate alone evaluates them)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the results here as JSON")
    args = parser.parse_args()
    open_clip_python = bench_venv(args.venv or cache_dir() / "bench-venv")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    rounds = []
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        data = scratch / "data"
        samples = max(4 * args.steps * args.batch, 256)
        generate_shapes(data, train=samples, val=64, seed=0, image_size=args.image_size, samples_per_shard=samples)
        if not args.zero_shot:
            drop_zero_shot_tasks(data / "manifest.json")
        for number in range(args.rounds + 1):  # round 0 warms the page cache and the efficiency cache
            run = scratch / f"round-{number}"
            run.mkdir()
            ours = timed_process(
                Path(sys.executable),
                "ablate",
                ablate_arguments(args, data, run / "ablate", scratch / "mlflow.db"),
                run,
                env,
            )
            theirs = timed_process(
                open_clip_python, "open_clip_train.main", open_clip_arguments(args, data, run, "oc"), run, env
            )
            if number:
                rounds.append({"ablate": ours, "open_clip": theirs})
            print(json.dumps({"round": number, "ablate": ours, "open_clip": theirs}), flush=True)
    keys = ("startup_s", "step_s", "shutdown_s", "whole_s", "peak_rss_gib")
    ratios = {key: [r["ablate"][key] / r["open_clip"][key] for r in rounds] for key in keys}
    summary = {
        "settings": {**vars(args), "venv": str(args.venv), "out": str(args.out)},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average": os.getloadavg(),
        "rounds": rounds,
        "ratio_median": {key: statistics.median(values) for key, values in ratios.items()},
        "ratio_range": {key: [min(values), max(values)] for key, values in ratios.items()},
        "ablate_median": {key: statistics.median(r["ablate"][key] for r in rounds) for key in keys},
        "open_clip_median": {key: statistics.median(r["open_clip"][key] for r in rounds) for key in keys},
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
