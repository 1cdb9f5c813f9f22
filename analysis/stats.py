"""Aggregation of replicate runs into one row per configuration.

Replicates differ only by seed, so a configuration's effect is its mean over seeds; the Student-t
interval says how far that mean can be trusted with the handful of seeds an ablation can afford.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from pandas.core.groupby import SeriesGroupBy
from scipy import stats

from ablate.analysis.formatting import table_number
from ablate.analysis.runs import PARAM_PREFIX, metric_column, metric_name, param_column

SUMMARY_COLUMNS = ["n", "mean", "std", "ci95"]


def varied_params(runs: pd.DataFrame) -> list[str]:
    """Param columns taking more than one value across `runs`, except the seed (not a design choice)."""
    return [
        column
        for column in runs.columns
        if column.startswith(PARAM_PREFIX) and column != "param.seed" and runs[column].nunique() > 1
    ]


def t_half_width(std: pd.Series, n: pd.Series, confidence: float = 0.95) -> pd.Series:
    """Half-width of the Student-t confidence interval of a mean; undefined (NaN) below two replicates."""
    n = n.astype(float)
    dof = (n - 1).where(n > 1)
    quantile = stats.t.ppf(0.5 + confidence / 2, dof)
    return pd.Series(quantile * std.to_numpy(dtype=float) / np.sqrt(n), index=std.index)


def summarise(
    runs: pd.DataFrame,
    metric: str,
    by: str = "config_hash",
    *,
    params: Sequence[str] | None = None,
    direction: str | None = None,
) -> pd.DataFrame:
    """Per value of `by`: the configuration's params, n, mean, std (ddof=1) and 95% CI half-width of `metric`.

    `params` defaults to the params that vary across `runs`; `direction` ("maximize"/"minimize") sorts the
    best configuration first. Runs without a value for `metric` do not count as replicates.
    """
    value = metric_column(metric)
    valid = runs[runs[value].notna()]
    groups = valid.groupby(by, dropna=False, sort=False)
    summary = _aggregate(groups[value])
    summary = groups[_config_columns(runs, by, params)].first().join(summary).reset_index()
    if direction is not None:
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
        summary = summary.sort_values("mean", ascending=direction == "minimize", ignore_index=True, kind="stable")
    return summary


def summarise_metrics(
    runs: pd.DataFrame, metrics: Sequence[str], by: str = "config_hash", *, params: Sequence[str] | None = None
) -> pd.DataFrame:
    """`summarise` of several metrics side by side, one row per value of `by`: the configuration's params,
    then `n:<metric>`, `mean:<metric>`, `std:<metric>`, `ci95:<metric>` per metric (bare metric names).

    Multi-objective views (Pareto fronts, trade-off plots) need every objective of a configuration in one row.
    """
    groups = runs.groupby(by, dropna=False, sort=False)
    table = groups[_config_columns(runs, by, params)].first()
    for metric in metrics:
        column = metric_column(metric)
        stats_ = _aggregate(groups[column])
        table = table.join(stats_.rename(columns=lambda c, m=metric_name(column): f"{c}:{m}"))
    return table.reset_index()


def _aggregate(values: SeriesGroupBy) -> pd.DataFrame:
    summary = values.agg(n="count", mean="mean", std="std")
    summary["ci95"] = t_half_width(summary["std"], summary["n"])
    return summary


def _config_columns(runs: pd.DataFrame, by: str, params: Sequence[str] | None) -> list[str]:
    """The columns that describe a configuration: its baseline name, then its params (default: the varied)."""
    columns = [param_column(p) for p in (varied_params(runs) if params is None else params)]
    columns = [c for c in columns if c != by and c in runs.columns]
    if "baseline" in runs.columns and by != "baseline":
        columns.insert(0, "baseline")
    return columns


def format_mean_ci(summary: pd.DataFrame, digits: int = 4) -> pd.Series:
    """`mean ± ci95` as text for tables; a single replicate shows its value alone since it has no interval."""
    return pd.Series(
        [
            table_number(mean, digits) if np.isnan(ci) else f"{table_number(mean, digits)} ± {table_number(ci, digits)}"
            for mean, ci in zip(summary["mean"], summary["ci95"], strict=True)
        ],
        index=summary.index,
        dtype=object,
    )
