"""Full-state checkpoints: model, optimizer, RNG streams, the fp16 loss scaler and the step (which is also the
data position, since the batch order is a pure function of seed and step, and the LR schedule a pure function of
the step). The loss scaler's scale and growth tracker are saved because a resumed fp16 run that restarted at the
initial scale would overflow and skip steps again while it backs off, which the uninterrupted run did not.

Files are written to a temporary name and renamed, so a job killed mid-write never leaves a truncated
"latest" checkpoint; they are loaded with `weights_only=True` so a checkpoint can never execute code.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # the models' weight readers import this module: it must not pull in compression
    from ablate.core.training.ema import WeightAverage

CHECKPOINT_PATTERN = re.compile(r"step_(\d+)\.pt$")


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


def capture_rng() -> dict:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": random.getstate(),
        # Hard-concrete noise and dropout on a GPU draw from its own generators; a CPU-only resume leaves them be.
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda") or []  # absent in checkpoints written before GPU generators were saved
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


def list_checkpoints(directory: Path) -> list[Checkpoint]:
    found = []
    for path in directory.glob("step_*.pt"):
        match = CHECKPOINT_PATTERN.search(path.name)
        if match:
            found.append(Checkpoint(int(match.group(1)), path))
    return sorted(found, key=lambda checkpoint: checkpoint.step)


def latest_checkpoint(directory: Path) -> Checkpoint | None:
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(
    directory: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    keep: int,
    compute_seconds: float,
    extra: dict | None = None,
    scaler: torch.amp.GradScaler | None = None,
    ema: WeightAverage | None = None,
) -> Path:
    """`compute_seconds`: wall time trained so far over all attempts, so accounting survives resumes.
    `extra`: state that must be restored before the model can be (e.g. the architecture after pruning).
    `scaler`: the fp16 GradScaler, if the run has one. `ema`: the weight average, if the run keeps one (saved
    as `ema`, which readers of a run's weights prefer: it is the model the run evaluated)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{step:08d}.pt"
    temporary = path.with_suffix(".pt.tmp")
    state = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": capture_rng(),
        "compute_seconds": float(compute_seconds),
        "extra": extra or {},
    }
    if scaler is not None:
        state["grad_scaler"] = scaler.state_dict()
    if ema is not None:
        state["ema"] = ema.state_dict()
    torch.save(state, temporary)
    temporary.replace(path)
    for old in list_checkpoints(directory)[:-keep]:
        old.path.unlink(missing_ok=True)
    return path


def checkpoint_extra(path: Path) -> dict:
    """The `extra` state saved with a checkpoint ({} for checkpoints that have none)."""
    return torch.load(path, map_location="cpu", weights_only=True).get("extra", {})


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    ema: WeightAverage | None = None,
) -> tuple[int, float]:
    """Restore everything in place; return the step to continue from and the compute seconds spent so far.

    The scaler keeps its initial state when the checkpoint has none (written before scalers were saved, or by a
    run in another precision); a saved scaler state is ignored when this run has no scaler."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    if ema is not None:
        ema.load_state_dict(state.get("ema"), model)
    restore_rng(state["rng"])
    return int(state["step"]), float(state["compute_seconds"])
