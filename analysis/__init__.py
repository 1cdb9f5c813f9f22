"""Tracking data to tables, plots and reports; reads MLflow only, never imports the training code."""

from ablate.analysis.plots import (
    config_label,
    plot_metric_vs_param,
    plot_training_curves,
    save_figure,
    set_style,
)
from ablate.analysis.report import NoFinishedTrialsError, ReportError, build_report
from ablate.analysis.runs import (
    StudyNotFoundError,
    finished,
    load_histories,
    load_runs,
    study_info,
)
from ablate.analysis.stats import format_mean_ci, summarise, varied_params

__all__ = [
    "NoFinishedTrialsError",
    "ReportError",
    "StudyNotFoundError",
    "build_report",
    "config_label",
    "finished",
    "format_mean_ci",
    "load_histories",
    "load_runs",
    "plot_metric_vs_param",
    "plot_training_curves",
    "save_figure",
    "set_style",
    "study_info",
    "summarise",
    "varied_params",
]
