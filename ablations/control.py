"""Study-level control outside the launch loop: one launcher per study, cancelling, stale jobs, status, list.

Everything here works from the study's run folder and its Optuna storage, so it also works when the launcher
that started the study is gone (killed, or on another login node).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ablate.ablations.spec import StudySpec
from ablate.ablations.trial import JOB_RECORD, RESULT_RECORD, SUBMISSION_RECORD, read_slurm_usage
from ablate.core.config.base import ConfigError
from ablate.slurm.accounting import Accounting

STUDY_RECORD = "study.json"
CANCEL_MARKER = "CANCEL"
LOCK_FILE = "launcher.lock"


@contextlib.contextmanager
def launcher_lock(folder: Path) -> Iterator[None]:
    """Hold the study's launcher lock; a second `ablate launch` of the same study fails instead of racing."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise ConfigError(
                f"{folder}: study is already being launched by pid {handle.read().strip() or '?'}; "
                f"wait for it or run `ablate cancel`"
            ) from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def launcher_alive(folder: Path) -> bool:
    if not (folder / LOCK_FILE).is_file():
        return False
    with open(folder / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def load_recorded_spec(name: str, runs_root: Path) -> StudySpec:
    record = runs_root / name / STUDY_RECORD
    if not record.is_file():
        known = ", ".join(list_studies(runs_root)) or "none"
        raise ConfigError(f"study {name!r}: no {record} (launched studies under {runs_root}: {known})")
    return StudySpec.model_validate_json(record.read_text())


def list_studies(runs_root: Path) -> list[str]:
    return sorted(p.parent.name for p in runs_root.glob(f"*/{STUDY_RECORD}"))


def live_job(run_dir: Path) -> int | None:
    """The pid of the process running this replicate, if it is alive on this host and has no result yet."""
    record = run_dir / JOB_RECORD
    if not record.is_file() or (run_dir / RESULT_RECORD).is_file():
        return None
    job = json.loads(record.read_text())
    if job.get("host") != platform.node():
        return None
    try:
        os.kill(job["pid"], 0)
    except (ProcessLookupError, PermissionError):
        return None
    return int(job["pid"])


def stop_job_process(run_dir: Path, timeout_seconds: float = 30.0) -> bool:
    """Stop the process training in `run_dir` (left by a dead launcher, or cancelled), so nothing runs twice.

    SIGKILL, because submitit's job environment ignores SIGTERM (it reserves it for SLURM preemption); nothing
    is lost beyond the steps since the last checkpoint, which is written atomically.
    """
    pid = live_job(run_dir)
    if pid is None:
        return False
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_seconds
    while live_job(run_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def cancel_submitted_slurm_job(run_dir: Path, timeout_seconds: float = 60.0) -> bool:
    """Cancel the SLURM job a (dead) launcher submitted for this replicate, queued or running, and wait until
    accounting says it ended, so that its resubmission never trains beside it."""
    record = run_dir / SUBMISSION_RECORD
    if not record.is_file() or (run_dir / RESULT_RECORD).is_file():
        return False
    job_id = json.loads(record.read_text())["job_id"]
    accounting = Accounting()
    job = accounting.query([job_id]).get(job_id)
    if job is not None and not job.active:
        return False
    subprocess.run(["scancel", job_id], capture_output=True, timeout=60, check=False)
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        job = accounting.query([job_id]).get(job_id)
        if job is not None and not job.active:
            break
        time.sleep(0.5)
    return True


def stop_stale_job(run_dir: Path, timeout_seconds: float = 30.0) -> bool:
    """Whatever still runs this replicate: its SLURM job (if one was submitted), then any local process."""
    cancelled = cancel_submitted_slurm_job(run_dir, timeout_seconds)
    return stop_job_process(run_dir, timeout_seconds) or cancelled


def replicate_dirs(spec: StudySpec) -> list[Path]:
    return sorted(spec.run_folder.glob("trials/*/seed-*")) + sorted(spec.run_folder.glob("baselines/*/seed-*"))


def request_cancel(spec: StudySpec) -> str:
    """Ask the live launcher to stop; with none alive, stop the jobs and fail the running trials directly."""
    folder = spec.run_folder
    if launcher_alive(folder):
        (folder / CANCEL_MARKER).write_text(str(time.time()))
        return "asked the running launcher to cancel the study"
    stopped = sum(stop_stale_job(run_dir) for run_dir in replicate_dirs(spec))
    study = optuna.load_study(study_name=spec.name, storage=spec.open_optuna_storage())
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        study.tell(trial.number, state=TrialState.FAIL)
    return f"stopped {stopped} job(s) and marked {len(running)} running trial(s) failed"


def study_status(spec: StudySpec) -> dict[str, Any]:
    """Trials by state, best per objective, live jobs and compute spent, from the storage and run folders."""
    study = optuna.load_study(study_name=spec.name, storage=spec.open_optuna_storage())
    trials = study.get_trials(deepcopy=False)
    states = Counter(trial.state.name.lower() for trial in trials)
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    best = {}
    for index, objective in enumerate(spec.objectives):
        if complete:
            pick = max if objective.direction == "maximize" else min
            winner = pick(complete, key=lambda trial, i=index: trial.values[i])
            best[objective.metric] = {
                "trial": winner.number,
                "value": winner.values[index],
                "params": winner.params,
            }
    cpu_seconds, gpu_seconds, sources, live = 0.0, 0.0, Counter(), []
    for run_dir in replicate_dirs(spec):
        result_path = run_dir / RESULT_RECORD
        slurm_jobs = read_slurm_usage(run_dir)
        if slurm_jobs:  # SLURM's accounting: every job that ran it, failed and requeued runs included
            cpu_seconds += sum(job["cpu_seconds"] for job in slurm_jobs.values())
            gpu_seconds += sum(job["gpu_seconds"] for job in slurm_jobs.values())
            sources["slurm"] += 1
        elif result_path.is_file():  # the trainer's own: wall time up to each attempt's last checkpoint
            result = json.loads(result_path.read_text())
            cpu_seconds += result["compute_seconds"] * (result.get("threads") or 1)
            sources["trainer"] += 1
        if not result_path.is_file() and (pid := live_job(run_dir)) is not None:
            live.append({"run_dir": str(run_dir), "pid": pid})
    return {
        "study": spec.name,
        "trials": dict(states),
        "budget": spec.budget.trials,
        "best": best,
        "running_jobs": live,
        "cpu_hours": cpu_seconds / 3600,
        "gpu_hours": gpu_seconds / 3600,
        "compute_accounted_by": dict(sources),  # replicates counted from SLURM accounting vs. the trainer
        "launcher_alive": launcher_alive(spec.run_folder),
    }
