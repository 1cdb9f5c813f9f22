"""Process-level settings a run needs before it builds anything: threads, seeds, device."""

from __future__ import annotations

import os
import random
import signal

import numpy as np
import torch

from ablate.core.config.base import ConfigError


def resolve_threads(requested: int | None) -> int:
    """Explicit setting, else the SLURM allocation, else the CPUs this process may run on.

    Without cgroups SLURM does not bind CPUs (environment.md), so torch would otherwise start one thread per
    core of the node and oversubscribe it when several trials share a machine.
    """
    if requested:
        return requested
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def configure_threads(requested: int | None) -> int:
    threads = resolve_threads(requested)
    torch.set_num_threads(threads)
    return threads


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is available")
    return torch.device(requested)


def ignore_job_signals(_worker_id: int) -> None:
    """`worker_init_fn` of training loaders. Forked workers inherit the trainer's signal handlers, submitit's
    checkpoint-and-requeue on SIGUSR2 among them, and SLURM signals every process of the job before its time
    limit: each worker would then run `scontrol requeue` too (found by the time-limit requeue test, where the
    duplicates failed the job). Only the trainer checkpoints; workers ignore USR2 and die normally on TERM."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
