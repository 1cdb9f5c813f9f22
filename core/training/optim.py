"""AdamW parameter groups and the warmup + cosine learning-rate schedule of open_clip's `cosine_lr`, over the
whole run or restarted in every compression stage (`optim.schedule_per_stage`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ablate.core.config.sections import OptimConfig, TrainConfig
from ablate.core.training.fast_paths import adamw_kernel_options, resolve_optimizer_implementation


def exclude_from_decay(name: str, parameter: nn.Parameter) -> bool:
    """open_clip's rule: gains, biases, norms and the temperature get no weight decay."""
    return parameter.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def build_optimizer(
    model: nn.Module, config: OptimConfig, extra_groups: Sequence[dict[str, Any]] = (), *, kernel: str = "auto"
) -> torch.optim.AdamW:
    """AdamW over the model's parameters plus `extra_groups` (e.g. compression masks and multipliers, which carry
    their own LR and `constant_lr`). `kernel` is `train.optimizer_kernel` (auto: fused where supported); every
    optimizer of a run, including one rebuilt after pruning, is built here so that it applies to all."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if exclude_from_decay(name, parameter) else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        *extra_groups,
    ]
    implementation = resolve_optimizer_implementation(kernel, model.parameters())
    options = adamw_kernel_options(implementation)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps, **options)


def learning_rate(step: int, total_steps: int, config: OptimConfig) -> float:
    """Linear warmup to `lr` (step+1 as open_clip), then cosine to the floor (`min_lr`) at the end."""
    warmup, floor = config.warmup_for(total_steps), config.floor_lr
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def schedule_window(step: int, config: TrainConfig) -> tuple[int, int]:
    """(`step` within its LR schedule, that schedule's length): the whole run, or under `optim.schedule_per_stage:
    restart` the compression stage `step` falls in, each stage warming up and decaying on its own as TinyCLIP's
    stages, which are separate runs (papers.md §2.3). A pure function of the step: resumes stay exact."""
    compression = config.compression
    if compression is None or config.optim.schedule_per_stage == "continuous":
        return step, config.train.steps
    plan = compression.stage_at(step)
    return step - plan.start_step, plan.end_step - plan.start_step


def run_learning_rate(step: int, config: TrainConfig) -> float:
    """The model's LR at global `step` of the run `config` describes (stages and `schedule_per_stage` included)."""
    return learning_rate(*schedule_window(step, config), config.optim)


def schedule_tag(config: TrainConfig) -> str:
    """Which LR schedule a run used, for its tracking record: `restart` or `continuous` over compression stages,
    `single` for a run without compression (the two are the same there)."""
    return config.optim.schedule_per_stage if config.compression is not None else "single"


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Schedule the model's groups; groups flagged `constant_lr` keep theirs (TinyCLIP's masks and λs)."""
    for group in optimizer.param_groups:
        if not group.get("constant_lr", False):
            group["lr"] = lr
