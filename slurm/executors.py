"""Where a trial runs, behind one interface: a submitit executor configured from the study.

`local`: each trial is a separate process on this machine (submitit's LocalExecutor); the scheduler submits
only when a slot is free, because LocalExecutor itself starts everything at once (peers.md pain point 11).
`debug`: in-process (submitit's DebugExecutor), for tests and pdb.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import submitit

ExecutorKind = Literal["local", "debug"]


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_trial(requested: int | None, parallel: int) -> int:
    """An equal share of this machine's CPUs for each concurrently running trial."""
    return requested or max(1, available_cpus() // parallel)


def make_executor(kind: ExecutorKind, folder: Path, timeout_min: int) -> submitit.Executor:
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "debug":
        return submitit.DebugExecutor(folder=folder)
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=timeout_min)
    return executor
