"""Training-step throughput: our trainer's step against open_clip's own training loop, and the cost of distillation.

Paths, all on the same model (one initialisation, deep-copied), batch size, precision and batches:
- `open_clip`: `open_clip_train.train.train_one_epoch` (the loop `python -m open_clip_train.main` runs), driven
  with an args namespace, open_clip's AdamW parameter groups, `cosine_lr` and `ClipLoss`; it receives the float,
  normalised images its loader workers would produce.
- `ours`: `fast_paths.TrainStep` with the `TrainLoopConfig` defaults (what `ablate train` runs), our AdamW
  (`build_optimizer`), LR schedule and logit-scale clamp; it receives uint8 images and normalises them itself.
- `ours-stored`: MobileCLIP distillation (λ = 1) from stored teacher embeddings carried in the batch (DataCompDR),
  one caption per image: the same caption count as `ours`.
- `ours-stored-eq3`: the same with B_real + B_syn (`data.captions: both`, Eq. 3): twice the captions per image.
- `ours-online`: distillation from two `small` teachers run on every batch (MobileCLIP Tab 4d's comparison).
- `ours-eager`: `ours` with `train.compile: false` (on CUDA, where `auto` compiles: what compilation buys).

Batches are synthetic (random pixels and tokens, unit-norm random teacher embeddings of the bundled layout,
2 × 256): a step's cost does not depend on the values. The loader is measured on real data by
benchmarks/loader_throughput.py. Each round runs every path for `--steps` steps in turn (A/B/A/B on a shared
machine) after one warm-up round; the table reports medians over rounds, and ratios as medians of per-round
ratios. On CUDA it also reports MFU (FLOPs of one step from torch.utils.flop_counter over `--peak-tflops`) and
peak memory.

    .venv/bin/python benchmarks/train_step.py --models tiny MobileCLIP2-S0 --image-size 64 --batch 64 --threads 1
    .venv/bin/python benchmarks/train_step.py --device cuda --models MobileCLIP2-S0 --image-size 256 \\
        --batch 256 --precision bf16 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import torch
from open_clip import ClipLoss
from open_clip_train.scheduler import cosine_lr
from open_clip_train.train import train_one_epoch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ablate.core.config.sections import LossConfig, OptimConfig, TrainLoopConfig
from ablate.core.data.pixels import to_model_input
from ablate.core.data.reinforcement_store import TeacherLayout
from ablate.core.models import CLIP
from ablate.core.models.factory import create_model
from ablate.core.teachers.ensemble import TeacherEnsemble
from ablate.core.training.fast_paths import TrainStep
from ablate.core.training.objective import TeacherSource, compute_loss
from ablate.core.training.optim import build_optimizer, learning_rate, set_learning_rate

TEACHER_DIMS, TEACHER_SCALES = [256, 256], [100.0, 100.0]  # the bundled teachers' stored layout
RESULTS = Path(__file__).parent / "results"
DISTILLATION_PATHS = ("ours-stored", "ours-stored-eq3", "ours-online")
EXTRA_PATHS = (*DISTILLATION_PATHS, "ours-eager")


def build_student(name: str, image_size: int, device: torch.device) -> CLIP:
    """The registry model, fed at `image_size` (its towers are resolution-free convolutions or ViTs built for it)."""
    torch.manual_seed(0)
    model = create_model(name)
    model.inputs = dataclasses.replace(model.inputs, image_size=image_size)
    return model.to(device)


def make_batches(model: CLIP, count: int, batch: int, captions: int, device: torch.device) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    size, context = model.inputs.image_size, model.inputs.context_length
    batches = []
    for _ in range(count):
        width = sum(TEACHER_DIMS)
        batches.append(
            {
                "image": torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator),
                "tokens": torch.randint(1, 49405, (batch, captions, context), generator=generator),
                "teacher_image": nn.functional.normalize(torch.randn(batch, width, generator=generator), dim=-1),
                "teacher_text": nn.functional.normalize(
                    torch.randn(batch, captions, width, generator=generator), dim=-1
                ),
            }
        )
    return [{name: tensor.to(device) for name, tensor in item.items()} for item in batches]


class OurPath:
    """The trainer's step (`TrainStep`), its schedule and clamp, over a fixed list of batches."""

    def __init__(
        self,
        model: CLIP,
        batches: list[dict],
        precision: str,
        loss: LossConfig,
        teachers,
        device,
        compile: bool | str = "auto",
    ) -> None:
        self.model, self.batches, self.loss, self.teachers = model, batches, loss, teachers
        self.optim = OptimConfig(warmup_steps=10)
        self.optimizer = build_optimizer(model, self.optim)
        loop = TrainLoopConfig(precision=precision, compile=compile)
        self.step = TrainStep(loop, device, self.optim.grad_clip_norm)
        self.done = 0

    def __call__(self) -> None:
        self.model.train()
        terms = {}
        for batch in self.batches:
            set_learning_rate(self.optimizer, learning_rate(self.done, 1000, self.optim))
            terms = self.step(self.model, self.optimizer, batch, self._loss)
            self.model.clamp_logit_scale()
            self.done += 1
        float(terms["loss"])  # one host sync per round, as the trainer syncs once per log window

    def _loss(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return compute_loss(model, batch, self.loss, self.teachers)


class DictOutput(nn.Module):
    """open_clip's loop expects `model(images, texts)` to return a dict; this adds nothing else."""

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        self.clip = clip

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        image_features, text_features, logit_scale = self.clip(images, texts)
        return {"image_features": image_features, "text_features": text_features, "logit_scale": logit_scale}


class ListLoader:
    """The `data["train"]` open_clip's loop reads: a dataloader with `num_batches`/`num_samples`, `set_epoch`."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches
        self.num_batches = len(batches)
        self.num_samples = len(batches) * len(batches[0][0])
        self.dataloader = self

    def __iter__(self):
        return iter(self.batches)

    def set_epoch(self, epoch: int) -> None:
        pass


class OpenClipPath:
    """`train_one_epoch` over the same batches, set up as open_clip_train.main sets it up."""

    def __init__(self, model: CLIP, batches: list[dict], precision: str, device: torch.device) -> None:
        self.model = DictOutput(model)
        pairs = [(to_model_input(b["image"], model.inputs), b["tokens"][:, 0]) for b in batches]  # worker output
        self.data = {"train": ListLoader(pairs)}
        exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
        named = list(self.model.named_parameters())
        optim = OptimConfig()
        self.optimizer = torch.optim.AdamW(
            [
                {"params": [p for n, p in named if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
                {"params": [p for n, p in named if not exclude(n, p) and p.requires_grad], "weight_decay": 0.1},
            ],
            lr=optim.lr,
            betas=(optim.beta1, optim.beta2),
            eps=optim.eps,
        )
        self.scheduler = cosine_lr(self.optimizer, optim.lr, 10, 1000)
        self.args = SimpleNamespace(
            device=str(device),
            precision={"fp32": "fp32", "bf16": "amp_bf16", "fp16": "amp"}[precision],
            distill=False,
            accum_freq=1,
            skip_scheduler=False,
            grad_clip_norm=optim.grad_clip_norm,
            horovod=False,
            rank=0,
            local_rank=0,
            world_size=1,
            log_every_n_steps=10**9,  # logs (and syncs) at the first and last batch only
            batch_size=len(pairs[0][0]),
            wandb=False,
        )
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self.loss, self.epoch = ClipLoss(), 0

    def __call__(self) -> None:
        train_one_epoch(
            self.model, self.data, self.loss, self.epoch, self.optimizer, self.scaler, self.scheduler, None, self.args
        )
        self.epoch += 1


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(path: OurPath, device: torch.device) -> int:
    """FLOPs of one training step (forward + backward) of our path, counted by torch.utils.flop_counter on an
    eager step (the counter sees aten ops; compiled kernels would hide some of them)."""
    eager = TrainStep(TrainLoopConfig(precision=path.step.precision, compile=False), device, None)
    counter = FlopCounterMode(display=False)
    with counter:
        eager(path.model, path.optimizer, path.batches[0], path._loss)
    return counter.get_total_flops()


def peak_memory_gib(path: OurPath, device: torch.device) -> float:
    """Peak allocated memory over one round of our path alone."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    path()
    return torch.cuda.max_memory_allocated(device) / 2**30


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def measure(paths: dict[str, Callable[[], None]], rounds: int, samples: int, device) -> dict[str, list[float]]:
    """samples/s of each path per round; paths run in turn inside a round, after one warm-up round."""
    for run in paths.values():
        run()
    speeds: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, run in paths.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            speeds[name].append(samples / (time.perf_counter() - start))
    return speeds


def benchmark_model(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    base = build_student(name, args.image_size, device)
    single = make_batches(base, args.steps, args.batch, 1, device)
    double = make_batches(base, args.steps, args.batch, 2, device)
    stored = TeacherSource(TeacherLayout(TEACHER_DIMS, TEACHER_SCALES))
    distill = LossConfig(**{"lambda": 1.0})
    precision = args.precision
    paths: dict[str, Callable[[], None]] = {
        "open_clip": OpenClipPath(copy.deepcopy(base), single, precision, device),
        "ours": OurPath(copy.deepcopy(base), single, precision, LossConfig(), None, device),
    }
    if "ours-online" in args.paths:
        members = [build_student("small", args.image_size, torch.device("cpu")) for _ in TEACHER_SCALES]
        teachers = TeacherEnsemble(members, TEACHER_SCALES, ["small"] * len(members)).to(device)
        online = TeacherSource(TeacherLayout(teachers.dims, TEACHER_SCALES), teachers)
        paths["ours-online"] = OurPath(copy.deepcopy(base), single, precision, distill, online, device)
    if "ours-stored" in args.paths:
        paths["ours-stored"] = OurPath(copy.deepcopy(base), single, precision, distill, stored, device)
    if "ours-eager" in args.paths:
        paths["ours-eager"] = OurPath(copy.deepcopy(base), single, precision, LossConfig(), None, device, False)
    if "ours-stored-eq3" in args.paths:
        paths["ours-stored-eq3"] = OurPath(copy.deepcopy(base), double, precision, distill, stored, device)
    speeds = measure(paths, args.rounds, args.steps * args.batch, device)
    medians = {path: statistics.median(values) for path, values in speeds.items()}
    result = {
        "model": name,
        "samples_per_s": speeds,
        "median_samples_per_s": medians,
        # Ratios are medians of per-round ratios: paths of one round ran back to back, under the same load.
        "ours_over_open_clip": paired_ratio(speeds["ours"], speeds["open_clip"]),
        "step_time_ours_over_open_clip": paired_ratio(speeds["open_clip"], speeds["ours"]),
        "step_time_over_plain": {
            path: paired_ratio(speeds["ours"], speeds[path]) for path in paths if path.startswith("ours-")
        },
    }
    ours = paths["ours"]
    assert isinstance(ours, OurPath)
    result["resolved"] = {
        "precision": ours.step.precision,
        "compile": ours.step.compile,
        "channels_last": ours.step.channels_last(ours.model),
        "optimizer": "fused" if ours.optimizer.defaults.get("fused") else "foreach/for-loop",
        "math_attention": ours.step.math_attention,
    }
    if device.type == "cuda":
        memory = peak_memory_gib(ours, device)
        flops = step_flops(ours, device)
        achieved = flops * medians["ours"] / args.batch
        result |= {
            "flops_per_step": flops,
            "achieved_tflops": achieved / 1e12,
            "mfu": achieved / (args.peak_tflops * 1e12) if args.peak_tflops else None,
            "peak_memory_gib": memory,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "MobileCLIP2-S0"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=4, help="steps per path per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="device peak at --precision (H100 SXM bf16: 989)"
    )
    parser.add_argument(
        "--paths",
        nargs="*",
        choices=EXTRA_PATHS,
        default=list(DISTILLATION_PATHS),
        help="paths to add beside open_clip and ours",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    report = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_before": os.getloadavg(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "models": [benchmark_model(name, args, device) for name in args.models],
        "load_average_after": os.getloadavg(),
    }
    out = args.out or RESULTS / f"train_step-{args.device}-{args.precision}-{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print_table(report)
    Console().print(f"written to {out}")


def print_table(report: dict) -> None:
    table = Table(
        title=f"train step, {report['device']}, {report['settings']['precision']}, batch {report['settings']['batch']}"
    )
    for column in ("model", "path", "samples/s (median)", "rounds", "ratio"):
        table.add_column(column)
    for model in report["models"]:
        for path, median in model["median_samples_per_s"].items():
            rounds = " ".join(f"{value:.1f}" for value in model["samples_per_s"][path])
            if path == "ours":
                ratio = f"{model['ours_over_open_clip']:.2f}x open_clip"
            elif path.startswith("ours-"):
                ratio = f"step {model['step_time_over_plain'][path]:.2f}x plain"
            else:
                ratio = ""
            table.add_row(model["model"], path, f"{median:.1f}", rounds, ratio)
        if "mfu" in model:
            mfu = "n/a" if model["mfu"] is None else f"{100 * model['mfu']:.1f}%"
            table.add_row(model["model"], "MFU / peak mem", mfu, f"{model['peak_memory_gib']:.2f} GiB", "")
    Console().print(table)
    Console().print(f"load average before {report['load_average_before']}, after {report['load_average_after']}")


if __name__ == "__main__":
    main()
