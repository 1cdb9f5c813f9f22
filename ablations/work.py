"""Units of work of a study: a configuration (an Optuna trial or a named baseline) runs once per seed.

Each replicate has its own run folder (checkpoints, MLflow run id, `result.json`), so whether it still has
to run is read from disk, and a rerun of a failed or interrupted replicate resumes its checkpoint and
continues its MLflow run instead of starting a duplicate.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from ablate.ablations.spec import StudySpec
from ablate.ablations.trial import config_hash, read_result
from ablate.core.config.loading import apply_overrides

AGGREGATES = {"mean": statistics.fmean, "median": statistics.median, "min": min, "max": max}


@dataclass(eq=False)  # identity semantics: a replicate and its group refer to each other
class Replicate:
    group: Group
    seed: int
    run_dir: Path
    attempts: int = 0
    result: dict[str, Any] | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.group.label} seed {self.seed}"

    @property
    def finished(self) -> bool:
        return self.result is not None or self.error is not None


@dataclass(eq=False)
class Group:
    """One configuration: its parameters, its Optuna trial (None for a baseline) and its replicates."""

    label: str
    params: dict[str, Any]
    trial: optuna.Trial | None
    baseline: str | None
    replicates: list[Replicate] = field(default_factory=list)
    samples: int = 0  # what one replicate trains on (steps x batch): the launcher's estimate of its run time

    @property
    def pruned(self) -> bool:
        return any(r.result and r.result["pruned"] for r in self.replicates)

    @property
    def failure(self) -> str | None:
        return next((f"{r.label}: {r.error}" for r in self.replicates if r.error), None)

    @property
    def complete(self) -> bool:
        return all(r.finished for r in self.replicates) or self.pruned or self.failure is not None

    def objective_values(self, spec: StudySpec) -> list[float]:
        """Each objective aggregated over the replicates; KeyError names a metric no replicate logged."""
        aggregate = AGGREGATES[spec.replicates.aggregate]
        values = []
        for objective in spec.objectives:
            per_seed = [r.result["metrics"][objective.metric] for r in self.replicates if r.result]
            values.append(float(aggregate(per_seed)))
        return values


def build_group(
    spec: StudySpec,
    label: str,
    params: dict[str, Any],
    trial: optuna.Trial | None,
    baseline: str | None,
    folder: Path,
) -> Group:
    """A configuration with one replicate per seed; replicates that already have a result are marked done."""
    group = Group(label, params, trial, baseline)
    for seed in spec.replicates.seeds:
        run_dir = (folder / f"seed-{seed}").resolve()
        group.replicates.append(Replicate(group, seed, run_dir, result=read_result(run_dir)))
    return group


def training_samples(base: dict[str, Any], params: dict[str, Any]) -> int:
    """Steps x batch size of a configuration: a run's length, known before it starts, in the unit its time grows
    with. It does not weigh model size (a study varying `model.name` is ordered by length only)."""
    train = apply_overrides(base, params).get("train", {})
    return int(train.get("steps", 0)) * int(train.get("batch_size", 1))


class PendingReplicates:
    """Replicates waiting for a slot, handed out longest first (equal lengths: in the order they came).

    Longest-processing-time-first (Graham, 1969) keeps a study's end short: the runs left when the budget is
    spent are the short ones, so no slot idles through a long run started last. A retried replicate goes first:
    it was already running and resumes its checkpoint.
    """

    def __init__(self) -> None:
        self._retries: list[Replicate] = []
        self._queue: list[Replicate] = []

    def extend(self, replicates: Iterable[Replicate]) -> None:
        self._queue.extend(replicates)

    def retry(self, replicate: Replicate) -> None:
        self._retries.append(replicate)

    def take(self) -> Replicate:
        if self._retries:
            return self._retries.pop(0)
        longest = max(self._queue, key=lambda replicate: replicate.group.samples)  # max keeps the first of ties
        self._queue.remove(longest)
        return longest

    def remove(self, replicate: Replicate) -> None:
        for waiting in (self._retries, self._queue):
            if replicate in waiting:
                waiting.remove(replicate)

    def clear(self) -> None:
        self._retries.clear()
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._retries) + len(self._queue)


def replicate_tree(
    spec: StudySpec, base: dict[str, Any], replicate: Replicate, parent_run_id: str, threads: int | None
) -> dict[str, Any]:
    """The complete TrainConfig tree of one replicate: base + params + seed + where it runs and logs.

    `threads` None: the job takes its allocation's CPUs (SLURM_CPUS_PER_TASK), read where it runs.
    """
    group = replicate.group
    tags = {
        **base.get("tracking", {}).get("tags", {}),
        "ablate.study": spec.name,
        "ablate.role": "trial",
        "ablate.config_hash": config_hash({"baseline": group.baseline} if group.baseline else group.params),
        "ablate.seed": str(replicate.seed),
        "ablate.state": "running",
    }
    if group.trial is not None:
        tags["ablate.trial_number"] = str(group.trial.number)
    if group.baseline:
        tags["ablate.baseline"] = group.baseline
    return apply_overrides(
        apply_overrides(base, group.params),
        {
            "seed": replicate.seed,
            "run_dir": str(replicate.run_dir),
            "train.threads": threads,
            "train.progress": False,
            "tracking.uri": spec.storage.mlflow,
            "tracking.experiment": spec.name,
            "tracking.run_name": replicate.label,
            "tracking.parent_run_id": parent_run_id,
            "tracking.tags": tags,
        },
    )
