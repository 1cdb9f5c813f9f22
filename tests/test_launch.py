"""`ablate launch` end to end on the local executor: trials as submitit jobs, Optuna and MLflow records, a
failing trial that does not stop the study, relaunching to continue, and the report on the result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from rich.console import Console
from train_helpers import fast_config

from ablate.ablations.scheduler import launch
from ablate.ablations.spec import load_study
from ablate.core.config_io import ConfigError

pytestmark = pytest.mark.slow


def write_study(folder: Path, shapes_root: Path, trials: int) -> Path:
    base = fast_config(folder, shapes_root, {"train.steps": 20, "train.eval_every": 10})
    del base["run_dir"], base["tracking"]
    study = {
        "name": "smoke",
        "base": base,
        "search_space": {
            "data.train_caption": {"type": "categorical", "choices": ["alt", "syn"]},
            "data.root": {"type": "categorical", "choices": [str(shapes_root), str(folder / "missing")]},
        },
        "sampler": {"name": "grid"},
        "budget": {"trials": trials, "parallel": 2},
        "executor": {"kind": "local", "threads_per_trial": 1, "poll_seconds": 0.5, "timeout_min": 10},
        "storage": {"mlflow": f"sqlite:///{folder / 'mlflow.db'}"},
        "runs_root": str(folder / "runs"),
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory, shapes_root: Path) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("launch")
    path = write_study(folder, shapes_root, trials=3)
    return path, launch(path, Console(quiet=True))


def test_trials_complete_or_fail_and_are_recorded(launched: tuple[Path, object]) -> None:
    path, _ = launched
    spec, _ = load_study(path)
    study = optuna.load_study(study_name="smoke", storage=spec.optuna_storage)
    finished = [trial for trial in study.trials if trial.state != TrialState.WAITING]
    assert len(finished) == 3  # the fourth grid point stays queued for a later launch
    failed = [trial for trial in study.trials if trial.state == TrialState.FAIL]
    complete = [trial for trial in study.trials if trial.state == TrialState.COMPLETE]
    assert complete and failed and len(complete) + len(failed) == 3
    for trial in failed:
        assert trial.params["data.root"].endswith("missing")
        assert "manifest.json" in trial.user_attrs["error"]
    for trial in complete:
        assert 0.0 <= trial.values[0] <= 1.0
        assert trial.intermediate_values  # the job reported evaluations to the study itself


def test_mlflow_holds_a_parent_run_with_one_child_per_trial(launched: tuple[Path, object]) -> None:
    path, result = launched
    spec, _ = load_study(path)
    client = MlflowClient(tracking_uri=spec.storage.mlflow)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if run.data.tags.get("ablate.role") == "study"]
    children = [run for run in runs if run.data.tags.get("ablate.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.run_id == result.parent_run_id
    assert json.loads(parents[0].data.tags["ablate.objective"])[0]["metric"] == "eval/zeroshot/mean_top1"
    assert len(children) == 3
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {result.parent_run_id}
    states = sorted(run.data.tags["ablate.state"] for run in children)
    statuses = sorted(run.info.status for run in children)
    assert "failed" in states and "finished" in states
    assert "FAILED" in statuses and "FINISHED" in statuses
    failed = next(run for run in children if run.data.tags["ablate.state"] == "failed")
    assert "manifest.json" in failed.data.tags["ablate.error"]
    assert all(run.data.params["train.threads"] == "1" for run in children)


def test_report_on_the_launched_study(launched: tuple[Path, object], tmp_path: Path) -> None:
    path, _ = launched
    spec, _ = load_study(path)
    command = [
        sys.executable,
        "-m",
        "ablate",
        "report",
        "smoke",
        "--runs-root",
        spec.runs_root,
        "--out",
        str(tmp_path / "report"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "report" / "report.ipynb").is_file()
    assert "smoke" in (tmp_path / "report" / "report.html").read_text()


def test_relaunch_continues_the_same_study(launched: tuple[Path, object]) -> None:
    path, first = launched
    study_file = yaml.safe_load(path.read_text())
    study_file["budget"]["trials"] = 4
    path.write_text(yaml.safe_dump(study_file))
    second = launch(path, Console(quiet=True))
    assert second.parent_run_id == first.parent_run_id
    assert [outcome.number for outcome in second.outcomes] == [3]
    spec, _ = load_study(path)
    study = optuna.load_study(study_name="smoke", storage=spec.optuna_storage)
    assert [trial.state for trial in study.trials].count(TrialState.WAITING) == 0
    assert len({(t.params["data.train_caption"], t.params["data.root"]) for t in study.trials}) == 4


def test_study_errors_name_file_field_and_value(tmp_path: Path, shapes_root: Path) -> None:
    path = write_study(tmp_path, shapes_root, trials=1)
    study = yaml.safe_load(path.read_text())
    study["sampler"]["name"] = "tpe"
    study["search_space"]["optim.lrr"] = {"type": "float", "low": 1e-4, "high": 1e-3}
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match=r"search_space\.optim\.lrr.*optim\.lrr: unknown key"):
        load_study(path)

    study["search_space"] = {"optim.lr": {"type": "float", "low": 1e-2, "high": 1e-3}}
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match=r"search_space\.optim\.lr.*low \(0\.01\) must be smaller"):
        load_study(path)

    done = subprocess.run(
        [sys.executable, "-m", "ablate", "launch", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert str(path) in done.stderr
