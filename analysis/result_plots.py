"""Figures of a study's results as a whole: accuracy against cost with the Pareto front, accuracy against
realised sparsity, compute per configuration, retrieval metrics, and two studies side by side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from ablate.analysis.pareto import pareto_mask
from ablate.analysis.plots import axis_label, config_labels, new_axes, wants_log_scale
from ablate.analysis.runs import metric_column, metric_name, param_column
from ablate.analysis.stats import summarise, summarise_metrics

PARAMS_TOTAL = "metric.model/params_total"
PARAMS_REALISED = "metric.compression/params_realised"
REALISED_SPARSITY = "metric.compression/realised_sparsity"
EXPECTED_SPARSITY = "metric.compression/expected_sparsity"
STATE_COLOURS = {"finished": "C0", "pruned": "C1", "failed": "C3", "cancelled": "C5", "running": "C7"}


def plot_tradeoff(
    runs: pd.DataFrame,
    metric: str,
    cost: str,
    direction: str = "maximize",
    params: Sequence[str] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Per configuration, mean `metric` against mean `cost` (parameters, latency; lower is better) with 95%
    CIs on both, the Pareto front as a step line, and baselines marked with a star and their name."""
    ax = new_axes(ax)
    y, x = metric_name(metric_column(metric)), metric_name(metric_column(cost))
    table = summarise_metrics(runs, [y, x], params=params)
    table = table[table[f"mean:{y}"].notna() & table[f"mean:{x}"].notna()]
    front = table[pareto_mask(table, [f"mean:{y}", f"mean:{x}"], [direction, "minimize"])]
    is_baseline = table["baseline"].notna()
    for subset, marker, size in ((table[~is_baseline], "o", 30), (table[is_baseline], "*", 160)):
        ax.errorbar(
            subset[f"mean:{x}"],
            subset[f"mean:{y}"],
            xerr=subset[f"ci95:{x}"].fillna(0),
            yerr=subset[f"ci95:{y}"].fillna(0),
            fmt="none",
            ecolor="0.6",
            elinewidth=1,
        )
        ax.scatter(
            subset[f"mean:{x}"],
            subset[f"mean:{y}"],
            marker=marker,
            s=size,
            color="C0" if marker == "o" else "C3",
            zorder=3,
            label="configuration" if marker == "o" else "baseline",
        )
    for _, row in table[is_baseline].iterrows():
        ax.annotate(
            row["baseline"],
            (row[f"mean:{x}"], row[f"mean:{y}"]),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize="small",
        )
    front = front.sort_values(f"mean:{x}")
    ax.step(front[f"mean:{x}"], front[f"mean:{y}"], where="post", color="C2", label="Pareto front")
    if wants_log_scale(table[f"mean:{x}"]):
        ax.set_xscale("log")
    ax.set_xlabel(f"{x} (lower is better)")
    ax.set_ylabel(f"{y} ({'higher' if direction == 'maximize' else 'lower'} is better)")
    ax.legend(fontsize="small")
    return ax


def realised_sparsity(runs: pd.DataFrame) -> pd.Series | None:
    """Each compressed run's realised sparsity as its trainer logged it after the last prune: the fraction of the
    original student's prunable parameters of the masked kinds removed, the quantity p estimates and q targets
    (the run's `ablate.sparsity` tag says which kinds; whole-model sizes are `model/params_*`); NaN for a run
    stopped before its first prune. If no run pruned, the last expected sparsity p; None without compression."""
    for column, name in ((REALISED_SPARSITY, "realised sparsity"), (EXPECTED_SPARSITY, "expected sparsity")):
        if column in runs.columns and runs[column].notna().any():
            return runs[column].rename(name)
    return None


def plot_metric_vs_sparsity(runs: pd.DataFrame, metric: str, schedule: str = "stages", ax: Axes | None = None) -> Axes:
    """`metric` against realised sparsity, one series per stage schedule (the `schedule` param) when it
    varies, the mean per configuration joined in order of sparsity (TinyCLIP's progressive compression)."""
    ax = new_axes(ax)
    value, by = metric_column(metric), param_column(schedule)
    sparsity = realised_sparsity(runs)
    if sparsity is None:
        raise ValueError("the runs logged no compression metrics")
    frame = runs.assign(_sparsity=sparsity)
    frame = frame[frame[value].notna() & frame["_sparsity"].notna() & frame["baseline"].isna()]
    series = frame.groupby(by, sort=True) if by in frame and frame[by].nunique() > 1 else [(None, frame)]
    for i, (level, group) in enumerate(series):
        summary = summarise(group, value, by="_sparsity", params=[]).sort_values("_sparsity")
        label = "configurations" if level is None else f"{axis_label(by)}={level}"
        ax.errorbar(
            summary["_sparsity"],
            summary["mean"],
            yerr=summary["ci95"].fillna(0),
            fmt="o-",
            color=f"C{i}",
            capsize=3,
            label=label,
        )
    baselines = runs[runs["baseline"].notna()].groupby("baseline")[value].mean()
    for name, level in baselines.dropna().items():
        ax.axhline(level, linestyle="--", color="0.4", label=f"{name} (baseline)")
    ax.set_xlabel(str(sparsity.name))
    ax.set_ylabel(axis_label(value))
    ax.legend(fontsize="small")
    return ax


def plot_compute(runs: pd.DataFrame, metric: str, params: Sequence[str] | None = None, ax: Axes | None = None) -> Axes:
    """Compute spent per configuration summed over all its runs, stacked by trial state: failed and pruned
    runs cost compute too, and a study's bill includes them."""
    value = metric_column(metric)
    frame = runs.assign(configuration=config_labels(runs, params))
    table = frame.pivot_table(index="configuration", columns="state", values=value, aggfunc="sum", fill_value=0)
    table = table[[s for s in STATE_COLOURS if s in table.columns]]
    table = table.loc[table.sum(axis=1).sort_values().index]
    ax = new_axes(ax, figsize=(6.4, max(2.5, 0.35 * len(table) + 1)))
    table.plot.barh(stacked=True, color=[STATE_COLOURS[s] for s in table.columns], ax=ax, width=0.7)
    ax.set_xlabel(f"{axis_label(value)} (sum over runs)")
    ax.set_ylabel("")
    ax.legend(title="trial state", fontsize="small")
    return ax


def plot_retrieval(
    runs: pd.DataFrame,
    metrics: Sequence[str],
    configurations: Sequence[str] | None = None,
    params: Sequence[str] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Grouped bars of retrieval metrics (mean ± 95% CI over replicates) per configuration; `configurations`
    (config hashes) selects which, since a bar per configuration of a large study would be unreadable."""
    ax = new_axes(ax, figsize=(7.5, 4.0))
    chosen = runs if configurations is None else runs[runs["config_hash"].isin(configurations)]
    labels = config_labels(chosen, params)
    table = summarise_metrics(chosen.assign(_label=labels), metrics, by="_label", params=[])
    names = [metric_name(metric_column(m)) for m in metrics]
    width = 0.8 / len(table)
    positions = np.arange(len(names))
    for i, (_, row) in enumerate(table.iterrows()):
        ax.bar(
            positions + (i - (len(table) - 1) / 2) * width,
            [row[f"mean:{n}"] for n in names],
            width,
            yerr=[0 if np.isnan(row[f"ci95:{n}"]) else row[f"ci95:{n}"] for n in names],
            capsize=2,
            color=f"C{i % 10}",
            label=row["_label"],
        )
    ax.set_xticks(positions, [n.removeprefix("eval/retrieval/") for n in names])
    ax.set_ylabel("recall (mean ± 95% CI)")
    ax.legend(fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left", title="configuration")
    return ax


def plot_study_comparison(summaries: dict[str, pd.DataFrame], metric: str, ax: Axes | None = None) -> Axes:
    """Mean ± 95% CI of `metric` per configuration, one colour per study, configurations listed by label.

    `summaries` maps a study name to its `summarise` table with a `configuration` label column.
    """
    rows = sum(len(s) for s in summaries.values())
    ax = new_axes(ax, figsize=(6.4, max(2.5, 0.35 * rows + 1)))
    offset = 0
    for i, (study, summary) in enumerate(summaries.items()):
        positions = np.arange(offset, offset + len(summary))
        ax.errorbar(
            summary["mean"], positions, xerr=summary["ci95"].fillna(0), fmt="o", color=f"C{i}", capsize=3, label=study
        )
        offset += len(summary)
    labels = [label for summary in summaries.values() for label in summary["configuration"]]
    ax.set_yticks(np.arange(rows), labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric_name(metric)} (mean ± 95% CI)")
    ax.legend(fontsize="small", title="study")
    sns.despine(ax=ax, left=True)
    return ax
