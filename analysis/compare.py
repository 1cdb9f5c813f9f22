"""Each configuration against the baseline: difference of means, its confidence interval and a p-value.

Replicate counts in ablations are small and variances differ between configurations, so the default test is
Welch's (no equal-variance assumption). Below three replicates per group the t-interval rests on a variance
estimated from two values; the bootstrap is then used instead (it assumes no normality, but with so few
replicates it has few distinct resamples, so read it as descriptive). Testing many configurations against one
baseline inflates false positives, hence Holm's step-down correction, which controls the family-wise error
rate without Bonferroni's loss of power.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from ablate.analysis.runs import metric_column

Method = Literal["auto", "welch", "bootstrap"]
MIN_WELCH_N = 2
COMPARISON_COLUMNS = ["diff", "diff_low", "diff_high", "p_value", "p_holm", "method"]


@dataclass(frozen=True)
class Difference:
    """Mean of `a` minus mean of `b`, with a confidence interval and a two-sided p-value for "no difference"."""

    diff: float
    low: float
    high: float
    p_value: float
    method: str


def welch(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> Difference:
    """Welch–Satterthwaite interval of mean(a) - mean(b) and Welch's t-test p-value."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = a.mean() - b.mean()
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = np.sqrt(va + vb)
    if se == 0:  # identical replicates: no spread to test against
        return Difference(diff, np.nan, np.nan, np.nan, "welch")
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + confidence / 2, dof) * se
    # Welch's t-test from the same se and dof: scipy's ttest_ind warns of "catastrophic cancellation" (a red
    # box in the report) whenever one group is constant, such as a dense baseline's parameter count
    p_value = 2 * stats.t.sf(abs(diff) / se, dof)
    return Difference(diff, diff - half, diff + half, float(p_value), "welch")


def bootstrap(
    a: np.ndarray, b: np.ndarray, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> Difference:
    """Percentile bootstrap interval of mean(a) - mean(b), resampling each group with replacement.

    The p-value is twice the smaller tail of the resampled differences beyond zero, counted with the usual
    +1 correction so it is never exactly 0; it agrees with the interval (p < 1 - confidence roughly when the
    interval excludes 0). A fixed `seed` makes reports reproducible.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    means_a = a[rng.integers(0, len(a), (n_resamples, len(a)))].mean(axis=1)
    means_b = b[rng.integers(0, len(b), (n_resamples, len(b)))].mean(axis=1)
    diffs = means_a - means_b
    tail = (1 - confidence) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    extreme = min((diffs <= 0).sum(), (diffs >= 0).sum())
    p_value = min(1.0, 2 * (extreme + 1) / (n_resamples + 1))
    return Difference(a.mean() - b.mean(), float(low), float(high), p_value, "bootstrap")


def holm(p_values: np.ndarray | pd.Series) -> np.ndarray:
    """Holm-adjusted p-values: the i-th smallest of m is multiplied by (m - i + 1), then made monotone.

    NaN p-values (untestable comparisons) stay NaN and do not count towards m.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def compare_to_baseline(
    runs: pd.DataFrame,
    metric: str,
    baseline: str | None = None,
    *,
    by: str = "config_hash",
    method: Method = "auto",
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per value of `by` outside the baseline: n, mean, and the difference to the baseline's mean.

    `runs` should hold finished runs only. `baseline` names the baseline (the `baseline` column); it may be
    left out when the runs hold exactly one. Other named baselines are compared like any configuration: a
    study that runs plain CLIP beside the MobileCLIP recipe tests both its arms against the recipe.
    `method="auto"` uses Welch when both groups have at least three replicates, else the bootstrap.
    Comparisons with fewer than two replicates on either side have no interval or p-value.
    `p_holm` adjusts the p-values across all configurations of the table.
    """
    if method not in ("auto", "welch", "bootstrap"):
        raise ValueError(f"method must be 'auto', 'welch' or 'bootstrap', got {method!r}")
    value = metric_column(metric)
    valid = runs[runs[value].notna()]
    names = valid["baseline"].dropna().unique().tolist()
    if baseline is None:
        if len(names) != 1:
            raise ValueError(f"name the baseline to compare against; the runs hold {names or 'none'}")
        baseline = names[0]
    reference = valid.loc[valid["baseline"] == baseline, value].to_numpy(dtype=float)
    if not len(reference):
        raise ValueError(f"no finished run of baseline {baseline!r} has a value for {metric!r}")
    rows = []
    for key, group in valid[valid["baseline"] != baseline].groupby(by, sort=False, dropna=False):
        values = group[value].to_numpy(dtype=float)
        result = difference(values, reference, method, confidence, n_resamples, seed)
        rows.append(
            {
                by: key,
                "n": len(values),
                "mean": values.mean(),
                "baseline": baseline,
                "baseline_n": len(reference),
                "baseline_mean": reference.mean(),
                "diff": result.diff,
                "diff_low": result.low,
                "diff_high": result.high,
                "p_value": result.p_value,
                "method": result.method,
            }
        )
    table = pd.DataFrame(
        rows, columns=[by, "n", "mean", "baseline", "baseline_n", "baseline_mean", *COMPARISON_COLUMNS]
    )
    table["p_holm"] = holm(table["p_value"])
    return table


def difference(
    values: np.ndarray,
    reference: np.ndarray,
    method: Method = "auto",
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Difference:
    """mean(values) - mean(reference) by `method` ("auto": Welch from three replicates per group, else the
    bootstrap); no interval or p-value below two replicates on either side."""
    if min(len(values), len(reference)) < 2:
        return Difference(values.mean() - reference.mean(), np.nan, np.nan, np.nan, "n<2")
    if values.var() == 0 and reference.var() == 0:  # constant groups (model sizes): nothing to test
        return Difference(values.mean() - reference.mean(), np.nan, np.nan, np.nan, "constant")
    if method == "welch" or (method == "auto" and min(len(values), len(reference)) >= MIN_WELCH_N):
        return welch(values, reference, confidence)
    return bootstrap(values, reference, confidence, n_resamples, seed)
