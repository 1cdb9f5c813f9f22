"""The report's tables: results per configuration with CIs and the comparison to the baseline, every trial
with its state, and parameter importances; numeric first (`objective_results`), formatted for reading last."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ablate.analysis.compare import COMPARISON_COLUMNS, Method, compare_to_baseline
from ablate.analysis.formatting import table_number
from ablate.analysis.pareto import pareto_front
from ablate.analysis.plots import axis_label
from ablate.analysis.result_plots import realised_sparsity
from ablate.analysis.runs import metric_column, metric_columns, metric_name
from ablate.analysis.stats import format_mean_ci, summarise, summarise_metrics
from ablate.analysis.study_data import StudyData

SIGNIFICANCE = 0.05


def objective_results(data: StudyData, objective: dict[str, str], method: Method = "auto") -> pd.DataFrame:
    """One row per configuration, best first: label, params, n, mean, std, ci95; with a baseline, the
    difference to it (`diff`, `diff_low`, `diff_high`, `p_value`, `p_holm`, `method`); in multi-objective
    studies, whether the configuration is on the Pareto front (`pareto`)."""
    done = data.done.assign(configuration=data.labels)
    summary = summarise(done, objective["metric"], params=data.params, direction=objective["direction"])
    labels = done.groupby("config_hash", dropna=False)["configuration"].first()
    summary.insert(0, "configuration", summary["config_hash"].map(labels))
    if data.has_baseline:
        baseline = data.reference_baseline
        comparison = compare_to_baseline(done, objective["metric"], baseline, method=method)
        summary = summary.merge(comparison[["config_hash", *COMPARISON_COLUMNS]], on="config_hash", how="left")
        summary.attrs["baseline"] = baseline
    if len(data.objectives) > 1:
        wide = summarise_metrics(done, [o["metric"] for o in data.objectives], params=[])
        front = dict(zip(wide["config_hash"], pareto_front(wide, data.objectives), strict=True))
        summary["pareto"] = summary["config_hash"].map(front)
    return summary


def results_table(results: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """`objective_results` for reading: `mean ± 95% CI`, the difference to the baseline with its interval,
    p-values (Holm-adjusted marked * below 0.05) and the test used; the config hash last."""
    table = results[["configuration", *(c for c in results.columns if c.startswith("param.")), "n"]].copy()
    table["mean ± 95% CI"] = format_mean_ci(results, digits)
    if "diff" in results.columns:
        baseline = results.attrs.get("baseline", "baseline")
        table[f"Δ vs {baseline} [95% CI]"] = [
            "" if np.isnan(d) else _diff_text(d, low, high, digits)
            for d, low, high in zip(results["diff"], results["diff_low"], results["diff_high"], strict=True)
        ]
        table["p"] = results["p_value"].map(_p_text)
        table["p (Holm)"] = [_p_text(p) + (" *" if p < SIGNIFICANCE else "") for p in results["p_holm"]]
        table["test"] = results["method"].fillna("")
    if "pareto" in results.columns:
        table["Pareto"] = results["pareto"].map({True: "✓", False: ""})
    table["config_hash"] = results["config_hash"]
    return table.rename(columns=lambda c: axis_label(c) if c.startswith("param.") else c)


def trials_table(data: StudyData) -> pd.DataFrame:
    """Every trial run, failed and pruned ones included (they are excluded from statistics, not hidden):
    its configuration, seed, state, objective values, run time and error."""
    runs = data.runs
    columns = {
        "trial": runs["trial_number"],
        "configuration": data.labels,
        "seed": runs["seed"],
        "state": runs["state"],
        **{o["metric"]: runs.get(metric_column(o["metric"])) for o in data.objectives},
        "duration (s)": runs["duration_s"].round(1),
        "error": runs["error"].fillna(""),
        "run_id": runs["run_id"],
    }
    return pd.DataFrame(columns)


def trial_counts(runs: pd.DataFrame) -> str:
    """`10 trials: 8 finished, 1 failed, 1 pruned` (states in a fixed order, then any others)."""
    counts = runs["state"].value_counts()
    order = [s for s in ("finished", "pruned", "failed", "running") if s in counts] + sorted(
        s for s in counts.index if s not in ("finished", "pruned", "failed", "running")
    )
    return f"{len(runs)} trials: " + ", ".join(f"{counts[s]} {s}" for s in order)


def _diff_text(diff: float, low: float, high: float, digits: int) -> str:
    interval = "" if np.isnan(low) else f" [{table_number(low, digits, True)}, {table_number(high, digits, True)}]"
    return f"{table_number(diff, digits, True)}{interval}"


def _p_text(p: float) -> str:
    if np.isnan(p):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def final_metrics_table(data: StudyData) -> pd.DataFrame:
    """Last logged value of every evaluation metric, mean over finished replicates, per configuration."""
    columns = metric_columns(data.done, "eval/")
    table = data.done.assign(configuration=data.labels).groupby("configuration")[columns].mean()
    return table.rename(columns=metric_name)


COST_METRICS = {
    "efficiency/params_total": "parameters",
    "efficiency/macs_total": "MACs",
    "efficiency/latency_image_ms": "image latency (ms)",
    "efficiency/latency_text_ms": "text latency (ms)",
}


def cost_table(data: StudyData) -> pd.DataFrame | None:
    """What each configuration costs at inference, mean over finished replicates: parameters, MACs and CPU
    latency of the final (pruned, reparameterised) model, and for compressed runs the realised sparsity, so
    that an accuracy difference can be read against the parameters and time it buys. None if none logged."""
    done = data.done.assign(configuration=data.labels)
    columns = {metric_column(m): name for m, name in COST_METRICS.items() if metric_column(m) in done}
    sparsity = realised_sparsity(done)
    if sparsity is not None:
        done, columns = done.assign(_sparsity=sparsity), {**columns, "_sparsity": sparsity.name}
    if not columns:
        return None
    return done.groupby("configuration")[list(columns)].mean().rename(columns=columns)
