"""Entry points of the processes that tests/test_distributed.py spawns (a module of its own, so `spawn` can
import them by name in the children)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ablate.core.config.sections import LossConfig, TrainConfig, TrainLoopConfig
from ablate.core.data.reinforcement_store import TeacherLayout
from ablate.core.models.factory import create_model
from ablate.core.training.distributed import ProcessGroup
from ablate.core.training.fast_paths import TrainStep
from ablate.core.training.objective import TeacherSource, compute_loss

CPU = torch.device("cpu")
LAYOUT = TeacherLayout([4, 4], [100.0, 50.0])
CASES: dict[str, tuple[LossConfig, int]] = {  # name: (loss, accumulation steps)
    "clip": (LossConfig(), 1),
    "mobileclip_kd": (LossConfig(**{"lambda": 0.5}), 1),
    "tinyclip_affinity": (LossConfig(**{"lambda": 1.0, "distill": "tinyclip"}), 1),
    "mobileclip_kd_cached_accumulation": (LossConfig(**{"lambda": 0.5}), 2),
}


def join(rank: int, world_size: int, port: int) -> ProcessGroup:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    os.environ.update(LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    return ProcessGroup.from_environment(CPU)


def step_terms_and_gradients(
    batch: dict[str, torch.Tensor], loss: LossConfig, accumulation: int, group: ProcessGroup
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One TrainStep (SGD with lr 0, so the weights stay put) of a seeded tiny model on this rank's rows; the
    terms are averaged over ranks, the gradients already are."""
    torch.manual_seed(0)
    model = create_model("tiny")
    step = TrainStep(TrainLoopConfig(precision="fp32", accumulation_steps=accumulation), CPU, None, group)
    rows = {name: tensor[group.rows(tensor.shape[0])] for name, tensor in batch.items()}
    teachers = TeacherSource(LAYOUT)
    terms = step(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        rows,
        lambda m, b: compute_loss(m, b, loss, teachers, None, group),
    )
    terms = {name: group.mean(value).item() for name, value in terms.items()}
    return terms, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def loss_worker(rank: int, world_size: int, port: int, batch: dict[str, torch.Tensor], out: str) -> None:
    group = join(rank, world_size, port)
    results = {name: step_terms_and_gradients(batch, loss, steps, group) for name, (loss, steps) in CASES.items()}
    if group.is_main:
        torch.save(results, out)
    group.close()


def train_worker(rank: int, world_size: int, port: int, config: dict, out: str) -> None:
    from ablate.core.training.trainer import train

    join(rank, world_size, port)
    result = train(TrainConfig.model_validate(config))
    torch.save(
        {"metrics": result.metrics, "history": result.history, "steps": result.steps}, Path(out) / f"rank{rank}.pt"
    )


def fault_worker(rank: int, port: int, fault: str, timeout_s: float, out: str) -> None:
    """Rank 1 does one all-reduce and then dies (`dead`) or stops answering (`stuck`); rank 0 keeps reducing and
    records how long its failing collective waited and what it raised."""
    import time

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0")
    torch.set_num_threads(1)
    group = ProcessGroup.from_environment(CPU, timeout_s)
    group.mean(torch.ones(3))
    if rank == 1:
        if fault == "dead":
            os._exit(1)
        time.sleep(3600)
    started = time.monotonic()
    try:
        for _ in range(3):
            group.mean(torch.ones(3))
        outcome = "no error"
    except Exception as err:  # the backend's error type differs between gloo versions: record whichever
        outcome = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    Path(out).write_text(f"{time.monotonic() - started:.2f}\n{outcome}")
    os._exit(0)  # the group cannot be torn down cleanly with a dead peer
