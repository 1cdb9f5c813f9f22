"""Which waiting replicate a free slot gets: the longest first, and trials asked ahead only where the sampler's
draws ignore results (random, grid); a history-based sampler (TPE) sees every result before its next ask."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console
from train_helpers import fast_config, optuna_study, write_study_yaml

from ablate.ablations.scheduler import launch
from ablate.ablations.work import Group, PendingReplicates, Replicate

pytestmark = pytest.mark.slow


def replicates_of(lengths: dict[str, int]) -> dict[str, Replicate]:
    """One single-seed group per label, `samples` long."""
    made = {}
    for label, samples in lengths.items():
        group = Group(label, {}, None, None, samples=samples)
        made[label] = Replicate(group, 0, Path(label))
        group.replicates.append(made[label])
    return made


def test_the_longest_waiting_replicate_goes_first_ties_in_arrival_order() -> None:
    made = replicates_of({"a": 64, "b": 640, "c": 64, "d": 640})
    pending = PendingReplicates()
    pending.extend(made.values())
    assert [pending.take().group.label for _ in range(4)] == ["b", "d", "a", "c"]
    assert len(pending) == 0


def test_a_retried_replicate_goes_before_longer_ones_and_dropped_ones_never_go() -> None:
    made = replicates_of({"short": 10, "long": 1000, "dropped": 5000})
    pending = PendingReplicates()
    pending.extend([made["long"], made["dropped"]])
    pending.retry(made["short"])
    pending.remove(made["dropped"])
    assert [pending.take().group.label for _ in range(len(pending))] == ["short", "long"]


def start_order(folder: Path, shapes_root: Path, sampler: str) -> list[int]:
    """Launch two trials of 2 and 6 steps (asked in that order) on one slot: the trial numbers as they started."""
    base = fast_config(folder, shapes_root, {"optim.warmup_steps": 1, "train.eval_every": 6})
    del base["run_dir"], base["tracking"]
    study = {
        "name": f"order-{sampler}",
        "base": base,
        "search_space": {"train.steps": {"type": "categorical", "choices": [2, 6]}},
        "sampler": {"name": sampler, "seed": 10},  # TPE draws 2 then 6 with it (random for its first 10 trials)
        "pruner": {"name": "none"},
        "budget": {"trials": 2, "parallel": 1},
        "executor": {"kind": "debug", "threads_per_trial": 1, "retries": 0},
    }
    path = write_study_yaml(folder, study)
    output = io.StringIO()
    result = launch(path, Console(file=output, width=300))
    assert [outcome.state for outcome in result.outcomes] == ["complete", "complete"]
    steps = {trial.number: trial.params["train.steps"] for trial in optuna_study(path).trials}
    assert steps == {0: 2, 1: 6}, "the test needs the short trial asked first"
    return [int(number) for number in re.findall(r"trial (\d+) seed \d+ started", output.getvalue())]


def test_a_grid_starts_its_longer_trial_first(tmp_path: Path, shapes_root: Path) -> None:
    assert start_order(tmp_path, shapes_root, "grid") == [1, 0]  # (random sampling asks ahead the same way)


def test_a_history_based_sampler_is_asked_after_each_result(tmp_path: Path, shapes_root: Path) -> None:
    assert start_order(tmp_path, shapes_root, "tpe") == [0, 1]
    first, second = optuna_study(tmp_path / "study.yaml").trials
    assert second.datetime_start >= first.datetime_complete
