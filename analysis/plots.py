"""The house style of every figure, the labels of configurations, and saving figures for HTML and papers.

Plot functions live in `param_plots` (a metric against the study's parameters) and `result_plots` (trade-offs,
compute, retrieval, study comparisons); each takes an optional Axes and returns it, so reports can compose
panels and save them with `save_figure` in both a raster (PNG, for HTML) and a vector (SVG, for papers) format.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ablate.analysis.formatting import number
from ablate.analysis.runs import PARAM_PREFIX, metric_name, param_column

FIGURE_FORMATS = ("png", "svg")
_LOG_SCALE_RATIO = 10  # positive values spanning a decade or more (learning rates) read better on a log axis


def set_style() -> None:
    """Apply the house style, so figures from different notebooks and scripts look alike."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    mpl.rcParams.update(
        {
            "figure.figsize": (6.4, 4.0),
            "figure.dpi": 100,
            "savefig.dpi": 150,
            "savefig.bbox": "tight",
            "svg.fonttype": "none",  # keep text as text in SVGs so it stays editable
        }
    )


def config_label(config_hash: str | None, baseline: str | None) -> str:
    """Short legend label of a configuration: the baseline's name, or the start of its hash."""
    if isinstance(baseline, str):
        return baseline
    return str(config_hash)[:8]


def config_labels(runs: pd.DataFrame, params: Sequence[str] | None = None) -> pd.Series:
    """Readable label of each run's configuration: `lambda=0.5, lr=0.001` from the varied `params` (last
    dotted part of each name), the baseline's name for baselines, the hash's start when labels would collide.
    """
    columns = [param_column(p) for p in (params or []) if param_column(p) in runs.columns]
    columns = [c for c in columns if c != "param.seed"]
    parts = [
        ", ".join(f"{c.removeprefix(PARAM_PREFIX).rsplit('.', 1)[-1]}={_short(row[c])}" for c in columns)
        for _, row in runs.iterrows()
    ]
    labels = pd.Series(
        [
            config_label(h, b) if isinstance(b, str) or not text else text
            for h, b, text in zip(runs["config_hash"], runs["baseline"], parts, strict=True)
        ],
        index=runs.index,
        dtype=object,
    )
    per_label = pd.DataFrame({"label": labels, "config": runs["config_hash"]}).groupby("label")["config"]
    colliding = labels.map(per_label.nunique()) > 1
    fallback = [config_label(h, b) for h, b in zip(runs["config_hash"], runs["baseline"], strict=True)]
    return labels.where(~colliding, pd.Series(fallback, index=runs.index))


def axis_label(column: str) -> str:
    """Axis text of a `param.` or `metric.` column: the bare name, as the study file writes it."""
    return metric_name(column).removeprefix(PARAM_PREFIX)


def new_axes(ax: Axes | None, figsize: tuple[float, float] | None = None) -> Axes:
    return ax if ax is not None else plt.subplots(figsize=figsize)[1]


def wants_log_scale(values: pd.Series) -> bool:
    finite = values[np.isfinite(values)]
    return bool(len(finite)) and finite.min() > 0 and finite.max() / finite.min() >= _LOG_SCALE_RATIO


def save_figure(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write `fig` as PNG and SVG; `name` may be a metric name, so characters unsafe in files become `_`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
    paths = [out_dir / f"{stem}.{fmt}" for fmt in FIGURE_FORMATS]
    for path in paths:
        fig.savefig(path)
    return paths


def _short(value: object) -> str:
    return number(value, 3)
