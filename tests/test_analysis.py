"""Tables, statistics and plots of `ablate.analysis` on a real MLflow sqlite store with synthetic values."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow_fixtures import BASELINE, DESCRIPTION, OBJECTIVE, PARAMS_METRIC, SyntheticStudy, build_study, create_store
from scipy import stats

from ablate.analysis import (
    MOBILECLIP_LAMBDA_IN1K,
    StudyData,
    StudyNotFoundError,
    finished,
    format_mean_ci,
    load_histories,
    load_runs,
    load_study_data,
    objective_results,
    paper_reference,
    plan_figures,
    plot_heatmap,
    plot_metric_curve,
    plot_metric_vs_param,
    plot_training_curves,
    realised_sparsity,
    results_table,
    save_figure,
    set_style,
    study_info,
    summarise,
    summary_markdown,
    trials_table,
    varied_params,
)

T_975_DOF1 = 12.706204736174707  # Student t 97.5% quantile, 1 degree of freedom
T_975_DOF2 = 4.302652729749464


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return build_study(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def runs(study: SyntheticStudy) -> pd.DataFrame:
    return load_runs(study.study, study.tracking_uri)


def test_load_runs_has_one_row_per_trial_and_excludes_the_parent(study, runs):
    assert len(runs) == 3 * 2 + 2 + 1
    assert study.parent_run_id not in set(runs["run_id"])
    assert list(runs["trial_number"]) == list(range(9))
    assert list(runs["run_id"]) == [study.run_ids[i] for i in range(9)]


def test_load_runs_columns_and_types(runs):
    assert list(runs.columns[:7]) == [
        "run_id",
        "trial_number",
        "state",
        "seed",
        "config_hash",
        "baseline",
        "error",
    ]
    assert list(runs.columns[-4:]) == ["status", "start_time", "end_time", "duration_s"]
    assert pd.api.types.is_integer_dtype(runs["trial_number"])
    assert pd.api.types.is_integer_dtype(runs["seed"])
    assert pd.api.types.is_float_dtype(runs["param.loss.lambda"])
    assert pd.api.types.is_float_dtype(runs["param.optim.lr"])
    assert pd.api.types.is_integer_dtype(runs["param.train.steps"])
    assert pd.api.types.is_string_dtype(runs["param.model.name"])
    assert pd.api.types.is_float_dtype(runs[f"metric.{OBJECTIVE}"])
    assert {"metric.train/loss", "metric.eval/retrieval/i2t_r1"} <= set(runs.columns)
    assert runs["duration_s"].tolist() == [90.0] * 9
    assert runs.loc[0, "param.optim.lr"] == pytest.approx(1e-4)


def test_load_runs_states_seeds_and_baselines(study, runs):
    assert runs["state"].tolist() == ["finished"] * 8 + ["failed"]
    assert runs["seed"].tolist() == [0, 1] * 4 + [99]
    assert runs["baseline"].tolist() == [None] * 6 + [BASELINE] * 2 + [None]
    assert runs["error"].tolist() == [None] * 8 + ["RuntimeError: loss is NaN"]
    assert runs["status"].tolist() == ["FINISHED"] * 8 + ["FAILED"]
    assert runs["config_hash"].iloc[:6].tolist() == [h for h in study.config_hashes for _ in range(2)]
    assert len(finished(runs)) == 8


def test_study_info(study):
    info = study_info(study.study, study.tracking_uri)
    assert info["parent_run_id"] == study.parent_run_id
    assert info["objectives"] == [{"metric": OBJECTIVE, "direction": "maximize"}]
    assert info["search_space"] == ["loss.lambda", "optim.lr"]
    assert info["description"] == "" and info["optuna_storage"] is None
    assert info["spec_source"] == "parent run tags"  # no study/study.json artifact: rebuilt from the tags
    assert info["spec"]["objectives"] == info["objectives"]
    assert info["spec"]["storage"] == {"optuna": None, "mlflow": study.tracking_uri}


def test_unknown_study_names_the_store_and_the_available_studies(study):
    with pytest.raises(StudyNotFoundError) as error:
        load_runs("no-such-study", study.tracking_uri)
    message = str(error.value)
    assert "'no-such-study'" in message
    assert study.tracking_uri in message
    assert "Available experiments: Default, quickstart" in message


def test_experiment_without_parent_run_is_not_a_study(tmp_path):
    uri = create_store(tmp_path)
    MlflowClient(tracking_uri=uri).create_experiment("orphan")
    with pytest.raises(StudyNotFoundError, match="no parent run tagged"):
        study_info("orphan", uri)


def test_load_histories_long_format(study):
    histories = load_histories(study.study, study.tracking_uri, [OBJECTIVE, "metric.train/loss"])
    assert list(histories.columns) == [
        "run_id",
        "trial_number",
        "config_hash",
        "seed",
        "baseline",
        "metric",
        "step",
        "value",
    ]
    objective = histories[histories["metric"] == OBJECTIVE]
    assert len(objective) == 8 * 2 + 1  # two eval steps per finished run, one before the failure
    assert len(histories[histories["metric"] == "train/loss"]) == 8 * 5 + 2
    first = objective[objective["trial_number"] == 0]
    assert first["step"].tolist() == [50, 100]
    assert first["value"].tolist() == pytest.approx([0.4, 0.5])
    assert objective["baseline"].dropna().unique().tolist() == [BASELINE]


def test_summarise_matches_hand_computed_statistics(study, runs):
    summary = summarise(finished(runs), OBJECTIVE, params=["loss.lambda", "optim.lr"])
    row = summary.set_index("config_hash").loc[study.config_hashes[0]]
    assert row["n"] == 2
    assert row["mean"] == pytest.approx(0.6)
    assert row["std"] == pytest.approx(0.141421, abs=1e-6)
    assert row["ci95"] == pytest.approx(T_975_DOF1 * 0.141421356 / math.sqrt(2), rel=1e-6)
    assert row["ci95"] == pytest.approx(1.2706, abs=1e-4)
    assert row["param.loss.lambda"] == 0.0
    assert list(summary.columns) == [
        "config_hash",
        "baseline",
        "param.loss.lambda",
        "param.optim.lr",
        "n",
        "mean",
        "std",
        "ci95",
    ]


def test_summarise_excludes_the_failed_replicate_once_filtered(study, runs):
    with_failed = summarise(runs, OBJECTIVE).set_index("config_hash").loc[study.config_hashes[0]]
    assert with_failed["n"] == 3  # the failed run's partial value would otherwise count
    assert summarise(finished(runs), OBJECTIVE).set_index("config_hash").loc[study.config_hashes[0], "n"] == 2


def test_summarise_sorts_best_first(study, runs):
    best_first = summarise(finished(runs), OBJECTIVE, direction="maximize")
    assert best_first["config_hash"].iloc[0] == study.config_hashes[2]
    assert best_first["mean"].tolist() == pytest.approx([0.8, 0.7, 0.6, 0.6])
    worst_first = summarise(finished(runs), OBJECTIVE, direction="minimize")
    assert worst_first["mean"].iloc[-1] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="direction"):
        summarise(runs, OBJECTIVE, direction="up")


def test_summarise_three_replicates_and_a_single_one():
    frame = pd.DataFrame(
        {
            "config_hash": ["a", "a", "a", "b"],
            "baseline": [None] * 4,
            "param.x": [1, 1, 1, 2],
            "param.seed": [0, 1, 2, 0],
            "metric.m": [0.5, 0.7, 0.9, 0.4],
        }
    )
    summary = summarise(frame, "m").set_index("config_hash")
    assert list(summary.columns) == ["baseline", "param.x", "n", "mean", "std", "ci95"]
    assert summary.loc["a", "mean"] == pytest.approx(0.7)
    assert summary.loc["a", "std"] == pytest.approx(0.2)
    assert summary.loc["a", "ci95"] == pytest.approx(T_975_DOF2 * 0.2 / math.sqrt(3))
    assert summary.loc["b", "n"] == 1
    assert math.isnan(summary.loc["b", "ci95"])
    assert format_mean_ci(summary.reset_index()).tolist() == ["0.7000 ± 0.4968", "0.4000"]


def test_varied_params_ignores_seed_and_constants(runs):
    trials = runs[runs["baseline"].isna()]
    assert varied_params(trials) == ["param.loss.lambda", "param.optim.lr"]
    assert "param.model.name" in varied_params(runs)  # the baseline differs in model


def test_plot_metric_vs_param_draws_runs_means_and_baseline(runs):
    set_style()
    ax = plot_metric_vs_param(finished(runs), OBJECTIVE, "optim.lr")
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert f"{BASELINE} (baseline)" in labels
    assert ax.get_xscale() == "log"
    assert ax.get_lines()[-1].get_ydata()[0] == pytest.approx(0.6)  # baseline mean of [0.55, 0.65]
    assert len(ax.collections[0].get_offsets()) == 6  # one point per non-baseline run
    plt.close(ax.figure)


def test_plot_metric_vs_categorical_param(runs):
    frame = finished(runs).assign(**{"param.model.name": ["a", "b", "c"] * 2 + [BASELINE] * 2})
    ax = plot_metric_vs_param(frame, OBJECTIVE, "param.model.name")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    plt.close(ax.figure)


def test_plot_training_curves_one_line_per_configuration(study, runs):
    histories = load_histories(study.study, study.tracking_uri, [OBJECTIVE])
    histories = histories[histories["run_id"].isin(finished(runs)["run_id"])]
    ax = plot_training_curves(histories, OBJECTIVE)
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert sorted(labels) == sorted([h[:8] for h in study.config_hashes] + [BASELINE])
    plt.close(ax.figure)


def test_save_figure_writes_png_and_svg(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    paths = save_figure(fig, tmp_path / "figures", "eval/zeroshot/mean_top1 vs optim.lr")
    plt.close(fig)
    assert [p.name for p in paths] == [
        "eval_zeroshot_mean_top1_vs_optim.lr.png",
        "eval_zeroshot_mean_top1_vs_optim.lr.svg",
    ]
    assert paths[0].read_bytes().startswith(b"\x89PNG")
    assert "<svg" in paths[1].read_text()


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return build_study(tmp_path_factory.mktemp("rich"), rich=True)


@pytest.fixture(scope="module")
def rich_data(rich: SyntheticStudy) -> StudyData:
    return load_study_data(rich.study, rich.tracking_uri)


def test_study_info_reads_the_logged_spec(rich):
    info = study_info(rich.study, rich.tracking_uri)
    assert info["spec_source"] == "study/study.json"
    assert info["spec"]["sampler"] == {"name": "grid", "seed": 0}
    assert info["description"] == DESCRIPTION
    assert info["optuna_storage"] == rich.optuna_storage


def test_histories_keep_the_last_value_logged_for_a_step(rich, rich_data):
    histories = load_histories(rich.study, rich.tracking_uri, [OBJECTIVE], rich_data.runs, cache=False)
    resumed = histories[histories["trial_number"] == 0]  # logged step 50 twice, the earlier value 1.0 lower
    assert resumed["step"].tolist() == [50, 100]
    assert resumed["value"].tolist() == pytest.approx([0.4, 0.5])


def test_histories_of_ended_runs_are_fetched_once(rich, rich_data, monkeypatch, tmp_path):
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path))
    calls: list[str] = []
    original = MlflowClient.get_metric_history

    def counting(self, run_id, key):
        calls.append(run_id)
        return original(self, run_id, key)

    monkeypatch.setattr(MlflowClient, "get_metric_history", counting)
    cold = load_histories(rich.study, rich.tracking_uri, [OBJECTIVE], rich_data.runs)
    assert len(calls) == len(rich_data.runs)
    warm = load_histories(rich.study, rich.tracking_uri, [OBJECTIVE], rich_data.runs)
    assert len(calls) == len(rich_data.runs)
    pd.testing.assert_frame_equal(cold, warm)

    reopened = rich_data.runs.copy()  # a resumed run: running again, then ended later
    reopened.loc[0, "status"] = "RUNNING"
    load_histories(rich.study, rich.tracking_uri, [OBJECTIVE], reopened)
    load_histories(rich.study, rich.tracking_uri, [OBJECTIVE], reopened)
    assert calls[len(rich_data.runs) :] == [reopened.loc[0, "run_id"]] * 2  # a running run is never cached
    reopened.loc[0, ["status", "end_time"]] = ["FINISHED", reopened.loc[0, "end_time"] + pd.Timedelta(1, "h")]
    load_histories(rich.study, rich.tracking_uri, [OBJECTIVE], reopened)
    load_histories(rich.study, rich.tracking_uri, [OBJECTIVE], reopened)
    assert len(calls) == len(rich_data.runs) + 3


def test_failed_and_pruned_runs_are_listed_but_not_counted(rich, rich_data):
    trials = trials_table(rich_data)
    assert trials["state"].value_counts().to_dict() == {"finished": 8, "failed": 1, "pruned": 1}
    assert trials.loc[trials["state"] == "failed", "error"].tolist() == ["RuntimeError: loss is NaN"]
    results = objective_results(rich_data, rich.objectives[0])
    assert results["n"].tolist() == [2, 2, 2, 2]  # the failed and pruned replicates are not in any mean
    assert results["mean"].tolist() == pytest.approx([0.8, 0.7, 0.6, 0.6])
    front = dict(zip(results["configuration"], results["pareto"], strict=True))
    assert front == {
        "lambda=1, lr=0.01": True,
        "lambda=0.5, lr=1e-3": True,
        "lambda=0, lr=1e-4": True,
        BASELINE: False,
    }
    assert results.loc[results["baseline"].isna(), "method"].tolist() == ["welch"] * 3
    table = results_table(results)
    assert table["mean ± 95% CI"].iloc[0] == "0.8000 ± 1.2706"
    assert table["Pareto"].tolist() == results["pareto"].map({True: "✓", False: ""}).tolist()
    assert table["configuration"].iloc[:2].tolist() == ["lambda=1, lr=0.01", "lambda=0.5, lr=1e-3"]


def test_summary_names_best_configuration_baseline_counts_and_compute(rich_data):
    text = summary_markdown(rich_data)
    assert "lambda=1, lr=0.01: 0.8000 ± 1.2706 (n=2)" in text
    # Welch on [0.7, 0.9] vs [0.55, 0.65]: the interval is scipy's, computed independently here
    welch = stats.ttest_ind([0.7, 0.9], [0.55, 0.65], equal_var=False)
    low, high = welch.confidence_interval(0.95)
    assert f"vs baseline `mobileclip`: +0.2000 [95% CI {low:+.4f}, {high:+.4f}], welch p = {welch.pvalue:.3g}" in text
    assert "10 trials: 8 finished, 1 pruned, 1 failed" in text
    assert "2.5 cpu_hours over all runs" in text
    assert "3 configuration(s) on the Pareto front" in text


def test_summary_without_baseline_compares_best_and_worst(tmp_path):
    study = build_study(tmp_path, baseline=False, failed=False, seeds=(0, 1, 2))
    text = summary_markdown(load_study_data(study.study, study.tracking_uri))
    assert "vs the worst, lambda=0, lr=1e-4: 0.7000 ± 0.4968 (n=3): +0.2000 [95% CI" in text
    assert "welch p = " in text


def test_plan_figures_only_where_data_exists(rich_data, study):
    names = [f.name for f in plan_figures(rich_data)]
    assert names == [
        f"{OBJECTIVE}_vs_loss.lambda",
        f"{OBJECTIVE}_vs_optim.lr",
        f"{PARAMS_METRIC}_vs_loss.lambda",
        f"{PARAMS_METRIC}_vs_optim.lr",
        f"{OBJECTIVE}_vs_lambda_curve",
        f"{OBJECTIVE}_heatmap_loss.lambda_x_optim.lr",
        f"{OBJECTIVE}_vs_{PARAMS_METRIC}_tradeoff",  # realised parameters are all equal: no trade-off there
        f"{OBJECTIVE}_vs_sparsity",
        f"{OBJECTIVE}_curves",  # params_total is logged at step 0 only: no curve
        "compute_cpu_hours",
        "retrieval",
    ]
    plain = [f.name for f in plan_figures(load_study_data(study.study, study.tracking_uri))]
    assert "compute_cpu_hours" not in plain and f"{OBJECTIVE}_vs_sparsity" not in plain
    assert not any("tradeoff" in name for name in plain)


def test_every_planned_figure_draws(rich_data):
    set_style()
    for planned in plan_figures(rich_data):
        fig = planned.draw()
        assert fig.axes, planned.name
        plt.close(fig)


def test_plot_metric_vs_param_colours_by_a_categorical_hue(rich_data):
    frame = rich_data.done.assign(**{"param.data.captions": ["alt", "syn"] * 4})
    ax = plot_metric_vs_param(frame, OBJECTIVE, "optim.lr", hue="data.captions")
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels[:2] == ["data.captions=alt", "data.captions=syn"]
    assert [len(c.get_offsets()) for c in ax.collections[:2]] == [3, 3]
    assert not [line for line in ax.get_lines() if len(line.get_xdata()) > 2]  # single runs: no line
    plt.close(ax.figure)


def test_plot_heatmap_means_per_cell(rich_data):
    ax = plot_heatmap(rich_data.done, OBJECTIVE, "loss.lambda", "optim.lr")
    annotations = sorted(t.get_text() for t in ax.texts)
    assert annotations == ["0.6", "0.7", "0.8"]
    plt.close(ax.figure)


def test_plot_metric_curve_overlays_the_paper_on_a_second_axis(rich_data):
    ax = plot_metric_curve(rich_data.done, OBJECTIVE, "loss.lambda", MOBILECLIP_LAMBDA_IN1K)
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "MobileCLIP paper (IN-1k, Tab 3b)" in labels and f"{BASELINE} (baseline)" in labels
    assert len(ax.figure.axes) == 2 and ax.figure.axes[1].get_ylabel() == MOBILECLIP_LAMBDA_IN1K.unit
    assert paper_reference("eval/retrieval/i2t_r1", "param.loss.lambda").label.startswith("MobileCLIP paper (Flickr")
    assert paper_reference(OBJECTIVE, "param.optim.lr") is None
    plt.close(ax.figure)


def test_realised_sparsity_from_parameter_counts(rich_data, runs):
    sparsity = realised_sparsity(rich_data.done)
    assert sorted(sparsity.round(4).unique()) == [0.0, 0.5, 0.6, 0.6667]  # 1 - 1e6 / (1e6 (i + 1)), baseline 2.5e6
    assert realised_sparsity(runs) is None


def test_runs_with_hundreds_of_params_give_an_unfragmented_frame() -> None:
    """A real run logs every config field (~150 params); the report printed pandas' fragmentation warning."""
    import warnings

    from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag

    from ablate.analysis.runs import _runs_frame

    def run(number: int) -> Run:
        info = RunInfo(f"r{number}", "0", "u", "FINISHED", 1_000, 61_000, "active")
        params = [Param(f"section.field_{i}", str(i * number)) for i in range(200)]
        tags = [RunTag("ablate.trial_number", str(number)), RunTag("ablate.state", "finished")]
        return Run(info, RunData(metrics=[Metric("eval/top1", 0.5, 0, 1)], params=params, tags=tags))

    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.PerformanceWarning)
        frame = _runs_frame([run(1), run(2)])
        frame.assign(configuration=["a", "b"])  # what the report's tables do next
    assert frame["duration_s"].tolist() == [60.0, 60.0]
    assert frame["param.section.field_3"].tolist() == [3, 6]


def test_large_statistics_read_in_significant_digits_and_accuracies_in_decimals() -> None:
    """The demo's parameter counts were printed as `6306066.0000 ± 239807.6893`."""
    summary = pd.DataFrame({"mean": [6306066.0, 0.4852], "ci95": [239807.6893, 0.045]})
    assert format_mean_ci(summary).tolist() == ["6.306e+06 ± 2.398e+05", "0.4852 ± 0.0450"]
