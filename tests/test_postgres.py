"""A study whose Optuna study and MLflow runs both live in a real PostgreSQL server (tests/postgres_fixtures.py):
trial jobs in other processes write to it, and `ablate status` and `ablate resume` read the study back from it."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from rich.console import Console
from train_helpers import fast_config, trial_runs, write_study_yaml
from typer.testing import CliRunner

from ablate.ablations.cli import app
from ablate.ablations.scheduler import launch

pytestmark = pytest.mark.slow
OBJECTIVE = "eval/zeroshot/mean_top1"


def test_study_on_postgres_completes_and_is_read_back(
    tmp_path: Path, shapes_root: Path, postgres_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow keeps a database store's artifacts in ./mlruns of the creating process
    optuna_url = postgres_server.create_database("optuna_study")
    mlflow_url = postgres_server.create_database("mlflow_runs")
    base = fast_config(tmp_path, shapes_root, {"train.steps": 4, "train.eval_every": 4, "train.batch_size": 16})
    base = base | {"optim": {"lr": 1e-3, "warmup_steps": 1}, "eval": base["eval"] | {"max_samples": 32}}
    del base["run_dir"], base["tracking"]
    path = write_study_yaml(
        tmp_path,
        {
            "name": "on-postgres",
            "base": base,
            "search_space": {"optim.lr": {"type": "categorical", "choices": [1e-3, 3e-3]}},
            "sampler": {"name": "grid"},
            "pruner": {"name": "none"},
            "budget": {"trials": 2, "parallel": 2},
            "executor": {"kind": "local", "threads_per_trial": 1, "poll_seconds": 0.5, "timeout_min": 5},
            "storage": {"optuna": optuna_url, "mlflow": mlflow_url},
        },
    )
    first = launch(path, Console(quiet=True))

    study = optuna.load_study(study_name="on-postgres", storage=optuna_url)
    assert [trial.state for trial in study.trials] == [TrialState.COMPLETE] * 2
    assert sorted(trial.params["optim.lr"] for trial in study.trials) == [1e-3, 3e-3]
    runs = trial_runs(path)  # read from the PostgreSQL MLflow store
    assert len(runs) == 2 and {run.info.status for run in runs} == {"FINISHED"}
    assert {run.data.tags["mlflow.parentRunId"] for run in runs} == {first.parent_run_id}
    assert not list(tmp_path.rglob("*.db"))  # nothing fell back to a sqlite file

    runs_root = str(tmp_path / "runs")
    status = CliRunner().invoke(app, ["status", "on-postgres", "--json", "--runs-root", runs_root])
    assert status.exit_code == 0, status.output
    info = json.loads(status.output)
    assert info["trials"] == {"complete": 2}
    best = max(study.trials, key=lambda trial: trial.values[0])
    assert info["best"][OBJECTIVE]["trial"] == best.number

    resumed = CliRunner().invoke(app, ["resume", "on-postgres", "--runs-root", runs_root])
    assert resumed.exit_code == 0, resumed.output
    assert len(optuna.load_study(study_name="on-postgres", storage=optuna_url).trials) == 2  # nothing rerun
    assert {run.info.run_id for run in trial_runs(path)} == {run.info.run_id for run in runs}
