"""The report's prose, generated from the data: the study's question and spec, a short summary of the
results a reader would otherwise dig out of the tables, and the commands that reproduce the study."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ablate.analysis.compare import MIN_WELCH_N, Difference, difference
from ablate.analysis.formatting import table_number
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
    worst; trial counts by state; and the compute spent, when the runs logged it. A configuration is called
    best only when it beats the runner-up beyond the noise; a tie (all configurations alike) is said as such."""
    lines = []
    for objective in data.objectives:
        results = objective_results(data, objective)
        trials = results[results["baseline"].isna()]
        if trials.empty:
            continue
        best = trials.iloc[0]
        name = f"`{objective['metric']}` ({objective['direction']})"
        tied = len(trials) > 1 and np.allclose(trials["mean"], best["mean"], rtol=0, atol=1e-12)
        if tied:  # e.g. every configuration at chance: there is no best one, and no worst
            lines.append(
                f"- **No best configuration** by {name}: all {len(trials)} configurations scored "
                f"{table_number(best['mean'])} (a tie)."
            )
        elif len(trials) > 1 and not _ahead(data, objective, best, trials.iloc[1]):
            runner_up = trials.iloc[1]
            lines.append(
                f"- **Highest mean** by {name}: {_config_text(best)}; not distinguishable from the runner-up, "
                f"{_config_text(runner_up)}: {_versus(data, objective, best, runner_up)}."
            )
        else:
            lines.append(f"- **Best configuration** by {name}: {_config_text(best)}.")
        if "diff" in results.columns:
            lines.append(f"  - vs baseline `{results.attrs['baseline']}`: {_difference_text(best)}.")
        elif len(trials) > 1 and not tied:
            worst = trials.iloc[-1]
            lines.append(f"  - vs the worst, {_config_text(worst)}: {_versus(data, objective, best, worst)}.")
        if "pareto" in results.columns:
            lines.append(f"  - {int(results['pareto'].sum())} configuration(s) on the Pareto front of all objectives.")
    lines.append(f"- **Trials**: {trial_counts(data.runs)}; statistics use finished trials only.")
    lines.append(f"- **Compute**: {_compute_text(data.runs)}.")
    return "### Summary\n\n" + "\n".join(lines)


def reproduce_markdown(data: StudyData) -> str:
    """The commands that rerun the study and rebuild this report."""
    uri, launched, record = data.info["tracking_uri"], data.info.get("study_file"), data.info.get("study_record")
    if launched:
        launch = (
            f"ablate launch {launched}   # the file it was launched from; continues the study if its storage exists"
        )
    else:  # launched before the file was recorded: the recorded copy is what `ablate resume` reads
        launch = f"ablate resume {data.name}   # from the study's recorded copy; continues it if its storage exists"
    copy = (
        f"\n\nThe launch recorded a self-contained copy of the study (base config inlined) at `{record}`."
        if record
        else ""
    )
    return (
        f"## Reproduce\n\n```bash\n{launch}\nablate report {data.name} --tracking-uri {uri}\n```{copy}\n\n"
        "Or rerun this notebook as it is: its first cell names the study and the tracking store."
    )


def _config_text(row: pd.Series) -> str:
    interval = "" if np.isnan(row["ci95"]) else f" ± {table_number(row['ci95'])}"
    return f"{row['configuration']}: {table_number(row['mean'])}{interval} (n={row['n']})"


def _difference_text(row: pd.Series) -> str:
    result = Difference(row["diff"], row["diff_low"], row["diff_high"], row["p_value"], row["method"])
    return _result_text(result, row["p_holm"])


def _versus(data: StudyData, objective: dict[str, str], best: pd.Series, worst: pd.Series) -> str:
    return _result_text(difference(_replicates(data, objective, best), _replicates(data, objective, worst)))


def _ahead(data: StudyData, objective: dict[str, str], best: pd.Series, runner_up: pd.Series) -> bool:
    """Whether the best configuration beats the runner-up beyond the noise of their replicates (p < 0.05);
    with fewer than two replicates on a side there is no test, so no claim; groups without spread differ exactly."""
    result = difference(_replicates(data, objective, best), _replicates(data, objective, runner_up))
    if result.method == "constant":  # no spread at all (model sizes): any difference is exact
        return result.diff != 0
    return not np.isnan(result.p_value) and result.p_value < SIGNIFICANCE


def _replicates(data: StudyData, objective: dict[str, str], row: pd.Series) -> np.ndarray:
    """The finished replicates' values of one configuration (a row of `objective_results`)."""
    value = metric_column(objective["metric"])
    return data.done.loc[data.done["config_hash"] == row["config_hash"], value].dropna().to_numpy()


def _result_text(result: Difference, p_holm: float | None = None) -> str:
    """A difference with its interval and test, and what the reader should make of it."""
    diff, low, high = (table_number(value, signed=True) for value in (result.diff, result.low, result.high))
    if np.isnan(result.p_value):
        reason = "fewer than two replicates on one side" if result.method == "n<2" else "no spread in either group"
        return f"{diff} ({reason}: no interval or test)"
    text = f"{diff} [95% CI {low}, {high}], "
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
