"""Token merging's speed/fidelity trade-off for image towers (ViT, MCi) and for teacher embedding during
reinforcement. A benchmark, not a test: run it by hand (random init unless a checkpoint is given).

For every r in a sweep: forward GFLOPs (FlopCounterMode) and their ratio to r = 0, images/s and speed-up over
r = 0 (best of interleaved timed batches), and the cosine
of the merged model's embeddings to the exact ones (same weights, same inputs: rendered shapes-benchmark
images, which have the redundant backgrounds merging exploits). With `--checkpoint RUN_DIR --model NAME` the
zero-shot accuracy on the shapes val split is reported per r as well. Timing: exact and merged forwards of
the same model alternate (the handle switched off and on) and the best of `--repeats` is kept, so a busy
machine slows both alike.

- ViT: the `small` registry tower (64 px, 64 patches + CLS, 6 blocks) and timm ViT-B/16 at 224 px (196 + 1
  tokens, 12 blocks; ToMe's headline setting r = 13).
- MCi: timm `fastvit_mci0`, reparameterised, at 64/128/256 px; r merges that many of the attention stage's
  (H/32)·(W/32) tokens around each of its two attention blocks.
- Reinforcement: the `small` CLIP as a teacher embedding 5 augmentations + 6 captions per sample (the bundled
  settings), with both towers merged; samples/s and the cosine of image and text embeddings.

    .venv/bin/python benchmarks/token_merging.py [--threads 2] [--quick] [--out results.json]
    .venv/bin/python benchmarks/token_merging.py --zero-shot-only --model mci-tiny --checkpoint RUN_DIR \
        --data SHAPES_ROOT --rs 0,1,2
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from rich.table import Table
from timm.utils.model import reparameterize_model

from ablate.core.data.shapes import render_sample
from ablate.core.merging import MergeSchedule, TokenMergingConfig, token_merging
from ablate.core.models.factory import create_model

console = Console()


def shapes_images(count: int, size: int) -> torch.Tensor:
    """Rendered benchmark images, resized to `size` and normalised with OpenAI CLIP statistics."""
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    images = []
    for index in range(count):
        png = render_sample(0, "val", index)["png"]
        pixels = torch.from_numpy(np.array(Image.open(io.BytesIO(png)).convert("RGB"))).permute(2, 0, 1).float() / 255
        images.append((pixels - mean) / std)
    batch = torch.stack(images)
    return F.interpolate(batch, size=(size, size), mode="bicubic", align_corners=False) if size != 64 else batch


def best_times(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Best-of-`repeats` seconds per run, the runs interleaved so that load from other processes hits all alike
    (the minimum is the least disturbed measurement, timeit's advice for shared machines)."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def gflops(run: Callable[[], object], items: int) -> float:
    """Forward GFLOPs per item, counted by torch's FlopCounterMode (independent of machine load)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() / items / 1e9


def cosine(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    values = F.cosine_similarity(a.flatten(1).float(), b.flatten(1).float(), dim=-1)
    return float(values.mean()), float(values.min())


def _mixer_outputs(tower: torch.nn.Module) -> tuple[list[torch.Tensor], list]:
    """Capture MCi attention token-mixer outputs: LayerScale starts at 1e-5, so at random init the tower output
    barely moves whatever attention does; the mixer output shows the merging error itself."""
    from timm.models.fastvit import AttentionBlock

    captured: list[torch.Tensor] = []
    hooks = [
        m.token_mixer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        for m in tower.modules()
        if isinstance(m, AttentionBlock)
    ]
    return captured, hooks


def sweep_tower(name: str, tower: torch.nn.Module, images: torch.Tensor, rs: list[int], repeats: int) -> list[dict]:
    rows = []
    with torch.inference_mode():
        captured, hooks = _mixer_outputs(tower)
        exact = tower(images)
        exact_mixers = list(captured)
        for r in rs:
            with token_merging(tower, MergeSchedule(r=r)) as handle:
                captured.clear()
                out = tower(images)
                mixers = list(captured)

                def off(h=handle) -> object:
                    h.enabled = False
                    return tower(images)

                def on(h=handle) -> object:
                    h.enabled = True
                    return tower(images)

                times = best_times({"exact": off, "merged": on}, repeats)
                flops = gflops(on, len(images))
                exact_flops = gflops(off, len(images))
            row = {"tower": name, "r": r, "gflops": flops, "flop_ratio": exact_flops / flops}
            row["images_per_s"] = len(images) / times["merged"]
            row["speedup"] = times["exact"] / times["merged"]
            row["cos_mean"], row["cos_min"] = cosine(out, exact)
            if exact_mixers:
                row["attn_out_cos_mean"] = cosine(mixers[-1], exact_mixers[-1])[0]
            rows.append(row)
        for hook in hooks:
            hook.remove()
    return rows


def reinforcement_sweep(rs: list[int], samples: int, repeats: int) -> list[dict]:
    """The teacher's per-sample work in the writer: 5 augmented images + 1 alt-text + 5 synthetic captions."""
    from open_clip.tokenizer import SimpleTokenizer

    torch.manual_seed(0)
    teacher = create_model("small").eval()
    images = shapes_images(samples * 5, teacher.inputs.image_size)
    tokenizer = SimpleTokenizer(context_length=teacher.inputs.context_length)
    captions = []
    for index in range(samples):
        sample = render_sample(0, "val", index)
        captions += [sample["txt"], *sample["syn.json"]["syn_text"]]
    tokens = tokenizer(captions)

    def embed() -> tuple[torch.Tensor, torch.Tensor]:
        return teacher.encode_image(images), teacher.encode_text(tokens)

    rows = []
    with torch.inference_mode():
        exact_image, exact_text = embed()
        for r in rs:
            config = TokenMergingConfig(image=MergeSchedule(r=r), text=MergeSchedule(r=r))
            with token_merging(teacher, config) as handle:
                image, text = embed()

                def off(h=handle) -> object:
                    h.enabled = False
                    return embed()

                def on(h=handle) -> object:
                    h.enabled = True
                    return embed()

                times = best_times({"exact": off, "merged": on}, repeats)
                flop_ratio = gflops(off, samples) / gflops(on, samples)
            image_cos, text_cos = cosine(image, exact_image), cosine(text, exact_text)
            rows.append(
                {
                    "r": r,
                    "samples_per_s": samples / times["merged"],
                    "speedup": times["exact"] / times["merged"],
                    "flop_ratio": flop_ratio,
                    "image_cos_mean": image_cos[0],
                    "image_cos_min": image_cos[1],
                    "text_cos_mean": text_cos[0],
                    "text_cos_min": text_cos[1],
                }
            )
    return rows


def zero_shot_sweep(model_name: str, checkpoint: str, data_root: str, rs: list[int], repeats: int) -> list[dict]:
    """The trade-off table for a trained model: per r, its image tower's speed-up and FLOP ratio over r = 0
    (timed on val images, exact and merged interleaved), the cosine of its image embeddings to the exact ones,
    next to the zero-shot accuracy and its change."""
    from ablate.core.config.sections import TeacherSpec
    from ablate.core.data.dataset import EvalDataset
    from ablate.core.data.manifest import load_manifest
    from ablate.core.evaluation.evaluate import evaluate
    from ablate.core.teachers.ensemble import load_teacher

    model = load_teacher(TeacherSpec(model=model_name, checkpoint=checkpoint))
    dataset = EvalDataset(load_manifest(data_root), model.inputs, "val", None)
    images = shapes_images(32, model.inputs.image_size)
    speed = {row["r"]: row for row in sweep_tower(model_name, model.visual, images, rs, repeats)}
    rows = []
    for r in rs:
        with torch.inference_mode(), token_merging(model, MergeSchedule(r=r)):
            metrics = evaluate(model, dataset, 128, torch.device("cpu"))
        accuracy = {k.removeprefix("eval/"): v for k, v in metrics.items() if "zeroshot" in k}
        timing = {name: speed[r][name] for name in ("speedup", "flop_ratio", "cos_mean")}
        rows.append({"r": r, **timing, **accuracy})
    for row in rows:
        row["mean_top1_change"] = row["zeroshot/mean_top1"] - rows[0]["zeroshot/mean_top1"]
    return rows


def show(title: str, rows: list[dict]) -> None:
    table = Table(*rows[0].keys(), title=title)
    for row in rows:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smaller batches and sweeps")
    parser.add_argument("--checkpoint", help="trained run folder for zero-shot accuracy (with --model)")
    parser.add_argument("--model", default="small")
    parser.add_argument("--data", help="shapes dataset root for zero-shot accuracy")
    parser.add_argument("--rs", default="0,2,4,6,8", help="merge counts of the zero-shot sweep, e.g. 0,1,2 for MCi")
    parser.add_argument("--zero-shot-only", action="store_true", help="skip the random-init tower sweeps")
    parser.add_argument("--out", help="write all rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch = 8 if args.quick else 32
    results: dict[str, list[dict]] = {}
    if not args.zero_shot_only:
        tower_sweeps(results, batch, args)
    if args.checkpoint and args.data:
        rs = [int(r) for r in args.rs.split(",")]
        results["zero_shot"] = zero_shot_sweep(args.model, args.checkpoint, args.data, rs, args.repeats)
        show(f"Zero-shot trade-off on {args.data} val ({args.model} @ {args.checkpoint})", results["zero_shot"])
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)


def tower_sweeps(results: dict[str, list[dict]], batch: int, args: argparse.Namespace) -> None:
    """Random-init towers: FLOPs, speed and embedding fidelity per r (no accuracy without training)."""

    torch.manual_seed(0)
    small = create_model("small").visual.eval()
    results["vit_small_64px"] = sweep_tower(
        "small ViT 64px", small, shapes_images(batch, 64), [0, 2, 4, 6, 8, 10], args.repeats
    )
    show("ViT (small, 64 px, 65 tokens, 6 blocks)", results["vit_small_64px"])
    vit_b = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=512).eval()
    rs_b = [0, 8, 13] if args.quick else [0, 4, 8, 13, 16]
    results["vit_b16_224px"] = sweep_tower(
        "ViT-B/16 224px", vit_b, shapes_images(max(batch // 4, 2), 224), rs_b, args.repeats
    )
    show("ViT-B/16 (224 px, 197 tokens, 12 blocks)", results["vit_b16_224px"])

    mci = reparameterize_model(timm.create_model("fastvit_mci0", pretrained=False, num_classes=512).eval())
    for size in (64, 128, 256):
        tokens = (size // 32) ** 2
        rs = sorted({0, tokens // 4, tokens // 2})
        key = f"mci0_{size}px"
        results[key] = sweep_tower(
            f"MCi0 {size}px", mci, shapes_images(max(batch // (size // 64), 2), size), rs, args.repeats
        )
        show(f"MCi0 {size} px (attention stage {tokens} tokens, 2 blocks)", results[key])

    results["reinforcement_small"] = reinforcement_sweep([0, 2, 4, 8], 4 if args.quick else 16, args.repeats)
    show("Reinforcement teacher `small` (5 images + 6 captions per sample)", results["reinforcement_small"])


if __name__ == "__main__":
    main()
