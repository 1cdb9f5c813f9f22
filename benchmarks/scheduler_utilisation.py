"""Slot utilisation of ablate's asynchronous scheduler versus a batch-synchronous one (Hydra's sweeper), and
per-trial orchestration overhead on the local executor. A benchmark, not a test: run it by hand.

Both schedulers run the same real trial jobs (tiny-model training runs of 5 or 80 steps, as trials differ when
they vary model size or steps) with the same slots:

- async: ablate's StudyScheduler (`ablate launch`: the longest waiting job first), whose local trials fork from a
  warm worker (slurm/warm_pool.py: imports and shard indexes done once);
- batch: submit `parallel` jobs to submitit's LocalExecutor (a fresh process each), wait for the slowest,
  repeat (what hydra-optuna-sweeper does with n_jobs).

Utilisation = busy slot-seconds / (slots x makespan). Overhead = time from a slot being given a job to that job's
training loop starting (process start, imports, model and data), read from the job ledger and the run's progress
record (`progress.json`: `started`); the MLflow run opens during the first steps. Idle slot-seconds are split by
cause: before a slot's first job (the launcher's preparation), between jobs (noticing an end, telling Optuna,
asking and submitting the next), after a slot's last job (the other slots' last jobs still running: the workload's
imbalance, then the launcher's shutdown). The ceiling is the utilisation of the same jobs packed perfectly onto the
slots with no gap: whole jobs cannot always fill every slot to the end. Both arms find the MLflow store created (a
study's first launch creates it once, in seconds) and use the executor's default poll interval.

    .venv/bin/python benchmarks/scheduler_utilisation.py [--trials 8] [--parallel 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import optuna
import submitit
import yaml
from mlflow.tracking import MlflowClient
from rich.console import Console

from ablate.ablations.scheduler import launch, prepare
from ablate.ablations.trial import JOB_RECORD, TrialJob
from ablate.ablations.work import build_group, replicate_tree
from ablate.core.config.loading import validate_train_config
from ablate.core.data.shapes import generate_shapes
from ablate.core.training.progress import read_progress
from ablate.core.training.tracking import ensure_tracking_store

SHORT, LONG = 5, 80  # each trial is short or long (training steps), drawn at random


def study_file(folder: Path, data: Path, trials: int, parallel: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    base = {
        "data": {"root": str(data)},
        "optim": {"warmup_steps": 2},
        "train": {"steps": LONG, "batch_size": 32, "eval_every": LONG, "checkpoint_every": LONG},
        "eval": {"max_samples": 64},
    }
    study = {
        "name": "utilisation",
        "base": base,
        "search_space": {"train.steps": {"type": "categorical", "choices": [SHORT, LONG]}},
        "sampler": {"name": "random", "seed": seed},
        "pruner": {"name": "none"},
        "budget": {"trials": trials, "parallel": parallel},
        "executor": {"kind": "local", "threads_per_trial": 1, "retries": 0},  # the default poll interval
        "storage": {"mlflow": f"sqlite:///{folder / 'mlflow.db'}"},
        "runs_root": str(folder / "runs"),
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def run_intervals(folder: Path, tracking_uri: str) -> list[tuple[float, float, float]]:
    """(submitted to a slot, training loop entered, run ended) per replicate, in seconds since the epoch: the
    job ledger, the run's progress record and its MLflow run's end."""
    client = MlflowClient(tracking_uri=tracking_uri)
    intervals = []
    for record in sorted(folder.glob("runs/*/trials/*/seed-*/" + JOB_RECORD)):
        submitted = json.loads(record.read_text())["submitted"]
        started = read_progress(record.parent)["started"]
        run_id = json.loads((record.parent / "mlflow_run.json").read_text())["run_id"]
        intervals.append((submitted, started, client.get_run(run_id).info.end_time / 1000))
    return intervals


def idle_breakdown(intervals: list[tuple[float, float, float]], slots: int, began: float, ended: float) -> dict:
    """Where the idle slot-seconds went: before a slot's first job (launcher preparation), between its jobs (the
    scheduler noticing an end and submitting the next), after its last job (waiting for the other slots' last
    jobs, then the launcher's shutdown). A job takes the slot freed earliest, as the scheduler gives them."""
    free = [began] * slots
    first = [True] * slots
    idle = {"before_first_s": 0.0, "between_s": 0.0, "after_last_s": 0.0}
    for submitted, _, end in sorted(intervals):
        slot = min(range(slots), key=free.__getitem__)
        idle["before_first_s" if first[slot] else "between_s"] += submitted - free[slot]
        free[slot], first[slot] = end, False
    idle["after_last_s"] = sum(ended - end for end in free)
    idle["launcher_shutdown_s"] = ended - max(free)  # part of after_last, on every slot
    return idle


def best_packing_makespan(durations: list[float], slots: int) -> float:
    """The shortest makespan any assignment of these whole jobs to the slots reaches (exhaustive: the benchmark's
    workloads are small). Jobs do not split across slots, so a draw of five long jobs on two slots leaves one
    slot idle through a long job whatever the order: utilisation's ceiling for that draw."""
    if slots ** len(durations) > 4_000_000:  # too many to try: the bound every packing respects
        return max(max(durations), sum(durations) / slots)
    best = math.inf
    for assignment in itertools.product(range(slots), repeat=len(durations) - 1):
        loads = [durations[0]] + [0.0] * (slots - 1)  # the first job's slot is any slot: fix it
        for slot, duration in zip(assignment, durations[1:], strict=True):
            loads[slot] += duration
        best = min(best, max(loads))
    return best


def attainable_ceiling(intervals: list[tuple[float, float, float]], slots: int) -> float:
    """The utilisation ceiling once the start-up is charged where it falls: every slot's first job waits for the
    trial worker's imports (the first `slots` jobs' overhead), later jobs only for the median later overhead.
    `utilisation_ceiling` charges each job its own measured overhead, so it may pack a first job's start-up on
    the same slot as another first job, which no schedule can do."""
    ordered = sorted(intervals)
    overheads = [start - submitted for submitted, start, _ in ordered]
    later = statistics.median(overheads[slots:]) if len(ordered) > slots else 0.0
    first_extra = max(0.0, statistics.median(overheads[:slots]) - later)
    jobs = [end - start + later for _, start, end in ordered]
    makespan = best_packing_makespan(jobs, slots) + first_extra
    return (sum(jobs) + slots * first_extra) / (slots * makespan)


def measure(folder: Path, tracking_uri: str, slots: int, began: float, ended: float) -> dict[str, float]:
    """Utilisation (a slot is busy from submission to its run's end), the utilisation the same jobs would reach
    packed perfectly with no gap, and the submit-to-run-start overhead."""
    intervals = run_intervals(folder, tracking_uri)
    durations = [end - submitted for submitted, _, end in intervals]
    overhead = statistics.median(start - submitted for submitted, start, _ in intervals)
    return {
        "makespan_s": ended - began,
        "utilisation": sum(durations) / (slots * (ended - began)),
        "utilisation_ceiling": sum(durations) / (slots * best_packing_makespan(durations, slots)),
        "utilisation_ceiling_with_start_up": attainable_ceiling(intervals, slots),
        "overhead_median_s": overhead,
        "idle_slot_seconds": idle_breakdown(intervals, slots, began, ended),
    }


def run_async(folder: Path, data: Path, trials: int, parallel: int, seed: int) -> dict[str, float]:
    path = study_file(folder, data, trials, parallel, seed)
    spec, _ = prepare(path)
    ensure_tracking_store(spec.storage.mlflow)  # outside the clock in both arms: a study's first launch only
    started = time.time()
    launch(path, Console(quiet=True))
    return measure(folder, spec.storage.mlflow, parallel, started, time.time())


def run_batch_synchronous(folder: Path, data: Path, steps: list[int], parallel: int) -> dict[str, float]:
    """The same jobs, launched `parallel` at a time, each batch waiting for its slowest job."""
    path = study_file(folder, data, len(steps), parallel)
    spec, base = prepare(path)
    ensure_tracking_store(spec.storage.mlflow)  # as the launcher does: concurrent first use corrupts sqlite
    executor = submitit.LocalExecutor(folder=folder / "jobs")
    executor.update_parameters(timeout_min=60)
    started = time.time()
    for first in range(0, len(steps), parallel):
        jobs = []
        for number in range(first, min(first + parallel, len(steps))):
            group = build_group(
                spec,
                f"trial {number}",
                {"train.steps": steps[number]},
                None,
                None,
                spec.run_folder / "trials" / f"{number:05d}",
            )
            tree = replicate_tree(spec, base, group.replicates[0], "", 1)
            config = validate_train_config(tree, "benchmark")
            job = TrialJob(
                spec.model_dump(mode="json"), None, config.model_dump(mode="json", by_alias=True), False, time.time()
            )
            jobs.append(executor.submit(job))
        for job in jobs:
            job.result()
    return measure(folder, spec.storage.mlflow, parallel, started, time.time())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="sampler seed: which trials are short or long")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        data = root / "data"
        generate_shapes(data, train=1024, val=128, seed=0, samples_per_shard=512)
        async_result = run_async(root / "async", data, args.trials, args.parallel, args.seed)
        spec, _ = prepare(root / "async" / "study.yaml")
        study = optuna.load_study(study_name=spec.name, storage=spec.open_optuna_storage())
        steps = [trial.params["train.steps"] for trial in study.trials]
        batch_result = run_batch_synchronous(root / "batch", data, steps, args.parallel)
    print(
        json.dumps(
            {
                "trial_steps": steps,
                "async": async_result,
                "batch_synchronous": batch_result,
                "utilisation_ratio_async_over_batch": async_result["utilisation"] / batch_result["utilisation"],
                "makespan_ratio_batch_over_async": batch_result["makespan_s"] / async_result["makespan_s"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
