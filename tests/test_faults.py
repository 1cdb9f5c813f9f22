"""Failures lose nothing: a killed trial is retried from its checkpoint, a killed launcher is resumed without
duplicates, and a poor trial is pruned from inside its job while the study completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from rich.console import Console
from train_helpers import fast_config, optuna_study, trial_runs, write_study_yaml

from ablate.ablations.control import live_job
from ablate.ablations.scheduler import LaunchResult, launch
from ablate.ablations.trial import JOB_RECORD, end_cancelled_run
from ablate.core.training.checkpoint import latest_checkpoint

pytestmark = pytest.mark.slow


def write_study(folder: Path, shapes_root: Path, **changes: object) -> Path:
    base = fast_config(folder, shapes_root, {"train.steps": 30, "train.eval_every": 15, "train.checkpoint_every": 5})
    del base["run_dir"], base["tracking"]
    study = {
        "name": "faults",
        "base": base,
        "search_space": {"data.captions": {"type": "categorical", "choices": ["alt", "syn"]}},
        "sampler": {"name": "grid"},
        "pruner": {"name": "none"},
        "budget": {"trials": 1, "parallel": 1},
        "executor": {"kind": "local", "threads_per_trial": 2, "poll_seconds": 0.3, "timeout_min": 10, "retries": 1},
        **changes,
    }
    return write_study_yaml(folder, study)


def wait_for_checkpoint(run_dir: Path, timeout: float = 300) -> int:
    """The pid of the job training in `run_dir`, once it has written its first checkpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / JOB_RECORD).is_file() and latest_checkpoint(run_dir / "checkpoints") is not None:
            return int(yaml.safe_load((run_dir / JOB_RECORD).read_text())["pid"])
        time.sleep(0.05)
    raise TimeoutError(f"no checkpoint in {run_dir}")


def test_killed_trial_is_retried_from_its_checkpoint(tmp_path: Path, shapes_root: Path) -> None:
    path = write_study(tmp_path, shapes_root)
    outcome: list[LaunchResult] = []
    launcher = threading.Thread(target=lambda: outcome.append(launch(path, Console(quiet=True))))
    launcher.start()
    run_dir = tmp_path / "runs" / "faults" / "trials" / "00000" / "seed-0"
    os.kill(wait_for_checkpoint(run_dir), signal.SIGKILL)
    launcher.join(timeout=600)
    assert outcome and outcome[0].outcomes[0].state == "complete"
    (trial,) = optuna_study(path).get_trials(states=(TrialState.COMPLETE,))
    (run,) = trial_runs(path)  # the retry continued the same MLflow run
    assert run.data.tags["ablate.resumed"] == "true"
    assert run.info.status == "FINISHED" and run.data.tags["ablate.state"] == "finished"
    assert trial.user_attrs["mlflow_run_ids"] == [run.info.run_id]


def test_killed_launcher_is_resumed_without_duplicates(tmp_path: Path, shapes_root: Path) -> None:
    path = write_study(tmp_path, shapes_root, budget={"trials": 2, "parallel": 1})
    first = subprocess.Popen(
        [sys.executable, "-m", "ablate", "launch", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_checkpoint(tmp_path / "runs" / "faults" / "trials" / "00000" / "seed-0")
    first.send_signal(signal.SIGKILL)
    first.wait()
    # the grid's second point was asked ahead (the launcher picks the longest waiting run): RUNNING, never started
    assert [t.state for t in optuna_study(path).trials] == [TrialState.RUNNING, TrialState.RUNNING]
    assert not (tmp_path / "runs" / "faults" / "trials" / "00001").exists()

    result = launch(path, Console(quiet=True))
    assert [o.label for o in result.outcomes] == ["trial 0", "trial 1"]
    study = optuna_study(path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    runs = trial_runs(path)
    assert sorted(run.data.tags["ablate.trial_number"] for run in runs) == ["0", "1"]
    resumed = next(run for run in runs if run.data.tags["ablate.trial_number"] == "0")
    assert resumed.data.tags.get("ablate.resumed") == "true"


def test_baseline_replicates_and_pruning_from_inside_jobs(tmp_path: Path, shapes_root: Path) -> None:
    path = write_study(
        tmp_path,
        shapes_root,
        search_space={"optim.lr": {"type": "categorical", "choices": [3e-3, 1e-7]}},
        replicates={"seeds": [0, 1, 2]},
        baselines={"default": {"overrides": {}}},
        pruner={"name": "median", "startup_trials": 1, "warmup_steps": 0},
        budget={"trials": 2, "parallel": 1},
        executor={"kind": "debug", "threads_per_trial": 2, "retries": 0},
    )
    result = launch(path, Console(quiet=True))
    assert [(o.label, o.state) for o in result.outcomes] == [
        ("baseline default", "complete"),
        ("trial 0", "complete"),
        ("trial 1", "pruned"),
    ]
    good, poor = optuna_study(path).trials
    assert good.state == TrialState.COMPLETE and poor.state == TrialState.PRUNED
    assert len(good.user_attrs["mlflow_run_ids"]) == 3
    runs = trial_runs(path)
    assert len([r for r in runs if r.data.tags.get("ablate.baseline") == "default"]) == 3
    pruned = [r for r in runs if r.data.tags.get("ablate.trial_number") == "1"]
    assert [r.data.tags["ablate.state"] for r in pruned] == ["pruned"]  # its other seeds never started


def test_cancel_stops_a_running_study_through_its_launcher(tmp_path: Path, shapes_root: Path) -> None:
    path = write_study(tmp_path, shapes_root, overrides={"train.steps": 2000, "train.checkpoint_every": 5})
    outcome: list[LaunchResult] = []
    launcher = threading.Thread(target=lambda: outcome.append(launch(path, Console(quiet=True))))
    launcher.start()
    wait_for_checkpoint(tmp_path / "runs" / "faults" / "trials" / "00000" / "seed-0")
    done = subprocess.run(
        [sys.executable, "-m", "ablate", "cancel", "faults", "--runs-root", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "asked the running launcher" in done.stdout
    launcher.join(timeout=120)
    assert [(o.label, o.state) for o in outcome[0].outcomes] == [("trial 0", "failed")]
    trial = optuna_study(path).trials[0]
    assert trial.state == TrialState.FAIL and "cancelled" in trial.user_attrs["error"]
    assert not live_job(tmp_path / "runs" / "faults" / "trials" / "00000" / "seed-0")  # its process is gone


def test_a_cancelled_replicates_run_ends_killed_and_a_finished_one_is_left_alone(tmp_path: Path) -> None:
    """A job the launcher kills (its group already decided) cannot end its own MLflow run: the launcher does."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("cancel")
    statuses = {}
    for name, finished in (("running", False), ("finished", True)):
        run_id = client.create_run(experiment).info.run_id
        if finished:
            client.set_terminated(run_id, status="FINISHED")
        (tmp_path / name).mkdir()
        (tmp_path / name / "mlflow_run.json").write_text(json.dumps({"run_id": run_id, "tracking_uri": uri}))
        end_cancelled_run(tmp_path / name, uri)
        run = client.get_run(run_id)
        statuses[name] = (run.info.status, run.data.tags.get("ablate.state"))
    assert statuses == {"running": ("KILLED", "cancelled"), "finished": ("FINISHED", None)}
