"""`ablate launch` end to end on the local executor: baselines and replicates as submitit jobs, Optuna and
MLflow agreeing trial by trial, failing trials that do not stop the study, relaunching, dry runs, reports."""

from __future__ import annotations

import io
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState
from rich.console import Console
from train_helpers import fast_config, optuna_study, trial_runs, write_study_yaml

from ablate.ablations.scheduler import LaunchResult, launch, prepare

pytestmark = pytest.mark.slow
OBJECTIVE = "eval/zeroshot/mean_top1"


def write_study(folder: Path, shapes_root: Path, **changes: object) -> Path:
    """A grid study: two captions x (good data, missing data), two seeds, one baseline, no pruner."""
    base = fast_config(folder, shapes_root, {"train.steps": 20, "train.eval_every": 10})
    del base["run_dir"], base["tracking"]
    study = {
        "name": "smoke",
        "description": "does the caption source matter?",
        "base": base,
        "search_space": {
            "data.captions": {"type": "categorical", "choices": ["alt", "syn"]},
            "data.root": {"type": "categorical", "choices": [str(shapes_root), str(folder / "missing")]},
        },
        "replicates": {"seeds": [0, 1]},
        "baselines": {"default": {"overrides": {}}},
        "sampler": {"name": "grid"},
        "pruner": {"name": "none"},
        "budget": {"trials": 3, "parallel": 2},
        "executor": {"kind": "local", "threads_per_trial": 1, "poll_seconds": 0.5, "timeout_min": 10, "retries": 1},
    }
    study.update(changes)
    return write_study_yaml(folder, study)


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory, shapes_root: Path) -> tuple[Path, LaunchResult]:
    path = write_study(tmp_path_factory.mktemp("launch"), shapes_root)
    output = io.StringIO()  # not a terminal: the live view prints status lines (test_live_status_lines_in_logs)
    result = launch(path, Console(file=output, width=400), status_every_s=1)
    (path.parent / "launch.log").write_text(output.getvalue())
    return path, result


def test_trials_complete_or_fail_and_are_recorded(launched: tuple[Path, LaunchResult]) -> None:
    path, result = launched
    study = optuna_study(path)
    ended = [trial for trial in study.trials if trial.state != TrialState.WAITING]
    assert len(ended) == 3  # the fourth grid point stays queued for a later launch
    failed = [trial for trial in ended if trial.state == TrialState.FAIL]
    complete = [trial for trial in ended if trial.state == TrialState.COMPLETE]
    assert complete and failed and len(complete) + len(failed) == 3
    for trial in failed:
        assert trial.params["data.root"].endswith("missing")
        assert "manifest.json" in trial.user_attrs["error"]
    for trial in complete:
        assert trial.intermediate_values  # the job reported its evaluations to the study itself
        assert len(trial.user_attrs["mlflow_run_ids"]) == 2
    assert result.outcomes[0].label == "baseline default"  # baselines run first


def test_live_status_lines_in_logs(launched: tuple[Path, LaunchResult]) -> None:
    """Where the launcher's output is no terminal (CI, SLURM logs) it prints one status line per interval: ended
    configurations by state, then each running job's step/total, loss, objective, elapsed time and ETA."""
    path, _ = launched
    log = (path.parent / "launch.log").read_text()
    assert "\x1b[" not in log  # no cursor movement in a log file
    status = [line for line in log.splitlines() if re.match(r"\d+ complete, \d+ pruned, \d+ failed; \d+ running", line)]
    assert status, log
    job = r"(baseline default|trial \d+) seed [01]"
    assert any(re.search(rf"{job}: \d+/20, loss [\d.]+", line) for line in status), status
    assert any(re.search(rf"{job}: \d+/20, loss [\d.]+, mean_top1 [\d.]+, \d+s, ETA \d+s", line) for line in status)
    assert re.search(r"trial \d+ queued: captions=(alt|syn), root=", log)  # parameters as people read them
    assert re.search(r"trial \d+ failed trial \d+ seed \d: ", log) and "manifest.json" in log  # why it ended
    assert re.search(r"trial \d+ complete eval/zeroshot/mean_top1 = [\d.]+", log)


def test_optuna_and_mlflow_agree_trial_by_trial(launched: tuple[Path, LaunchResult]) -> None:
    path, result = launched
    runs = trial_runs(path)
    assert {run.data.tags["mlflow.parentRunId"] for run in runs} == {result.parent_run_id}
    baseline = [run for run in runs if run.data.tags.get("ablate.baseline") == "default"]
    assert sorted(run.data.tags["ablate.seed"] for run in baseline) == ["0", "1"]
    by_id = {run.info.run_id: run for run in runs}
    for trial in optuna_study(path).trials:
        if trial.state != TrialState.COMPLETE:
            continue
        replicates = [by_id[run_id] for run_id in trial.user_attrs["mlflow_run_ids"]]
        assert {run.data.tags["ablate.trial_number"] for run in replicates} == {str(trial.number)}
        assert len({run.data.tags["ablate.config_hash"] for run in replicates}) == 1
        assert trial.values[0] == pytest.approx(statistics.fmean(run.data.metrics[OBJECTIVE] for run in replicates))
        assert {run.data.params["seed"] for run in replicates} == {"0", "1"}
    failed = [run for run in runs if run.data.tags["ablate.state"] == "failed"]
    assert failed and all(run.info.status == "FAILED" for run in failed)
    assert "manifest.json" in failed[0].data.tags["ablate.error"]


def test_report_on_the_launched_study(launched: tuple[Path, LaunchResult], tmp_path: Path) -> None:
    path, _ = launched
    spec, _ = prepare(path)
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


def test_status_and_list(launched: tuple[Path, LaunchResult]) -> None:
    path, _ = launched
    spec, _ = prepare(path)
    done = subprocess.run(
        [sys.executable, "-m", "ablate", "status", "smoke", "--json", "--runs-root", spec.runs_root],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["trials"]["complete"] >= 1 and status["trials"]["fail"] >= 1
    assert status["best"][OBJECTIVE]["params"]["data.root"] == spec.search_space["data.root"].choices[0]
    assert status["running_jobs"] == [] and status["cpu_hours"] > 0
    listed = subprocess.run(
        [sys.executable, "-m", "ablate", "list", "--runs-root", spec.runs_root],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "smoke" in listed.stdout


def test_relaunch_continues_without_rerunning_anything(launched: tuple[Path, LaunchResult]) -> None:
    path, first = launched
    before = {run.info.run_id for run in trial_runs(path)}
    study_file = yaml.safe_load(path.read_text())
    study_file["budget"]["trials"] = 4
    path.write_text(yaml.safe_dump(study_file))
    second = launch(path, Console(quiet=True))
    assert second.parent_run_id == first.parent_run_id
    labels = [outcome.label for outcome in second.outcomes]
    assert labels == ["baseline default", "trial 3"]  # the baseline is read back from its results, not rerun
    study = optuna_study(path)
    assert len(study.trials) == 4 and not [t for t in study.trials if t.state == TrialState.WAITING]
    assert len({(t.params["data.captions"], t.params["data.root"]) for t in study.trials}) == 4
    after = trial_runs(path)
    assert before <= {run.info.run_id for run in after}
    keys = [
        (run.data.tags.get("ablate.trial_number"), run.data.tags.get("ablate.baseline"), run.data.tags["ablate.seed"])
        for run in after
    ]
    assert len(keys) == len(set(keys))  # no replicate has two MLflow runs


def test_dry_run_shows_the_plan_and_runs_nothing(tmp_path: Path, shapes_root: Path) -> None:
    path = write_study(tmp_path, shapes_root)
    done = subprocess.run(
        [sys.executable, "-m", "ablate", "launch", "--dry-run", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    output = " ".join(done.stdout.split())
    assert "first trials:" in output and "baselines: default" in output
    assert "8 jobs in all" in output  # (3 trials + 1 baseline) x 2 seeds
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
