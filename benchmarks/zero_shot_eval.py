"""Time of one ImageNet-1k-sized zero-shot evaluation (1000 classes x 80 templates, a few hundred images), first
and repeated, through the `EvaluationSuite` the trainer and `ablate eval` use. A benchmark, not a test.

The images are random pixels in clip_benchmark's webdataset layout (accuracy is meaningless; cost is not: the
suite decodes, resizes and encodes them as it would real photos). Reported, in seconds:
- first: a cold evaluation (prompts tokenised, classifier built with the text tower, images encoded);
- repeated: the same suite again with unchanged weights (classifier from memory);
- new process: a fresh suite and cache reading the classifier from disk, as a second `ablate eval` does;
- tokenise: tokenising the prompts alone (part of first; cached for a run's later evaluations).
Every text-tower forward is logged (prompts done, prompts/s), so a run cut short by `timeout` still gives the
measured rate; `--json` writes the figures. `--classes N` keeps ImageNet's first N class names (all 80
templates) where 80 000 prompts cannot finish; `text_tower_1000x80_s` then extrapolates the measured per-prompt
time of the text tower to the full classifier (the forwards are fixed-size batches, so the cost is linear).

    nice -n 10 timeout 6000 .venv/bin/python benchmarks/zero_shot_eval.py [--model MobileCLIP-S0] [--images 300]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from open_clip import zero_shot_metadata
from PIL import Image

from ablate.core.config.sections import EvalConfig
from ablate.core.evaluation.classifier import ZeroShotClassifiers
from ablate.core.evaluation.suite import EvaluationSuite
from ablate.core.models.factory import create_model


def write_images(root: Path, count: int, classes: int, size: int) -> Path:
    """`count` random images with labels in [0, classes) in clip_benchmark's layout (split `test`)."""
    (root / "test").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with wds.ShardWriter(str(root / "test" / "%d.tar"), maxcount=1000, verbose=0) as sink:
        for index in range(count):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
            sink.write({"__key__": f"s{index:07d}", "jpg": buffer.getvalue(), "cls": int(rng.integers(classes))})
        shards = sink.shard
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")
    return root


def log_text_forwards(model: torch.nn.Module, total: int) -> dict[str, float]:
    """Hooks that time every text-tower forward and print the progress; returns the running counters."""
    state = {"prompts": 0, "seconds": 0.0, "began": 0.0}

    def before(module: torch.nn.Module, args: tuple) -> None:
        state["began"] = time.perf_counter()

    def after(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        state["prompts"] += len(args[0])
        state["seconds"] += time.perf_counter() - state["began"]
        rate = state["prompts"] / state["seconds"]
        print(
            f"  text tower: {state['prompts']}/{total} prompts in {state['seconds']:.0f} s ({rate:.1f}/s)", flush=True
        )

    model.text.register_forward_pre_hook(before)
    model.text.register_forward_hook(after)
    return state


def timed(label: str, call) -> tuple[float, dict]:
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    print(f"{label}: {seconds:.1f} s", flush=True)
    return seconds, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="MobileCLIP-S0")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--templates", default="openai_imagenet", help="openai_imagenet (80) or simple_imagenet (7)")
    parser.add_argument("--classes", type=int, default=1000, help="ImageNet's first N class names (default all)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    figures: dict[str, object] = {"model": args.model, "images": args.images, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as folder:
        data = write_images(Path(folder) / "imagenet_wds", args.images, args.classes, 320)
        task = {"name": "imagenet", "format": "clip_benchmark", "path": str(data), "templates": args.templates}
        task["classnames"] = list(zero_shot_metadata.IMAGENET_CLASSNAMES[: args.classes])
        config = EvalConfig.model_validate({"batch_size": args.batch_size, "tasks": [task]})
        cache_dir = Path(folder) / "zero_shot"
        suite = EvaluationSuite(config, None, model.inputs, ZeroShotClassifiers(cache_dir))
        resolved = suite.tasks[0][0]
        prompts = len(resolved.classnames) * len(resolved.templates)
        figures |= {"classes": len(resolved.classnames), "templates": len(resolved.templates), "prompts": prompts}
        progress = log_text_forwards(model, prompts)
        cpu = torch.device("cpu")
        with torch.inference_mode():
            figures["tokenise_s"], _ = timed(
                "tokenise",
                lambda: ZeroShotClassifiers().tokenized(
                    resolved.classnames, resolved.templates, model.inputs.context_length
                ),
            )
            figures["first_s"], metrics = timed("first evaluation", lambda: suite(model, cpu))
            figures["text_tower_s"] = progress["seconds"]
            figures["text_tower_1000x80_s"] = progress["seconds"] / progress["prompts"] * 1000 * 80
            figures["repeated_s"], _ = timed("repeated (same weights, cached in memory)", lambda: suite(model, cpu))
            fresh = EvaluationSuite(config, None, model.inputs, ZeroShotClassifiers(cache_dir))
            figures["new_process_s"], _ = timed("new suite reading the disk cache", lambda: fresh(model, cpu))
            figures["built"] = suite.classifiers.built + fresh.classifiers.built
        figures["top1"] = metrics["eval/zeroshot/imagenet/top1"]
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
