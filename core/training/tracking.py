"""MLflow logging for one training run, through an explicit `MlflowClient` (no global fluent state, so trial
processes and notebooks never log into each other's runs).

A run that resumes from a checkpoint continues the same MLflow run: its id is kept in the run folder, params
are written only once (MLflow params are write-once), and metrics simply continue from the checkpoint step.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path

import mlflow
import torch
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

import ablate
from ablate.core.config.sections import TrainConfig, flatten

RUN_ID_FILE = "mlflow_run.json"
MAX_BATCH = 900  # MLflow's log_batch accepts at most 1000 metrics and 100 params per call


def ensure_tracking_store(uri: str) -> None:
    """Create the backing store (sqlite schema) from this one process; concurrent creation corrupts it."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """For a sqlite store, artifacts go to `mlartifacts/<experiment>` beside the database file.

    MLflow's own default is `./mlruns` under whatever directory the creating process happened to run in,
    which scatters a study's artifacts; a server store (http://...) decides for itself (None).
    """
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    database = Path(tracking_uri.removeprefix(prefix)).resolve()
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment)
    return (database.parent / "mlartifacts" / safe_name).as_uri()


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri, name))
    except mlflow.exceptions.MlflowException:  # another process created it between our two calls
        return client.get_experiment_by_name(name).experiment_id


def source_version() -> str:
    """The git commit of the ablate sources running this code, with '-dirty' if they have local changes."""
    source = Path(ablate.__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def set_run_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    """One request (one sqlite transaction) for all of them, not one per tag."""
    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])


def run_params(config: TrainConfig) -> dict[str, str]:
    """The flattened config without tracking destination or run folder: what defines the experiment."""
    tree = config.model_dump(mode="json", by_alias=True, exclude={"tracking", "run_dir"})
    return {
        key: json.dumps(value) if isinstance(value, list | dict) else str(value) for key, value in flatten(tree).items()
    }


class RunTracker:
    """Owns one MLflow run for the lifetime of a (possibly resumed) training run."""

    def __init__(self, config: TrainConfig, run_dir: Path) -> None:
        self.config = config
        self.client = MlflowClient(tracking_uri=config.tracking.uri)
        ensure_tracking_store(config.tracking.uri)
        self.run_id = self._start_or_resume(run_dir)

    def _start_or_resume(self, run_dir: Path) -> str:
        record = run_dir / RUN_ID_FILE
        if record.is_file():
            run_id = json.loads(record.read_text())["run_id"]
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, "ablate.resumed", "true")
            return run_id
        tracking = self.config.tracking
        experiment_id = get_or_create_experiment(self.client, tracking.experiment)
        tags = {
            "ablate.version": ablate.__version__,
            "ablate.git_sha": source_version(),
            "ablate.host": platform.node(),
            "ablate.torch": torch.__version__,
            "ablate.run_dir": str(run_dir.resolve()),
            **tracking.tags,
        }
        if tracking.parent_run_id:
            tags["mlflow.parentRunId"] = tracking.parent_run_id
        run = self.client.create_run(experiment_id, run_name=tracking.run_name, tags=tags)
        run_id = run.info.run_id
        params = [Param(key, value) for key, value in run_params(self.config).items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[start : start + 100])
        self._log_config_artifact(run_id)
        record.write_text(json.dumps({"run_id": run_id, "tracking_uri": tracking.uri}))
        return run_id

    def _log_config_artifact(self, run_id: str) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "config.yaml"
            path.write_text(yaml.safe_dump(self.config.model_dump(mode="json", by_alias=True), sort_keys=False))
            self.client.log_artifact(run_id, str(path))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        entries = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        for start in range(0, len(entries), MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=entries[start : start + MAX_BATCH])

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def set_tags(self, tags: dict[str, str]) -> None:
        set_run_tags(self.client, self.run_id, tags)

    def finish(self, status: str) -> None:
        """status: FINISHED or FAILED (MLflow run statuses)."""
        self.client.set_terminated(self.run_id, status=status)
