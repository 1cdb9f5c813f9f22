"""Which figures a study's report shows: only those whose data exists.

Later issues add compression, compute and latency metrics, and studies vary different parameters; rather than
a template full of conditions, the plan below looks at what was logged and returns the applicable figures,
each with a file name, a title and a caption saying how to read it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ablate.analysis.histories import load_histories
from ablate.analysis.param_plots import (
    STOPPED_STATES,
    plot_heatmap,
    plot_metric_curve,
    plot_metric_vs_param,
    plot_training_curves,
)
from ablate.analysis.plots import axis_label
from ablate.analysis.references import LAMBDA_PARAM, paper_reference
from ablate.analysis.result_plots import (
    PARAMS_REALISED,
    PARAMS_TOTAL,
    plot_compute,
    plot_metric_vs_sparsity,
    plot_retrieval,
    plot_tradeoff,
    realised_sparsity,
)
from ablate.analysis.runs import COMPUTE_PREFIX, metric_column, metric_columns, metric_name
from ablate.analysis.study_data import StudyData
from ablate.analysis.tables import objective_results

PREFERRED_HEATMAP = ("param.loss.alpha", "param.compression.q")  # TinyCLIP's distillation x compression grid
MAX_HEATMAPS = 3
MAX_SHOWN_CONFIGS = 6  # curves and bars of more configurations than this are unreadable


@dataclass(frozen=True)
class PlannedFigure:
    """A figure the report will show: `draw` makes it; `name` is its file stem under `figures/`."""

    name: str
    title: str
    caption: str
    draw: Callable[[], Figure]


def plan_figures(data: StudyData) -> list[PlannedFigure]:
    """The figures that apply to this study, in report order."""
    primary = data.objectives[0]
    return [
        *_param_figures(data),
        *_lambda_figures(data, primary["metric"]),
        *_heatmap_figures(data, primary["metric"]),
        *_tradeoff_figures(data, primary),
        *_sparsity_figures(data, primary["metric"]),
        *_curve_figures(data, primary),
        *_compute_figures(data),
        *_retrieval_figures(data, primary),
    ]


def _figure(draw: Callable[[Axes], object]) -> Callable[[], Figure]:
    def make() -> Figure:
        fig, ax = plt.subplots()
        draw(ax)
        return fig

    return make


def _param_figures(data: StudyData) -> list[PlannedFigure]:
    figures = []
    for objective, param in itertools.product(data.objectives, data.params):
        metric = objective["metric"]
        hue = next((p for p in data.params if p != param and not pd.api.types.is_numeric_dtype(data.done[p])), None)
        caption = "Each point is a run; lines join per-value means with their 95% CIs; dashed lines are baselines."
        if hue:
            caption += f" Colours: `{axis_label(hue)}`."
        figures.append(
            PlannedFigure(
                f"{metric}_vs_{axis_label(param)}",
                f"`{metric}` vs `{axis_label(param)}`",
                caption,
                _figure(
                    lambda ax, m=metric, p=param, h=hue: plot_metric_vs_param(
                        data.done, m, p, hue=h, ax=ax, log=p in data.log_params
                    )
                ),
            )
        )
    return figures


def _lambda_figures(data: StudyData, metric: str) -> list[PlannedFigure]:
    if LAMBDA_PARAM not in data.params or not pd.api.types.is_numeric_dtype(data.done[LAMBDA_PARAM]):
        return []
    reference = paper_reference(metric, LAMBDA_PARAM)
    caption = "Mean per λ with its 95% CI band; dashed lines are baselines."
    if reference is not None:
        caption += (
            f" Grey squares, right axis: {reference.label}, a different scale and benchmark, "
            "shown for the shape of the curve only."
        )
    return [
        PlannedFigure(
            f"{metric}_vs_lambda_curve",
            f"`{metric}` vs λ (loss weight of distillation)",
            caption,
            _figure(lambda ax: plot_metric_curve(data.done, metric, LAMBDA_PARAM, reference, ax=ax)),
        )
    ]


def _heatmap_figures(data: StudyData, metric: str) -> list[PlannedFigure]:
    pairs = list(itertools.combinations(data.params, 2))
    if set(PREFERRED_HEATMAP) <= set(data.params):
        pairs = [PREFERRED_HEATMAP, *(p for p in pairs if set(p) != set(PREFERRED_HEATMAP))]
    return [
        PlannedFigure(
            f"{metric}_heatmap_{axis_label(x)}_x_{axis_label(y)}",
            f"`{metric}` over `{axis_label(x)}` × `{axis_label(y)}`",
            "Mean over finished runs per cell (baselines left out); empty cells were not run.",
            _figure(lambda ax, x=x, y=y: plot_heatmap(data.done, metric, x, y, ax=ax, log=data.log_params)),
        )
        for x, y in pairs[:MAX_HEATMAPS]
    ]


def _tradeoff_figures(data: StudyData, primary: dict[str, str]) -> list[PlannedFigure]:
    """Accuracy against each cost that varies: minimised objectives, parameters, latency."""
    costs = [metric_column(o["metric"]) for o in data.objectives[1:] if o["direction"] == "minimize"]
    costs += [PARAMS_REALISED if PARAMS_REALISED in data.done else PARAMS_TOTAL, *metric_columns(data.done, "latency/")]
    costs = [c for c in dict.fromkeys(costs) if c in data.done and data.done[c].nunique() > 1]
    metric = primary["metric"]
    return [
        PlannedFigure(
            f"{metric}_vs_{metric_name(cost)}_tradeoff",
            f"`{metric}` vs `{metric_name(cost)}`",
            "Mean per configuration with 95% CIs on both axes; the step line is the Pareto front; stars are baselines.",
            _figure(lambda ax, c=cost: plot_tradeoff(data.done, metric, c, primary["direction"], data.params, ax=ax)),
        )
        for cost in costs
    ]


def _sparsity_figures(data: StudyData, metric: str) -> list[PlannedFigure]:
    if realised_sparsity(data.done) is None:
        return []
    return [
        PlannedFigure(
            f"{metric}_vs_sparsity",
            f"`{metric}` vs sparsity",
            "Mean ± 95% CI per configuration, one line per stage schedule; dashed lines are baselines.",
            _figure(lambda ax: plot_metric_vs_sparsity(data.done, metric, ax=ax)),
        )
    ]


def _curve_figures(data: StudyData, primary: dict[str, str]) -> list[PlannedFigure]:
    best, chosen = _shown_configurations(data, primary)
    metrics = [o["metric"] for o in data.objectives]
    stopped = data.runs[data.runs["state"].isin(STOPPED_STATES)]  # kept, marked: they are part of the study
    runs = pd.concat([data.done[data.done["config_hash"].isin(chosen)], stopped])
    histories = load_histories(data.name, data.info["tracking_uri"], metrics, runs)
    histories["state"] = histories["run_id"].map(dict(zip(data.runs["run_id"], data.runs["state"], strict=True)))
    steps = histories.groupby("metric")["step"].nunique()
    labels = dict(zip(data.runs["config_hash"], data.labels, strict=True))
    partial = f"; {len(stopped)} pruned or failed run(s) keep their partial curves (dotted, × where they stopped)"
    return [
        PlannedFigure(
            f"{metric}_curves",
            f"Training curve of `{metric}`",
            f"Mean over replicates per configuration ({_shown_text(best, primary)}); the band spans the replicates"
            + (partial if len(stopped) else "")
            + ".",
            _figure(lambda ax, m=metric: plot_training_curves(histories, m, labels, ax=ax)),
        )
        for metric in metrics
        if steps.get(metric, 0) > 1
    ]


def _compute_figures(data: StudyData) -> list[PlannedFigure]:
    return [
        PlannedFigure(
            metric_name(column).replace("/", "_"),
            f"Compute: `{metric_name(column)}` per configuration",
            "Summed over all runs of the configuration, stacked by trial state.",
            _figure(lambda ax, c=column: plot_compute(data.runs, c, data.params, ax=ax)),
        )
        for column in metric_columns(data.runs, COMPUTE_PREFIX.removeprefix("metric."))
    ]


def _retrieval_figures(data: StudyData, primary: dict[str, str]) -> list[PlannedFigure]:
    metrics = metric_columns(data.done, "eval/retrieval/")
    if not metrics:
        return []
    best, chosen = _shown_configurations(data, primary)
    return [
        PlannedFigure(
            "retrieval",
            "Retrieval",
            f"Mean ± 95% CI; {_shown_text(best, primary)}.",
            _figure(lambda ax: plot_retrieval(data.done, metrics, chosen, data.params, ax=ax)),
        )
    ]


def _shown_configurations(data: StudyData, primary: dict[str, str]) -> tuple[list[str], list[str]]:
    """The best configurations by the primary objective (at most `MAX_SHOWN_CONFIGS`), and those plus the
    baselines: what per-configuration curves and bars show."""
    results = objective_results(data, primary)
    best = results.loc[results["baseline"].isna(), "config_hash"].head(MAX_SHOWN_CONFIGS).tolist()
    return best, [*best, *results.loc[results["baseline"].notna(), "config_hash"]]


def _shown_text(best: list[str], primary: dict[str, str]) -> str:
    return f"the {len(best)} best configurations by `{primary['metric']}` and the baselines"
