"""Tracking data to tables, plots and reports; reads MLflow only, never imports the training code.

The names below load their module on first use (PEP 562): `ablate train` and the launcher import one small
helper (`ablate.analysis.formatting`) and should not pay for pandas, matplotlib and scipy, which the report
modules import (1.4 s of every training process's shutdown on a 2-core CPU when this file imported them all).
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULE_OF: dict[str, str] = {
    "Difference": "compare",
    "bootstrap": "compare",
    "compare_to_baseline": "compare",
    "difference": "compare",
    "holm": "compare",
    "welch": "compare",
    "build_comparison_report": "comparison_report",
    "comparison_table": "comparison_report",
    "shared_objectives": "comparison_report",
    "PlannedFigure": "figures",
    "plan_figures": "figures",
    "load_histories": "histories",
    "Importances": "importance",
    "param_importances": "importance",
    "plot_heatmap": "param_plots",
    "plot_metric_curve": "param_plots",
    "plot_metric_vs_param": "param_plots",
    "plot_training_curves": "param_plots",
    "pareto_front": "pareto",
    "pareto_mask": "pareto",
    "config_label": "plots",
    "config_labels": "plots",
    "save_figure": "plots",
    "set_style": "plots",
    "MOBILECLIP_LAMBDA_FLICKR": "references",
    "MOBILECLIP_LAMBDA_IN1K": "references",
    "PaperCurve": "references",
    "paper_reference": "references",
    "NoFinishedTrialsError": "report",
    "ReportError": "report",
    "build_report": "report",
    "plot_compute": "result_plots",
    "plot_metric_vs_sparsity": "result_plots",
    "plot_retrieval": "result_plots",
    "plot_study_comparison": "result_plots",
    "plot_tradeoff": "result_plots",
    "realised_sparsity": "result_plots",
    "StudyNotFoundError": "runs",
    "finished": "runs",
    "load_runs": "runs",
    "metric_columns": "runs",
    "study_info": "runs",
    "format_mean_ci": "stats",
    "summarise": "stats",
    "summarise_metrics": "stats",
    "varied_params": "stats",
    "StudyData": "study_data",
    "load_study_data": "study_data",
    "header_markdown": "summary",
    "reproduce_markdown": "summary",
    "summary_markdown": "summary",
    "cost_table": "tables",
    "final_metrics_table": "tables",
    "objective_results": "tables",
    "results_table": "tables",
    "trials_table": "tables",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
