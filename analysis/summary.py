"""The report's prose, generated from the data: the study's question and spec, a short summary of the
results a reader would otherwise dig out of the tables, and the commands that reproduce the study."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ablate.analysis.compare import MIN_WELCH_N, Difference, difference
from ablate.analysis.runs import COMPUTE_PREFIX, metric_column, metric_columns, metric_name
from ablate.analysis.study_data import StudyData
from ablate.analysis.tables import SIGNIFICANCE, objective_results, trial_counts


def header_markdown(data: StudyData) -> str:
    """Question, tracking location, objectives and the full study spec (from `study/study.json` when the
    orchestrator logged it, otherwise rebuilt from the parent run's tags)."""
    info = data.info
    question = info["description"] or "_The study file gives no description._"
    objectives = "\n".join(f"- `{o['metric']}` ({o['direction']})" for o in data.objectives)
    varied = ", ".join(f"`{p}`" for p in info["search_space"]) or "none (replicates only)"
    spec = json.dumps(info["spec"], indent=2, default=str)
    return (
        f"## Study `{data.name}`\n\n**Question.** {question}\n\n"
        f"- tracking store: `{info['tracking_uri']}`, parent run `{info['parent_run_id']}`\n"
        f"- {trial_counts(data.runs)}; {data.done['config_hash'].nunique()} finished configurations\n"
        f"- search space: {varied}\n\nObjectives:\n\n{objectives}\n\n"
        f"<details><summary>Study spec (from {info['spec_source']})</summary>\n\n```json\n{spec}\n```\n\n</details>"
    )


def summary_markdown(data: StudyData) -> str:
    """Best configuration against the baseline (difference, CI, p-value) or, without a baseline, against the
    worst; trial counts by state; and the compute spent, when the runs logged it."""
    lines = []
    for objective in data.objectives:
        results = objective_results(data, objective)
        trials = results[results["baseline"].isna()]
        if trials.empty:
            continue
        best = trials.iloc[0]
        name = f"`{objective['metric']}` ({objective['direction']})"
        lines.append(f"- **Best configuration** by {name}: {_config_text(best)}.")
        if "diff" in results.columns:
            lines.append(f"  - vs baseline `{results.attrs['baseline']}`: {_difference_text(best)}.")
        elif len(trials) > 1:
            worst = trials.iloc[-1]
            lines.append(f"  - vs the worst, {_config_text(worst)}: {_best_vs_worst(data, objective, best, worst)}.")
        if "pareto" in results.columns:
            lines.append(f"  - {int(results['pareto'].sum())} configuration(s) on the Pareto front of all objectives.")
    lines.append(f"- **Trials**: {trial_counts(data.runs)}; statistics use finished trials only.")
    lines.append(f"- **Compute**: {_compute_text(data.runs)}.")
    return "### Summary\n\n" + "\n".join(lines)


def reproduce_markdown(data: StudyData) -> str:
    """The commands that rerun the study and rebuild this report."""
    uri = data.info["tracking_uri"]
    return (
        "## Reproduce\n\n"
        f"```bash\nablate launch ablations/studies/{data.name}.yaml   # the study file it was launched from; "
        f"continues the study if its storage exists\nablate report {data.name} --tracking-uri {uri}\n```\n\n"
        "Or rerun this notebook as it is: its first cell names the study and the tracking store."
    )


def _config_text(row: pd.Series) -> str:
    interval = "" if np.isnan(row["ci95"]) else f" ± {_number(row['ci95'])}"
    return f"{row['configuration']}: {_number(row['mean'])}{interval} (n={row['n']})"


def _number(value: float) -> str:
    """Four decimals for accuracies, four significant digits for counts such as parameters."""
    return f"{value:.4g}" if abs(value) >= 1000 else f"{value:.4f}"


def _signed(value: float) -> str:
    return ("+" if value >= 0 else "") + _number(value)


def _difference_text(row: pd.Series) -> str:
    result = Difference(row["diff"], row["diff_low"], row["diff_high"], row["p_value"], row["method"])
    return _result_text(result, row["p_holm"])


def _best_vs_worst(data: StudyData, objective: dict[str, str], best: pd.Series, worst: pd.Series) -> str:
    value = metric_column(objective["metric"])
    groups = [data.done.loc[data.done["config_hash"] == row["config_hash"], value].dropna() for row in (best, worst)]
    return _result_text(difference(groups[0].to_numpy(), groups[1].to_numpy()))


def _result_text(result: Difference, p_holm: float | None = None) -> str:
    """A difference with its interval and test, and what the reader should make of it."""
    if np.isnan(result.p_value):
        reason = "fewer than two replicates on one side" if result.method == "n<2" else "no spread in either group"
        return f"{_signed(result.diff)} ({reason}: no interval or test)"
    text = f"{_signed(result.diff)} [95% CI {_signed(result.low)}, {_signed(result.high)}], "
    text += f"{result.method} p = {result.p_value:.3g}"
    if p_holm is not None:
        verdict = "significant" if p_holm < SIGNIFICANCE else "not significant"
        text += f", Holm p = {p_holm:.3g} ({verdict} at {SIGNIFICANCE})"
    if result.method == "bootstrap":
        text += (
            f"; fewer than {MIN_WELCH_N} replicates per group, so the bootstrap has few distinct resamples: "
            "read as indicative"
        )
    return text


def _compute_text(runs: pd.DataFrame) -> str:
    hours = runs["duration_s"].sum() / 3600
    parts = [
        f"{runs[c].sum():.3g} {metric_name(c).removeprefix('compute/')}"
        for c in metric_columns(runs, COMPUTE_PREFIX.removeprefix("metric."))
    ]
    logged = f"{', '.join(parts)} over all runs (failed and pruned included); " if parts else ""
    return f"{logged}{hours:.3g} h of run time in total"
