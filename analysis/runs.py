"""Tracking data of one study as pandas tables.

The orchestrator writes one MLflow experiment per study: a parent run tagged `ablate.role=study` and one child
run per trial. This module is the only place that knows those conventions, so plots, statistics and reports
work on plain DataFrames and never touch MLflow themselves.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import pandas as pd

with warnings.catch_warnings():
    # mlflow imports tqdm.auto, which warns in Jupyter kernels without ipywidgets; the warning would land in
    # every report notebook, and it is about progress bars that reports never show.
    warnings.filterwarnings("ignore", message="IProgress not found")
    from mlflow import MlflowClient
    from mlflow.entities import Experiment, Run

PARAM_PREFIX = "param."
METRIC_PREFIX = "metric."
RUN_COLUMNS = ["run_id", "trial_number", "state", "seed", "config_hash", "baseline"]
TIME_COLUMNS = ["start_time", "end_time", "duration_s"]
HISTORY_COLUMNS = ["run_id", "trial_number", "config_hash", "seed", "baseline", "metric", "step", "value"]
_PAGE_SIZE = 1000


class StudyNotFoundError(LookupError):
    """The tracking store has no usable record of the requested study."""


def param_column(name: str) -> str:
    """Column of `load_runs` holding a param, so callers may pass either `optim.lr` or `param.optim.lr`."""
    return name if name.startswith(PARAM_PREFIX) else PARAM_PREFIX + name


def metric_column(name: str) -> str:
    """Column of `load_runs` holding a final metric value, accepting the bare MLflow metric name too."""
    return name if name.startswith(METRIC_PREFIX) else METRIC_PREFIX + name


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    """Only completed trials: failed or pruned runs carry partial metrics that would bias the averages."""
    return runs[runs["state"] == "finished"]


def study_info(study: str, tracking_uri: str) -> dict[str, Any]:
    """What the orchestrator recorded about the study itself (parent run, objectives, search space)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = _experiment(client, study, tracking_uri)
    parent = _parent_run(client, experiment, study, tracking_uri)
    tags = parent.data.tags
    return {
        "study": study,
        "tracking_uri": tracking_uri,
        "experiment_id": experiment.experiment_id,
        "parent_run_id": parent.info.run_id,
        "objectives": json.loads(tags.get("ablate.objective", "[]")),
        "search_space": json.loads(tags.get("ablate.search_space", "[]")),
    }


def load_runs(study: str, tracking_uri: str) -> pd.DataFrame:
    """One row per trial run with identity columns, `param.<key>`, `metric.<name>` (final values) and timing.

    Params come back from MLflow as strings; a param column becomes numeric when every value parses as a
    number, so plots get a real numeric axis. Rows are ordered by trial number.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = _experiment(client, study, tracking_uri)
    parent = _parent_run(client, experiment, study, tracking_uri)
    children = _search_all(
        client, experiment.experiment_id, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    return _runs_frame(children)


def load_histories(study: str, tracking_uri: str, metrics: list[str]) -> pd.DataFrame:
    """Step-wise values of `metrics` for every trial run, in long format (one row per logged point)."""
    runs = load_runs(study, tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    names = [name.removeprefix(METRIC_PREFIX) for name in metrics]
    rows = [
        {
            "run_id": run.run_id,
            "trial_number": run.trial_number,
            "config_hash": run.config_hash,
            "seed": run.seed,
            "baseline": run.baseline,
            "metric": name,
            "step": point.step,
            "value": point.value,
        }
        for run in runs.itertuples(index=False)
        for name in names
        for point in client.get_metric_history(run.run_id, name)
    ]
    histories = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    histories = histories.astype(
        {"trial_number": "Int64", "seed": "Int64", "step": "int64", "value": "float64"}
    )
    histories["baseline"] = _none_if_missing(histories["baseline"])
    return histories.sort_values(["metric", "trial_number", "step"], ignore_index=True)


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
    parents = _search_all(client, experiment.experiment_id, "tags.`ablate.role` = 'study'")
    if not parents:
        raise StudyNotFoundError(
            f"Study {study!r} in tracking store {tracking_uri!r} has an experiment but no parent run "
            "tagged ablate.role=study."
        )
    return min(parents, key=lambda run: run.info.start_time or 0)


def _search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=_PAGE_SIZE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _runs_frame(runs: list[Run]) -> pd.DataFrame:
    rows = [_row(run) for run in runs]
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=[*RUN_COLUMNS, "start_time", "end_time"])
    params = sorted(c for c in frame.columns if c.startswith(PARAM_PREFIX))
    metrics = sorted(c for c in frame.columns if c.startswith(METRIC_PREFIX))
    for column in params:
        frame[column] = _numeric_if_possible(frame[column])
    frame = frame.astype({"trial_number": "Int64", "seed": "Int64"})
    frame["baseline"] = _none_if_missing(frame["baseline"])
    frame["start_time"] = pd.to_datetime(frame["start_time"], unit="ms", utc=True)
    frame["end_time"] = pd.to_datetime(frame["end_time"], unit="ms", utc=True)
    frame["duration_s"] = (frame["end_time"] - frame["start_time"]).dt.total_seconds()
    frame = frame[[*RUN_COLUMNS, *params, *metrics, *TIME_COLUMNS]]
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
