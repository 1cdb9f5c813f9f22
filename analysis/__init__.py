"""Tracking data to tables, plots and reports; reads MLflow only, never imports the training code."""

from ablate.analysis.compare import Difference, bootstrap, compare_to_baseline, difference, holm, welch
from ablate.analysis.comparison_report import build_comparison_report, comparison_table, shared_objectives
from ablate.analysis.figures import PlannedFigure, plan_figures
from ablate.analysis.histories import load_histories
from ablate.analysis.importance import Importances, param_importances
from ablate.analysis.param_plots import plot_heatmap, plot_metric_curve, plot_metric_vs_param, plot_training_curves
from ablate.analysis.pareto import pareto_front, pareto_mask
from ablate.analysis.plots import config_label, config_labels, save_figure, set_style
from ablate.analysis.references import MOBILECLIP_LAMBDA_FLICKR, MOBILECLIP_LAMBDA_IN1K, PaperCurve, paper_reference
from ablate.analysis.report import NoFinishedTrialsError, ReportError, build_report
from ablate.analysis.result_plots import (
    plot_compute,
    plot_metric_vs_sparsity,
    plot_retrieval,
    plot_study_comparison,
    plot_tradeoff,
    realised_sparsity,
)
from ablate.analysis.runs import StudyNotFoundError, finished, load_runs, metric_columns, study_info
from ablate.analysis.stats import format_mean_ci, summarise, summarise_metrics, varied_params
from ablate.analysis.study_data import StudyData, load_study_data
from ablate.analysis.summary import header_markdown, reproduce_markdown, summary_markdown
from ablate.analysis.tables import cost_table, final_metrics_table, objective_results, results_table, trials_table

__all__ = [
    "MOBILECLIP_LAMBDA_FLICKR",
    "MOBILECLIP_LAMBDA_IN1K",
    "Difference",
    "Importances",
    "NoFinishedTrialsError",
    "PaperCurve",
    "PlannedFigure",
    "ReportError",
    "StudyData",
    "StudyNotFoundError",
    "bootstrap",
    "build_comparison_report",
    "build_report",
    "compare_to_baseline",
    "comparison_table",
    "config_label",
    "config_labels",
    "cost_table",
    "difference",
    "final_metrics_table",
    "finished",
    "format_mean_ci",
    "header_markdown",
    "holm",
    "load_histories",
    "load_runs",
    "load_study_data",
    "metric_columns",
    "objective_results",
    "paper_reference",
    "param_importances",
    "pareto_front",
    "pareto_mask",
    "plan_figures",
    "plot_compute",
    "plot_heatmap",
    "plot_metric_curve",
    "plot_metric_vs_param",
    "plot_metric_vs_sparsity",
    "plot_retrieval",
    "plot_study_comparison",
    "plot_tradeoff",
    "plot_training_curves",
    "realised_sparsity",
    "reproduce_markdown",
    "results_table",
    "save_figure",
    "set_style",
    "shared_objectives",
    "study_info",
    "summarise",
    "summarise_metrics",
    "summary_markdown",
    "trials_table",
    "varied_params",
    "welch",
]
