"""Reports that do not over-claim (issue 21 part 3): no "best" configuration among ties or inside the noise, no
importances from too few or tied trials, a "Reproduce" line naming the file actually launched, readable heatmap
bins, log axes for log-searched parameters, and pruned/failed runs kept (marked) in the training curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
from mlflow_fixtures import OBJECTIVE, build_study
from train_helpers import fast_config, write_study_yaml

from ablate.ablations.control import STUDY_RECORD
from ablate.ablations.parent_run import open_parent_run
from ablate.ablations.scheduler import prepare
from ablate.analysis.figures import plan_figures
from ablate.analysis.importance import param_importances
from ablate.analysis.param_plots import plot_heatmap, plot_metric_vs_param
from ablate.analysis.runs import metric_column
from ablate.analysis.study_data import StudyData, load_study_data
from ablate.analysis.summary import reproduce_markdown, summary_markdown


def summary_of(root: Path, **build: object) -> str:
    study = build_study(root, baseline=False, failed=False, **build)
    return summary_markdown(load_study_data(study.study, study.tracking_uri))


def test_configurations_that_all_score_the_same_have_no_best(tmp_path: Path) -> None:
    text = summary_of(tmp_path, value=lambda i, s: 1 / 3)  # every trial at chance on 3 classes
    assert (
        "**No best configuration** by `eval/zeroshot/mean_top1` (maximize): all 3 configurations scored 0.3333" in text
    )
    assert "Best configuration" not in text and "vs the worst" not in text


def test_a_lead_inside_the_noise_is_not_called_best(tmp_path: Path) -> None:
    # Replicates [0.7, 0.9] vs [0.6, 0.8]: means 0.8 and 0.7, Welch p = 0.55.
    text = summary_of(tmp_path)
    assert "**Highest mean**" in text and "not distinguishable from the runner-up" in text
    assert "Best configuration" not in text


def test_a_lead_beyond_the_noise_is_called_best(tmp_path: Path) -> None:
    text = summary_of(tmp_path, seeds=(0, 1, 2), value=lambda i, s: 0.5 + 0.1 * i + 0.001 * s)
    assert "**Best configuration** by `eval/zeroshot/mean_top1` (maximize)" in text


def optuna_storage(path: Path, trials: list[tuple[dict[str, float], float]]) -> str:
    storage = f"sqlite:///{path}"
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    grid = optuna.distributions.FloatDistribution(0, 10)
    for params, value in trials:
        distributions = dict.fromkeys(params, grid)
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
    return storage


def test_importances_need_enough_varied_and_distinct_trials(tmp_path: Path) -> None:
    objective = [{"metric": "m", "direction": "maximize"}]
    two = optuna_storage(tmp_path / "two.db", [({"lr": 1.0}, 0.3333), ({"lr": 2.0}, 0.3333)])
    note = param_importances(two, "s", objective).note
    assert note.startswith("2 complete trial(s) in Optuna; importances need at least 6")  # the 1.0 from 2
    one_param = optuna_storage(tmp_path / "one.db", [({"lr": float(i)}, float(i)) for i in range(6)])
    assert "only lr varies" in param_importances(one_param, "s", objective).note
    tied = [({"lr": float(i), "wd": float(i % 3)}, 1 / 3) for i in range(6)]
    note = param_importances(optuna_storage(tmp_path / "tied.db", tied), "s", objective).note
    assert note == "every complete trial scored 0.3333 on m: nothing to explain"
    varied = [({"lr": float(i), "wd": float(i % 3)}, float(i)) for i in range(6)]
    assert param_importances(optuna_storage(tmp_path / "ok.db", varied), "s", objective).table is not None


def test_reproduce_names_the_file_launched_and_its_recorded_copy(tmp_path: Path, shapes_root: Path) -> None:
    base = fast_config(tmp_path, shapes_root)
    del base["run_dir"], base["tracking"]
    path = write_study_yaml(tmp_path, {"name": "realphotos", "base": base, "replicates": {"seeds": [0]}})
    launched = path.rename(tmp_path / "study_real.yaml")
    spec, _ = prepare(launched)
    open_parent_run(spec, str(launched))
    record = spec.run_folder / STUDY_RECORD
    open_parent_run(spec, str(record))  # `ablate resume` relaunches the recorded copy: the name stays
    text = reproduce_markdown(load_study_data("realphotos", spec.storage.mlflow))
    assert f"ablate launch {launched}   # the file it was launched from" in text
    assert "ablations/studies/realphotos.yaml" not in text
    assert f"at `{record}`" in text


def sampled_runs(lrs: list[float]) -> pd.DataFrame:
    """Trial runs of a sampled learning rate x caption source, objective = index / 100."""
    return pd.DataFrame(
        {
            "param.optim.lr": lrs,
            "param.data.captions": ["alt", "syn"] * (len(lrs) // 2),
            metric_column(OBJECTIVE): [i / 100 for i in range(len(lrs))],
            "config_hash": [f"h{i}" for i in range(len(lrs))],
            "baseline": [None] * len(lrs),
        }
    )


def test_heatmap_bins_a_sampled_parameter_with_readable_edges() -> None:
    runs = sampled_runs(list(np.geomspace(1.3274414292574908e-4, 1e-2, 20)))
    ax = plot_heatmap(runs, OBJECTIVE, "optim.lr", "data.captions", log=["optim.lr"])
    edges = [label.get_text() for label in ax.get_xticklabels()]
    assert edges == ["1.3e-4–3.2e-4", "3.2e-4–7.5e-4", "7.5e-4–1.8e-3", "1.8e-3–4.2e-3", "4.2e-3–0.01"]
    plt.close(ax.figure)
    few = plot_heatmap(
        sampled_runs([0.0013274414292574908, 0.0005, 0.002, 0.004]), OBJECTIVE, "optim.lr", "data.captions"
    )
    assert [label.get_text() for label in few.get_xticklabels()] == ["5e-4", "1.33e-3", "2e-3", "4e-3"]  # in order
    plt.close(few.figure)


def test_a_parameter_searched_on_a_log_scale_gets_a_log_axis() -> None:
    runs = sampled_runs([1e-3, 1.5e-3, 2e-3, 3e-3])  # less than a decade: linear unless the study said log
    assert plot_metric_vs_param(runs, OBJECTIVE, "optim.lr", log=True).get_xscale() == "log"
    assert plot_metric_vs_param(runs, OBJECTIVE, "optim.lr").get_xscale() == "linear"
    plt.close("all")
    data = StudyData({"spec": {"search_space": {"optim.lr": {"type": "float", "log": True}}}}, pd.DataFrame())
    assert data.log_params == {"param.optim.lr"}


def test_training_curves_keep_pruned_and_failed_runs_marked(tmp_path: Path) -> None:
    study = build_study(tmp_path, rich=True)  # one failed and one pruned run, each stopped after step 50
    data = load_study_data(study.study, study.tracking_uri)
    curves = next(f for f in plan_figures(data) if f.name == f"{OBJECTIVE}_curves")
    assert "2 pruned or failed run(s) keep their partial curves" in curves.caption
    ax = curves.draw().axes[0]
    assert {"pruned (partial)", "failed (partial)"} <= {text.get_text() for text in ax.get_legend().get_texts()}
    stopped = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert sorted(float(line.get_ydata()[-1]) for line in stopped) == [0.1, 0.2]  # their last logged values
    plt.close("all")
