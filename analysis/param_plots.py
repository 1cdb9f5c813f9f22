"""A metric against the study's parameters: per-value scatter, a λ curve with CI bands, heatmaps of two
parameters, and training curves."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Mapping

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from ablate.analysis.formatting import number
from ablate.analysis.plots import axis_label, config_label, new_axes, wants_log_scale
from ablate.analysis.references import PaperCurve
from ablate.analysis.runs import metric_column, metric_name, param_column
from ablate.analysis.stats import summarise

MAX_HEATMAP_LEVELS = 6  # more distinct values than this (a sampled continuous parameter) are binned
HEATMAP_BINS = 5
STOPPED_STATES = ("pruned", "failed")  # their runs end early: partial curves, drawn apart from the means


def plot_metric_vs_param(
    runs: pd.DataFrame,
    metric: str,
    param: str,
    hue: str | None = None,
    ax: Axes | None = None,
    log: bool = False,
) -> Axes:
    """One point per run, the mean with its 95% CI per param value, and a line per baseline for reference.

    `hue` (another, categorical, parameter) colours runs by its value, so a continuous sampled parameter
    such as the learning rate can be read separately per caption source. The means are joined by a line
    only where some value has more than one run: a line through single runs would suggest a trend. The x axis
    is logarithmic when `log` (the study searched the parameter on a log scale) or the values span a decade.
    """
    ax = new_axes(ax)
    value, x = metric_column(metric), param_column(param)
    trials, baselines = _split_baselines(runs, value)
    positions = _positions(trials[x], ax)
    groups = trials.groupby(param_column(hue), sort=True) if hue else [(None, trials)]
    for i, (level, group) in enumerate(groups):
        colour = f"C{i}"
        label = "runs" if hue is None else f"{axis_label(param_column(hue))}={level}"
        ax.scatter(positions[group.index], group[value], s=18, alpha=0.6, color=colour, label=label)
        summary = summarise(group.assign(_x=positions[group.index]), value, by="_x", params=[])
        summary = summary.sort_values("_x")
        if (summary["n"] > 1).any():
            ax.errorbar(
                summary["_x"],
                summary["mean"],
                yerr=summary["ci95"].fillna(0),
                fmt="o-",
                color=colour,
                capsize=3,
                label="mean ± 95% CI" if hue is None else None,
            )
    _draw_baselines(ax, baselines, value, start=len(groups) if hue else 1)
    if pd.api.types.is_numeric_dtype(trials[x]) and (log or wants_log_scale(trials[x])):
        ax.set_xscale("log")
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(value))
    ax.legend(fontsize="small")
    return ax


def plot_metric_curve(
    runs: pd.DataFrame,
    metric: str,
    param: str,
    reference: PaperCurve | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Mean of `metric` per value of a numeric `param` with its 95% CI as a band (MobileCLIP's λ figure).

    A `reference` curve from a paper goes on a secondary axis in its own units: its scale and benchmark
    differ from the study's, so only the shapes are comparable.
    """
    ax = new_axes(ax)
    value, x = metric_column(metric), param_column(param)
    trials, baselines = _split_baselines(runs, value)
    summary = summarise(trials, value, by=x, params=[]).sort_values(x)
    ax.scatter(trials[x], trials[value], s=14, alpha=0.4, color="C0", label="runs")
    ax.plot(summary[x], summary["mean"], "o-", color="C0", label="mean")
    band = summary["ci95"].fillna(0)
    ax.fill_between(summary[x], summary["mean"] - band, summary["mean"] + band, color="C0", alpha=0.2, label="95% CI")
    _draw_baselines(ax, baselines, value, start=1)
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(value))
    handles, labels = ax.get_legend_handles_labels()
    if reference is not None:
        paper = ax.twinx()
        paper.plot(reference.x, reference.y, "s--", color="0.45", label=reference.label)
        paper.set_ylabel(reference.unit, color="0.35")
        paper.grid(False)
        more_handles, more_labels = paper.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, fontsize="small", loc="best")
    return ax


def plot_heatmap(
    runs: pd.DataFrame,
    metric: str,
    x_param: str,
    y_param: str,
    ax: Axes | None = None,
    log: Collection[str] = (),
) -> Axes:
    """Mean of `metric` over runs per (x, y) pair of parameter values, as an annotated heatmap.

    A parameter with more than `MAX_HEATMAP_LEVELS` values (sampled, not gridded) is binned into
    `HEATMAP_BINS` intervals with edges rounded to two significant digits (geometric for the parameters in
    `log`, searched on a log scale), so cells hold several runs and the axis reads `1e-4–3.2e-4`, not
    `0.0001327441429`. Baseline runs are left out: they are not points of the search space.
    """
    ax = new_axes(ax)
    value, x, y = metric_column(metric), param_column(x_param), param_column(y_param)
    trials, _ = _split_baselines(runs, value)
    logged = {param_column(p) for p in log}
    levels = {p: _levels(trials[p], p in logged) for p in (x, y)}
    cells = pd.DataFrame({x: levels[x], y: levels[y], value: trials[value]})
    table = cells.pivot_table(index=y, columns=x, values=value, aggfunc="mean", observed=True)
    sns.heatmap(
        table.sort_index(ascending=False),
        annot=True,
        fmt=".3g",
        cmap="viridis",
        cbar_kws={"label": f"mean {axis_label(value)}"},
        ax=ax,
    )
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    return ax


def plot_training_curves(
    histories: pd.DataFrame, metric: str, labels: Mapping[str, str] | None = None, ax: Axes | None = None
) -> Axes:
    """Per configuration, the mean over replicates by step with a band spanning the replicates.

    `labels` maps config hashes to legend labels (`config_labels`); by default baselines show their name and
    other configurations the start of their hash. Runs whose `state` column says pruned or failed are not
    averaged in (they stop early): each keeps its partial curve as a thin dotted line ending in a cross.
    """
    ax = new_axes(ax)
    name = metric_name(metric)
    points = histories[histories["metric"] == name]
    if "state" in points.columns:
        _draw_stopped(ax, points[points["state"].isin(STOPPED_STATES)])
        points = points[~points["state"].isin(STOPPED_STATES)]
    labels = [
        labels[h] if labels is not None and h in labels else config_label(h, b)
        for h, b in zip(points["config_hash"], points["baseline"], strict=True)
    ]
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


def _draw_stopped(ax: Axes, points: pd.DataFrame) -> None:
    """Pruned and failed runs' partial curves, one legend entry per state."""
    styles = {"pruned": "0.45", "failed": "black"}
    labelled: set[str] = set()
    for (_, state), run in points.sort_values("step").groupby(["run_id", "state"], sort=False):
        colour = styles.get(state, "0.45")
        label = None if state in labelled else f"{state} (partial)"
        labelled.add(state)
        ax.plot(run["step"], run["value"], linestyle=":", linewidth=1, color=colour, label=label)
        ax.scatter(run["step"].iloc[-1:], run["value"].iloc[-1:], marker="x", color=colour, zorder=3)


def _split_baselines(runs: pd.DataFrame, value: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs with a value for the metric: the trials of the search space, and the baseline runs."""
    valid = runs[runs[value].notna()]
    is_baseline = valid["baseline"].notna()
    return valid[~is_baseline], valid[is_baseline]


def _draw_baselines(ax: Axes, baselines: pd.DataFrame, value: str, start: int) -> None:
    """A dashed horizontal line at each baseline's mean, in colours after those of the data."""
    levels = baselines.groupby("baseline")[value].mean()
    for i, (name, level) in enumerate(levels.items(), start=start):
        ax.axhline(level, linestyle="--", color=f"C{i}", label=f"{name} (baseline)")


def _positions(values: pd.Series, ax: Axes) -> pd.Series:
    """x positions: numeric values as they are; categories at 0, 1, ... in sorted order, named on the axis."""
    if pd.api.types.is_numeric_dtype(values):
        return values
    categories = sorted(values.dropna().astype(str).unique())
    ax.set_xticks(range(len(categories)), categories)
    return values.astype(str).map({c: i for i, c in enumerate(categories)})


def _levels(values: pd.Series, log: bool = False) -> pd.Series:
    """Heatmap levels of a parameter, in order: its values (numbers to 3 significant digits), or bins of a
    numeric one with too many values, edges rounded outwards at the ends so every value falls in a bin."""
    if not pd.api.types.is_numeric_dtype(values):
        return values
    distinct = np.sort(values.dropna().unique())
    if len(distinct) <= MAX_HEATMAP_LEVELS:
        names = [number(v, 3) for v in distinct]
        labelled = values.map(dict(zip(distinct, names, strict=True)))
        return pd.Series(pd.Categorical(labelled, names, ordered=True), index=values.index)
    low, high = float(distinct[0]), float(distinct[-1])
    spaced = np.geomspace if log and low > 0 else np.linspace
    edges = [_significant(e, round) for e in spaced(low, high, HEATMAP_BINS + 1)]
    edges = sorted({_significant(low, math.floor), *edges[1:-1], _significant(high, math.ceil)})
    labels = [f"{number(a, 2)}–{number(b, 2)}" for a, b in itertools.pairwise(edges)]
    return pd.cut(values, edges, include_lowest=True, labels=labels)


def _significant(value: float, rounding: Callable[[float], float], digits: int = 2) -> float:
    """`value` rounded to `digits` significant digits (down, up or to nearest, as `rounding` does)."""
    if value == 0:
        return 0.0
    scale = 10.0 ** (math.floor(math.log10(abs(value))) - digits + 1)
    return float(f"{rounding(value / scale) * scale:.{digits + 2}g}")  # no 3.2000000000000006e-4
