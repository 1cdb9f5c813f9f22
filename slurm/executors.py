"""Where a trial runs, behind one interface over submitit: submit callables, poll for the ones that ended, cancel.

`local`: each trial is a separate process on this machine, forked from a warm fork server (warm_pool.py: torch,
timm, open_clip, mlflow and the study's shard indexes already loaded); multi-process trials use submitit's
LocalExecutor. The scheduler submits only when a slot is free (peers.md pain point 11).
`debug`: in-process (submitit's DebugExecutor), for tests and pdb.
`slurm`: sbatch through submitit's SlurmExecutor; several trials submitted together become one job array.
Job states come from one `sacct` call per poll for all jobs (accounting.py), which also says what each job
used; a job that ended without a result (cancelled, killed, node failure, time limit) is reported at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from ablate.slurm.accounting import NOT_RETRIED_STATES, Accounting, Usage
from ablate.slurm.warm_pool import WarmPool


@dataclass
class JobEnd:
    """How a job ended: its result, or an error and whether running it again could help."""

    result: dict[str, Any] | None = None
    error: str | None = None
    retriable: bool = True
    usage: Usage | None = None  # SLURM accounting; None elsewhere


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_trial(requested: int | None, parallel: int, processes: int = 1) -> int:
    """Threads of each process of a trial: an equal share of this machine's CPUs for every process of the
    concurrently running trials."""
    return requested or max(1, available_cpus() // (parallel * processes))


class LocalTrialExecutor:
    """Processes on this machine (or in this process, for `debug`)."""

    def __init__(self, executor: submitit.Executor | WarmPool) -> None:
        self.executor = executor

    def submit(self, functions: Sequence[Callable[[], Any]]) -> list[submitit.Job]:
        return [self.executor.submit(function) for function in functions]

    def poll(self, jobs: Sequence[submitit.Job]) -> dict[str, JobEnd]:
        ended = {}
        for job in jobs:
            if not job.done():
                continue
            try:
                ended[job.job_id] = JobEnd(result=_rank_zero(job).result())
            except Exception as err:  # the trial raised, or its process died
                ended[job.job_id] = JobEnd(error=str(err))
        return ended

    def cancel(self, job: submitit.Job) -> None:
        job.cancel(check=False)

    def wait(self, jobs: Sequence[submitit.Job], timeout_s: float) -> None:
        """Until one of `jobs` may have ended, at most `timeout_s`: warm jobs wake the launcher when their process
        ends; submitit's local jobs are polled; in-process (debug) jobs have already ended."""
        if isinstance(self.executor, WarmPool):
            self.executor.wait(jobs, timeout_s)
        elif not isinstance(self.executor, submitit.DebugExecutor):
            time.sleep(timeout_s)

    def close(self) -> None:
        if isinstance(self.executor, WarmPool):
            self.executor.close()


class SlurmTrialExecutor:
    """sbatch via submitit; states and usage from one batched sacct query per poll."""

    def __init__(self, folder: Path, timeout_min: int, slurm: dict[str, Any], nodes: int, tasks_per_node: int) -> None:
        self.executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=slurm["max_requeues"])
        parameters: dict[str, Any] = {
            "job_name": "ablate-trial",
            "time": timeout_min,
            "nodes": nodes,
            "ntasks_per_node": tasks_per_node,
            "cpus_per_task": slurm["cpus_per_task"],
            "array_parallelism": slurm["array_parallelism"],
            "signal_delay_s": slurm["signal_delay_s"],
            "additional_parameters": dict(slurm.get("additional_parameters") or {}),
        }
        if slurm.get("gpus_per_node"):
            parameters["gpus_per_node"] = slurm["gpus_per_node"]
        if slurm.get("mem_gb"):
            parameters["mem"] = f"{int(slurm['mem_gb'] * 1024)}MB"
        for key in ("partition", "account", "qos", "constraint"):
            if slurm.get(key):
                parameters[key] = slurm[key]
        self.executor.update_parameters(**parameters)
        self.accounting = Accounting()

    def submit(self, functions: Sequence[Callable[[], Any]]) -> list[submitit.Job]:
        """One sbatch call: a single job, or an array (`--array=0-N%array_parallelism`) for several."""
        if len(functions) == 1:
            return [self.executor.submit(functions[0])]
        with self.executor.batch():
            jobs = [self.executor.submit(function) for function in functions]
        return jobs

    def poll(self, jobs: Sequence[submitit.Job]) -> dict[str, JobEnd]:
        records = self.accounting.query(job.job_id for job in jobs)
        ended = {}
        for job in jobs:
            record = records.get(job.job_id)
            if record is None or record.active:
                continue
            retriable = record.state not in NOT_RETRIED_STATES
            if _rank_zero(job).paths.result_pickle.exists():
                try:
                    ended[job.job_id] = JobEnd(result=_rank_zero(job).result(), usage=record.usage)
                except Exception as err:  # the trial raised: submitit pickled its traceback
                    ended[job.job_id] = JobEnd(error=str(err), retriable=retriable, usage=record.usage)
                continue
            error = (
                f"SLURM job {job.job_id} ended {record.state} (exit code {record.exit_code}) without a result"
                f"{_log_tail(job)}"
            )
            ended[job.job_id] = JobEnd(error=error, retriable=retriable, usage=record.usage)
        return ended

    def cancel(self, job: submitit.Job) -> None:
        job.cancel(check=False)

    def wait(self, jobs: Sequence[submitit.Job], timeout_s: float) -> None:
        """One sacct query per `timeout_s` (executor.poll_seconds) keeps the accounting database's load light."""
        time.sleep(timeout_s)

    def close(self) -> None:
        """Submitted jobs belong to SLURM: nothing to stop."""


def _rank_zero(job: submitit.Job) -> submitit.Job:
    """The task whose result is the trial's: a multi-process trial is one job of several tasks, and only rank 0
    reports (the others return nothing)."""
    return job.task(0) if job.num_tasks > 1 else job


def _log_tail(job: submitit.Job, lines: int = 10) -> str:
    for path in (job.paths.stderr, job.paths.stdout):
        if path.is_file():
            text = path.read_text(errors="replace").strip().splitlines()[-lines:]
            if text:
                return f"; end of {path.name}:\n" + "\n".join(text)
    return ""


TrialExecutor = LocalTrialExecutor | SlurmTrialExecutor


def make_executor(
    kind: str,
    folder: Path,
    timeout_min: int,
    slurm: dict[str, Any] | None = None,
    nodes: int = 1,
    tasks_per_node: int = 1,
    warm_up: Callable[[], None] | None = None,
) -> TrialExecutor:
    """`nodes` x `tasks_per_node` processes per trial; more than one makes each trial a torch.distributed job.
    `warm_up`: what the local fork server runs once before forking trials (imports, indexing the study's data)."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "debug":
        return LocalTrialExecutor(submitit.DebugExecutor(folder=folder))
    if kind == "slurm":
        return SlurmTrialExecutor(folder, timeout_min, slurm or {}, nodes, tasks_per_node)
    if nodes * tasks_per_node == 1:
        return LocalTrialExecutor(WarmPool(folder, timeout_min, warm_up))
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=timeout_min, tasks_per_node=tasks_per_node)
    return LocalTrialExecutor(executor)
