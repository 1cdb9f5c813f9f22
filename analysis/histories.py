"""Step-wise metric histories of a study's runs, with an on-disk cache of the runs that have ended.

`search_runs` returns only the last value of each metric, so curves need one `get_metric_history` call per run
and metric: thousands of calls for a large study. A run that has ended (any MLflow status but RUNNING) logs
nothing more until it is resumed, which reopens it and changes its status and end time; so its history is
cached under the key (run id, status, end time) and fetched again only when that key changes.
"""

from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from ablate.analysis.mlflow_client import MlflowClient
from ablate.analysis.runs import load_runs, metric_name

HISTORY_COLUMNS = ["run_id", "trial_number", "config_hash", "seed", "baseline", "metric", "step", "value"]
_POINT_COLUMNS = ["run_id", "stamp", "step", "timestamp", "value"]
_CACHE_VERSION = "1"
_FETCH_THREADS = 8  # a tracking server answers requests in parallel; sqlite gains little but loses nothing


def cache_dir() -> Path:
    """Where histories are cached: `$ABLATE_CACHE/analysis`, else `~/.cache/ablate/analysis`."""
    root = os.environ.get("ABLATE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "ablate") / "analysis"


def load_histories(
    study: str,
    tracking_uri: str,
    metrics: list[str],
    runs: pd.DataFrame | None = None,
    *,
    cache: bool = True,
) -> pd.DataFrame:
    """Step-wise values of `metrics` for `runs` (default: every trial run), one row per (run, metric, step).

    A resumed run logs again the steps between its last checkpoint and the kill; the value logged last (the
    latest timestamp) is the one its final weights produced, so it is the one kept.
    """
    runs = load_runs(study, tracking_uri) if runs is None else runs
    client = MlflowClient(tracking_uri=tracking_uri)
    stamps = dict(zip(runs["run_id"], _stamps(runs), strict=True))
    frames = []
    for name in dict.fromkeys(metric_name(m) for m in metrics):
        path = cache_dir() / _store_key(tracking_uri, study) / f"{_safe(name)}.pkl" if cache else None
        points = _cached_points(client, name, stamps, path)
        frames.append(_latest_per_step(points).assign(metric=name))
    histories = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_POINT_COLUMNS)
    identity = runs[["run_id", "trial_number", "config_hash", "seed", "baseline"]]
    histories = histories.merge(identity, on="run_id", how="inner")[HISTORY_COLUMNS]
    histories = histories.astype({"trial_number": "Int64", "seed": "Int64", "step": "int64", "value": "float64"})
    histories["baseline"] = histories["baseline"].astype(object).where(histories["baseline"].notna(), None)
    return histories.sort_values(["metric", "trial_number", "step"], ignore_index=True)


def _stamps(runs: pd.DataFrame) -> list[str | None]:
    """Cache key part of each run: None while it runs (never cached), else its status and end time."""
    return [
        None if status == "RUNNING" or pd.isna(end) else f"{status}@{end.value}"
        for status, end in zip(runs["status"], runs["end_time"], strict=True)
    ]


def _cached_points(client: MlflowClient, name: str, stamps: dict[str, str | None], path: Path | None) -> pd.DataFrame:
    cached = _read(path)
    key = cached["run_id"] + "|" + cached["stamp"]
    wanted = {f"{run_id}|{stamp}" for run_id, stamp in stamps.items() if stamp is not None}
    cached = cached[key.isin(wanted)]
    missing = [run_id for run_id in stamps if run_id not in set(cached["run_id"])]
    fetched = _fetch(client, name, missing, stamps)
    points = pd.concat([cached, fetched], ignore_index=True) if len(fetched) else cached
    if path is not None and len(fetched):
        _write(points[points["stamp"].notna()], path)
    return points


def _fetch(client: MlflowClient, name: str, run_ids: list[str], stamps: dict[str, str | None]) -> pd.DataFrame:
    def history(run_id: str) -> list[tuple]:
        return [(run_id, stamps[run_id], m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, name)]

    with ThreadPoolExecutor(max_workers=_FETCH_THREADS) as pool:
        rows = [row for points in pool.map(history, run_ids) for row in points]
    return pd.DataFrame(rows, columns=_POINT_COLUMNS).astype({"stamp": object})


def _latest_per_step(points: pd.DataFrame) -> pd.DataFrame:
    ordered = points.sort_values(["run_id", "step", "timestamp"], kind="stable")
    return ordered.drop_duplicates(["run_id", "step"], keep="last")[["run_id", "step", "value"]]


def _store_key(tracking_uri: str, study: str) -> str:
    digest = hashlib.sha1(f"{_CACHE_VERSION}|{tracking_uri}|{study}".encode()).hexdigest()[:16]
    return f"{_safe(study)}-{digest}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _read(path: Path | None) -> pd.DataFrame:
    """Cached points, or none when there is no cache file or it cannot be read (another pandas version)."""
    if path is None or not path.is_file():
        return pd.DataFrame(columns=_POINT_COLUMNS).astype({"run_id": object, "stamp": object})
    try:
        return pd.read_pickle(path)
    except Exception:
        return _read(None)


def _write(points: pd.DataFrame, path: Path) -> None:
    """Write through a temporary file so a concurrent reader never sees half a cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    points.to_pickle(partial)
    partial.replace(path)
