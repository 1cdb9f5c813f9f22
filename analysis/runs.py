"""Tracking data of one study as pandas tables.

The orchestrator writes one MLflow experiment per study: a parent run tagged `ablate.role=study` and one child
run per trial. This module and `histories` are the only places that know those conventions, so plots,
statistics and reports work on plain DataFrames and never touch MLflow themselves.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pandas as pd

from ablate.analysis.mlflow_client import Experiment, MlflowClient, Run

PARAM_PREFIX = "param."
METRIC_PREFIX = "metric."
COMPUTE_PREFIX = "metric.compute/"
RUN_COLUMNS = ["run_id", "trial_number", "state", "seed", "config_hash", "baseline", "error"]
INFO_COLUMNS = ["status", "start_time", "end_time", "duration_s"]
SPEC_ARTIFACT = "study/study.json"
_PAGE_SIZE = 1000
_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


class StudyNotFoundError(LookupError):
    """The tracking store has no usable record of the requested study."""


def param_column(name: str) -> str:
    """Column of `load_runs` holding a param, so callers may pass either `optim.lr` or `param.optim.lr`."""
    return name if name.startswith(PARAM_PREFIX) else PARAM_PREFIX + name


def metric_column(name: str) -> str:
    """Column of `load_runs` holding a final metric value, accepting the bare MLflow metric name too."""
    return name if name.startswith(METRIC_PREFIX) else METRIC_PREFIX + name


def metric_name(column: str) -> str:
    """The MLflow metric name of a `metric.` column (or of a bare name), for labels and history queries."""
    return column.removeprefix(METRIC_PREFIX)


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    """Only completed trials: failed or pruned runs carry partial metrics that would bias the averages."""
    return runs[runs["state"] == "finished"]


def metric_columns(runs: pd.DataFrame, prefix: str) -> list[str]:
    """`metric.` columns whose metric name starts with `prefix` and that hold at least one value.

    Plots of data that later issues add (compression, compute, latency) appear only where this is non-empty.
    """
    column_prefix = metric_column(prefix)
    return [c for c in runs.columns if c.startswith(column_prefix) and runs[c].notna().any()]


def study_info(study: str, tracking_uri: str) -> dict[str, Any]:
    """What the orchestrator recorded about the study itself: parent run, objectives, search space, the
    question it asks, its Optuna storage, and its full spec (the `study/study.json` artifact, else rebuilt
    from the parent run's tags)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = _experiment(client, study, tracking_uri)
    parent = _parent_run(client, experiment, study, tracking_uri)
    tags = parent.data.tags
    info = {
        "study": study,
        "tracking_uri": tracking_uri,
        "experiment_id": experiment.experiment_id,
        "parent_run_id": parent.info.run_id,
        "objectives": json.loads(tags.get("ablate.objective", "[]")),
        "search_space": json.loads(tags.get("ablate.search_space", "[]")),
        "description": tags.get("ablate.description", ""),
        "optuna_storage": tags.get("ablate.optuna_storage") or None,
        "study_file": tags.get("ablate.study_file") or None,  # the file `ablate launch` was given
        "study_record": tags.get("ablate.study_record") or None,  # its self-contained copy under runs/<study>/
    }
    spec = _spec_artifact(client, parent.info.run_id)
    info["spec_source"] = SPEC_ARTIFACT if spec is not None else "parent run tags"
    info["spec"] = spec if spec is not None else _spec_from_tags(info)
    return info


def load_runs(study: str, tracking_uri: str) -> pd.DataFrame:
    """One row per trial run with identity columns, `param.<key>`, `metric.<name>` (final values), MLflow
    status and timing. `metric.compute/*` columns are there when the trials logged compute.

    Params come back from MLflow as strings; a param column becomes numeric when every value parses as a
    number, so plots get a real numeric axis. Rows are ordered by trial number.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = _experiment(client, study, tracking_uri)
    parent = _parent_run(client, experiment, study, tracking_uri)
    return _runs_frame(search_all(client, experiment.experiment_id, _children_filter(parent)))


def has_finished_trials(study: str, tracking_uri: str) -> bool:
    """Whether any trial finished, asked with one small query rather than loading the study."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = _experiment(client, study, tracking_uri)
    parent = _parent_run(client, experiment, study, tracking_uri)
    query = f"{_children_filter(parent)} and tags.`ablate.state` = 'finished'"
    return bool(client.search_runs([experiment.experiment_id], query, max_results=1))


def search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    """Every run matching `filter_string`, following MLflow's page tokens."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=_PAGE_SIZE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _children_filter(parent: Run) -> str:
    return f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"


def _experiment(client: MlflowClient, study: str, tracking_uri: str) -> Experiment:
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        available = sorted(e.name for e in client.search_experiments())
        raise StudyNotFoundError(
            f"Study {study!r} not found in tracking store {tracking_uri!r}: "
            "no MLflow experiment of that name. "
            f"Available experiments: {', '.join(available) or '(none)'}."
        )
    return experiment


def _parent_run(client: MlflowClient, experiment: Experiment, study: str, tracking_uri: str) -> Run:
    """The study's parent run; the earliest one wins should a restart have created another."""
    parents = search_all(client, experiment.experiment_id, "tags.`ablate.role` = 'study'")
    if not parents:
        raise StudyNotFoundError(
            f"Study {study!r} in tracking store {tracking_uri!r} has an experiment but no parent run "
            "tagged ablate.role=study."
        )
    return min(parents, key=lambda run: run.info.start_time or 0)


def _spec_artifact(client: MlflowClient, run_id: str) -> dict[str, Any] | None:
    """The logged study spec, or None for studies launched before the orchestrator logged it."""
    folder = str(Path(SPEC_ARTIFACT).parent)
    if SPEC_ARTIFACT not in {artifact.path for artifact in client.list_artifacts(run_id, folder)}:
        return None
    # MLflow's download progress bar would print to stderr, and so into every report notebook.
    with tempfile.TemporaryDirectory() as tmp, patch.dict(os.environ, {_PROGRESS_BAR: "false"}):
        return json.loads(Path(client.download_artifacts(run_id, SPEC_ARTIFACT, tmp)).read_text())


def _spec_from_tags(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": info["study"],
        "description": info["description"],
        "search_space": info["search_space"],
        "objectives": info["objectives"],
        "storage": {"optuna": info["optuna_storage"], "mlflow": info["tracking_uri"]},
    }


def _runs_frame(runs: list[Run]) -> pd.DataFrame:
    frame = pd.DataFrame([_row(run) for run in runs])
    if frame.empty:
        frame = pd.DataFrame(columns=[*RUN_COLUMNS, "status", "start_time", "end_time"])
    params = sorted(c for c in frame.columns if c.startswith(PARAM_PREFIX))
    metrics = sorted(c for c in frame.columns if c.startswith(METRIC_PREFIX))
    for column in params:
        frame[column] = _numeric_if_possible(frame[column])
    frame = frame.astype({"trial_number": "Int64", "seed": "Int64"})
    for column in ("baseline", "error"):
        frame[column] = _none_if_missing(frame[column])
    # the loop and astype leave one block per column: a copy consolidates them, else every later insert (here and
    # in the report's tables) printed pandas' "highly fragmented" PerformanceWarning into the report
    frame = frame.copy()
    frame["start_time"] = pd.to_datetime(frame["start_time"], unit="ms", utc=True)
    frame["end_time"] = pd.to_datetime(frame["end_time"], unit="ms", utc=True)
    frame["duration_s"] = (frame["end_time"] - frame["start_time"]).dt.total_seconds()
    frame = frame[[*RUN_COLUMNS, *params, *metrics, *INFO_COLUMNS]]
    return frame.sort_values(["trial_number", "run_id"], ignore_index=True)


def _row(run: Run) -> dict[str, Any]:
    tags, params = run.data.tags, run.data.params
    return {
        "run_id": run.info.run_id,
        "trial_number": _int_or_none(tags.get("ablate.trial_number")),
        # Runs killed before the orchestrator could tag them still have MLflow's own status.
        "state": tags.get("ablate.state") or run.info.status.lower(),
        "seed": _int_or_none(tags.get("ablate.seed", params.get("seed"))),
        "config_hash": tags.get("ablate.config_hash"),
        "baseline": tags.get("ablate.baseline") or None,
        "error": tags.get("ablate.error") or None,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        **{PARAM_PREFIX + key: value for key, value in params.items()},
        **{METRIC_PREFIX + key: value for key, value in run.data.metrics.items()},
    }


def _int_or_none(value: str | None) -> int | None:
    return None if value in (None, "") else int(value)


def _none_if_missing(column: pd.Series) -> pd.Series:
    """Object column with None for missing names, so `baseline is None` holds as the conventions say."""
    return column.astype(object).where(column.notna(), None)


def _numeric_if_possible(column: pd.Series) -> pd.Series:
    try:
        return pd.to_numeric(column)
    except (ValueError, TypeError):
        return column
