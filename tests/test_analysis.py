"""Tables, statistics and plots of `ablate.analysis` on a real MLflow sqlite store with synthetic values."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow_fixtures import BASELINE, OBJECTIVE, SyntheticStudy, build_study, create_store

from ablate.analysis import (
    StudyNotFoundError,
    finished,
    format_mean_ci,
    load_histories,
    load_runs,
    plot_metric_vs_param,
    plot_training_curves,
    save_figure,
    set_style,
    study_info,
    summarise,
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
    assert list(runs.columns[:6]) == ["run_id", "trial_number", "state", "seed", "config_hash", "baseline"]
    assert list(runs.columns[-3:]) == ["start_time", "end_time", "duration_s"]
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
    assert runs["config_hash"].iloc[:6].tolist() == [h for h in study.config_hashes for _ in range(2)]
    assert len(finished(runs)) == 8


def test_study_info(study):
    info = study_info(study.study, study.tracking_uri)
    assert info["parent_run_id"] == study.parent_run_id
    assert info["objectives"] == [{"metric": OBJECTIVE, "direction": "maximize"}]
    assert info["search_space"] == ["loss.lambda", "optim.lr"]


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
