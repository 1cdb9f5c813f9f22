"""Figures of a study, drawn from the tables of `ablate.analysis.runs` in one shared style.

Every function takes an optional Axes and returns it, so reports can compose panels and save them with
`save_figure` in both a raster (PNG, for HTML) and a vector (SVG, for papers) format.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ablate.analysis.runs import metric_column, param_column
from ablate.analysis.stats import summarise

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


def plot_metric_vs_param(runs: pd.DataFrame, metric: str, param: str, ax: Axes | None = None) -> Axes:
    """One point per run, the mean with its 95% CI per param value, and a line per baseline for reference."""
    ax = ax if ax is not None else plt.subplots()[1]
    value, x = metric_column(metric), param_column(param)
    is_baseline = runs["baseline"].notna()
    trials = runs[~is_baseline & runs[value].notna()]
    numeric = pd.api.types.is_numeric_dtype(trials[x])
    if numeric:
        positions = trials[x]
    else:
        categories = sorted(trials[x].dropna().astype(str).unique())
        positions = trials[x].astype(str).map({c: i for i, c in enumerate(categories)})
        ax.set_xticks(range(len(categories)), categories)

    ax.scatter(positions, trials[value], s=18, alpha=0.5, color="C0", label="runs")
    summary = summarise(trials.assign(_x=positions), value, by="_x", params=[]).sort_values("_x")
    if (summary["n"] > 1).any():  # a line through single runs of a sampled continuous parameter would mislead
        ax.errorbar(
            summary["_x"],
            summary["mean"],
            yerr=summary["ci95"].fillna(0),
            fmt="o-",
            color="C0",
            capsize=3,
            label="mean ± 95% CI",
        )
    baselines = runs[is_baseline].groupby("baseline")[value].mean().dropna()
    for i, (name, level) in enumerate(baselines.items(), start=1):
        ax.axhline(level, linestyle="--", color=f"C{i}", label=f"{name} (baseline)")
    if numeric and _wants_log_scale(trials[x]):
        ax.set_xscale("log")
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_xlabel(x.removeprefix("param."))
    ax.set_ylabel(value.removeprefix("metric."))
    ax.legend(fontsize="small")
    return ax


def plot_training_curves(histories: pd.DataFrame, metric: str, ax: Axes | None = None) -> Axes:
    """Per configuration, the mean over replicates by step with a band spanning the replicates."""
    ax = ax if ax is not None else plt.subplots()[1]
    name = metric.removeprefix("metric.")
    points = histories[histories["metric"] == name]
    labels = [config_label(h, b) for h, b in zip(points["config_hash"], points["baseline"], strict=True)]
    sns.lineplot(
        data=points.assign(configuration=labels),
        x="step",
        y="value",
        hue="configuration",
        estimator="mean",
        errorbar=("pi", 100),
        ax=ax,
    )
    ax.set_ylabel(name)
    if ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), fontsize="small", title="configuration")
    return ax


def save_figure(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write `fig` as PNG and SVG; `name` may be a metric name, so characters unsafe in files become `_`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
    paths = [out_dir / f"{stem}.{fmt}" for fmt in FIGURE_FORMATS]
    for path in paths:
        fig.savefig(path)
    return paths


def _wants_log_scale(values: pd.Series) -> bool:
    finite = values[np.isfinite(values)]
    return bool(len(finite)) and finite.min() > 0 and finite.max() / finite.min() >= _LOG_SCALE_RATIO
