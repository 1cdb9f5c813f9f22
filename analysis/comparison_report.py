"""Two or more studies side by side (`ablate report --compare A B`): their summaries, and each shared
objective per configuration, in one notebook built like a study report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ablate.analysis.report import ReportError, absolute_tracking_uri, check_reportable, render_notebook
from ablate.analysis.study_data import StudyData
from ablate.analysis.tables import objective_results

COMPARISON_TEMPLATE = "comparison_report.py"


def build_comparison_report(
    studies: list[str],
    tracking_uri: str,
    out_dir: Path,
    *,
    execute: bool = True,
    cell_timeout_s: int = 600,
) -> Path:
    """Write `out_dir/report.ipynb` comparing `studies` (and, executed, `report.html` and `figures/`).

    Every study must be reportable on its own; nothing is logged to MLflow, since the comparison belongs to
    no single study's parent run.
    """
    if len(set(studies)) < 2:
        raise ReportError(f"a comparison needs at least two different studies, got {studies}")
    tracking_uri = absolute_tracking_uri(tracking_uri)
    for study in studies:
        check_reportable(study, tracking_uri)
    parameters = {"studies": list(studies), "tracking_uri": tracking_uri}
    return render_notebook(COMPARISON_TEMPLATE, parameters, Path(out_dir), execute, cell_timeout_s)


def shared_objectives(studies: dict[str, StudyData]) -> list[dict[str, str]]:
    """Objectives of the first study that every other study also has (same metric, same direction)."""
    first, *others = studies.values()
    return [o for o in first.objectives if all(o in data.objectives for data in others)]


def comparison_table(studies: dict[str, StudyData], objective: dict[str, str]) -> pd.DataFrame:
    """Per study: trials by state, configurations, and the best configuration with its mean ± 95% CI."""
    rows = []
    for name, data in studies.items():
        results = objective_results(data, objective)
        trials = results[results["baseline"].isna()]
        best = trials.iloc[0] if len(trials) else None
        rows.append(
            {
                "study": name,
                "question": data.info["description"],
                "trials": len(data.runs),
                **{state: int((data.runs["state"] == state).sum()) for state in ("finished", "pruned", "failed")},
                "configurations": int(trials["config_hash"].nunique()),
                "best configuration": "" if best is None else best["configuration"],
                "best mean": float("nan") if best is None else best["mean"],
                "best ci95": float("nan") if best is None else best["ci95"],
            }
        )
    return pd.DataFrame(rows)
