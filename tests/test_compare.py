"""Statistics against the baseline, Holm's correction, Pareto fronts and parameter importances, checked
against hand-computed values and scipy."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow_fixtures import BASELINE, OBJECTIVE, SyntheticStudy, build_study
from scipy import stats

from ablate.analysis import (
    bootstrap,
    compare_to_baseline,
    difference,
    finished,
    holm,
    load_runs,
    param_importances,
    pareto_mask,
    welch,
)

A = np.array([0.7, 0.8, 0.9])  # mean 0.8, variance 0.01
B = np.array([0.5, 0.55, 0.6])  # mean 0.55, variance 0.0025


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return build_study(tmp_path_factory.mktemp("store"), rich=True)


@pytest.fixture(scope="module")
def done(study: SyntheticStudy) -> pd.DataFrame:
    return finished(load_runs(study.study, study.tracking_uri))


def test_welch_interval_and_p_value_by_hand():
    result = welch(A, B)
    se = math.sqrt(0.01 / 3 + 0.0025 / 3)
    dof = (0.01 / 3 + 0.0025 / 3) ** 2 / ((0.01 / 3) ** 2 / 2 + (0.0025 / 3) ** 2 / 2)
    assert dof == pytest.approx(2.941176, rel=1e-6)
    half = stats.t.ppf(0.975, dof) * se
    assert result.diff == pytest.approx(0.25)
    assert (result.low, result.high) == pytest.approx((0.25 - half, 0.25 + half))
    t = 0.25 / se
    assert result.p_value == pytest.approx(2 * stats.t.sf(t, dof))
    assert result.p_value == pytest.approx(stats.ttest_ind(A, B, equal_var=False).pvalue)
    assert result.method == "welch"


def test_bootstrap_is_seeded_and_its_p_value_never_zero():
    result = bootstrap(A + 0.5, B, n_resamples=2000, seed=3)
    assert result == bootstrap(A + 0.5, B, n_resamples=2000, seed=3)
    assert result.diff == pytest.approx(0.75)
    assert 0.55 <= result.low <= result.diff <= result.high <= 0.95  # bounds of resampled means' difference
    assert result.p_value == pytest.approx(2 / 2001)  # every resampled difference is positive
    overlapping = bootstrap(A, A + 0.01, n_resamples=2000, seed=3)
    assert overlapping.low < 0 < overlapping.high
    assert overlapping.p_value > 0.5


def test_difference_picks_the_method_by_replicate_count():
    assert difference(A, B).method == "welch"
    assert difference(A[:2], B).method == "welch"  # two replicates suffice for Welch
    assert difference(A, B, method="bootstrap").method == "bootstrap"
    assert difference(A[:2], B, method="welch").method == "welch"
    single = difference(A[:1], B)
    assert single.method == "n<2" and math.isnan(single.p_value) and single.diff == pytest.approx(0.15)
    assert difference(np.ones(3), np.zeros(3)).method == "constant"


def test_holm_matches_hand_computed_adjustment():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> monotone 0.06
    assert holm(p)[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(holm(p)[4])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]).size == 0


def test_compare_to_baseline_with_welch(study, done):
    table = compare_to_baseline(done, OBJECTIVE, method="welch").set_index("config_hash")
    assert list(table.index) == study.config_hashes
    baseline = [0.55, 0.65]
    for i, config in enumerate(study.config_hashes):
        values = [0.5 + 0.1 * i, 0.7 + 0.1 * i]
        row = table.loc[config]
        assert (row["n"], row["baseline_n"], row["baseline"]) == (2, 2, BASELINE)
        assert row["diff"] == pytest.approx(0.1 * i)
        assert row["p_value"] == pytest.approx(stats.ttest_ind(values, baseline, equal_var=False).pvalue)
    assert table["p_holm"].to_numpy() == pytest.approx(holm(table["p_value"]))


def test_compare_to_baseline_uses_welch_from_two_replicates(done):
    table = compare_to_baseline(done, OBJECTIVE)
    assert table["method"].tolist() == ["welch"] * 3
    expected = stats.ttest_ind([0.7, 0.9], [0.55, 0.65], equal_var=False)  # configuration 2 vs the baseline
    assert (table["diff_low"].iloc[2], table["diff_high"].iloc[2]) == pytest.approx(expected.confidence_interval(0.95))
    assert table["p_value"].iloc[2] == pytest.approx(expected.pvalue)


def test_compare_to_baseline_bootstrap_on_request(done):
    table = compare_to_baseline(done, OBJECTIVE, method="bootstrap")
    assert table["method"].tolist() == ["bootstrap"] * 3
    assert table["diff_low"].iloc[2] == pytest.approx(0.05)  # [0.7, 0.9] vs [0.55, 0.65]: worst case 0.7 - 0.65


def test_compare_to_baseline_needs_a_known_baseline(done):
    with pytest.raises(ValueError, match="no finished run of baseline"):
        compare_to_baseline(done, OBJECTIVE, "other")
    with pytest.raises(ValueError, match="name the baseline"):
        compare_to_baseline(done[done["baseline"].isna()], OBJECTIVE)
    with pytest.raises(ValueError, match="method"):
        compare_to_baseline(done, OBJECTIVE, method="anova")


def test_pareto_mask_hand_computed_front():
    points = pd.DataFrame(
        {
            "acc": [0.8, 0.7, 0.6, 0.6, 0.8, 0.5, float("nan")],
            "params": [3, 2, 1, 2, 3, 1, 1],
        },
        index=list("ABCDEFG"),
    )
    front = pareto_mask(points, ["acc", "params"], ["maximize", "minimize"])
    assert front[front].index.tolist() == ["A", "B", "C", "E"]  # D < B, F < C, G incomplete; A and E tie
    flipped = pareto_mask(points, ["acc", "params"], ["minimize", "maximize"])
    assert flipped[flipped].index.tolist() == ["A", "D", "E", "F"]
    with pytest.raises(ValueError, match="direction"):
        pareto_mask(points, ["acc"], ["up"])


def test_param_importances_from_the_tagged_storage(study):
    importances = param_importances(study.optuna_storage, study.study, study.objectives)
    assert importances.table is not None, importances.note
    assert set(importances.table.index) == {"loss.lambda", "optim.lr"}
    assert list(importances.table.columns) == [o["metric"] for o in study.objectives]
    assert importances.table.sum().to_numpy() == pytest.approx([1.0, 1.0])
    assert "6 complete" in importances.note


def test_param_importances_are_skipped_with_a_note(tmp_path, study):
    assert "no Optuna storage" in param_importances(None, "x", study.objectives).note
    missing = f"sqlite:///{tmp_path}/missing.db"
    assert "does not exist" in param_importances(missing, "x", study.objectives).note
    assert not (tmp_path / "missing.db").exists()
    assert "could not be read" in param_importances(study.optuna_storage, "nope", study.objectives).note
    storage = f"sqlite:///{tmp_path}/one.db"
    one = optuna.create_study(storage=storage, study_name="one")
    one.add_trial(
        optuna.trial.create_trial(
            params={"x": 1.0}, distributions={"x": optuna.distributions.FloatDistribution(0, 2)}, value=1.0
        )
    )
    result = param_importances(storage, "one", [{"metric": "m", "direction": "maximize"}])
    assert result.table is None and "1 complete trial(s)" in result.note


def test_param_importances_from_a_journal_storage(tmp_path):
    """SLURM studies keep Optuna in a `journal:PATH` file; importances open it as the launcher does. The
    objective depends on `y` only, so fANOVA must rank `y` far above `x`."""
    storage = f"journal:{tmp_path / 'runs' / 'optuna.journal'}"
    assert "does not exist" in param_importances(storage, "s", [{"metric": "m"}]).note
    assert not (tmp_path / "runs").exists()
    (tmp_path / "runs").mkdir()
    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs" / "optuna.journal"))
    )
    written = optuna.create_study(storage=journal, study_name="s", direction="maximize")
    grid = optuna.distributions.CategoricalDistribution([0.0, 1.0, 2.0])
    for x in (0.0, 1.0, 2.0):
        for y in (0.0, 1.0, 2.0):
            written.add_trial(
                optuna.trial.create_trial(params={"x": x, "y": y}, distributions={"x": grid, "y": grid}, value=y)
            )
    importances = param_importances(storage, "s", [{"metric": "m", "direction": "maximize"}])
    assert importances.table is not None, importances.note
    assert "9 complete" in importances.note
    assert importances.table["m"].sum() == pytest.approx(1.0)
    assert importances.table.loc["y", "m"] > 0.9 > importances.table.loc["x", "m"]


def test_a_second_baseline_is_compared_to_the_first_declared_one():
    """`make demo` runs plain CLIP as a second baseline beside the MobileCLIP recipe: both it and the trials are
    tested against the recipe (the first baseline the spec declares, though `clip` sorts first), and Holm
    adjusts across all of them."""
    from ablate.analysis.study_data import StudyData

    rows = [("mobileclip", "m", v) for v in (0.50, 0.52, 0.54)]
    rows += [("clip", "c", v) for v in (0.40, 0.43, 0.41)]
    rows += [(None, "t", v) for v in (0.49, 0.53, 0.50)]
    done = pd.DataFrame(rows, columns=["baseline", "config_hash", f"metric.{OBJECTIVE}"]).assign(state="finished")
    table = compare_to_baseline(done, OBJECTIVE, "mobileclip").set_index("config_hash")
    assert sorted(table.index) == ["c", "t"]  # the reference is never compared to itself
    recipe = [0.50, 0.52, 0.54]
    expected = stats.ttest_ind([0.40, 0.43, 0.41], recipe, equal_var=False)
    assert table.loc["c", "diff"] == pytest.approx(np.mean([0.40, 0.43, 0.41]) - 0.52)
    assert table.loc["c", "p_value"] == pytest.approx(expected.pvalue)
    assert table["p_holm"].to_numpy() == pytest.approx(holm(table["p_value"]))

    spec = {"baselines": {"mobileclip": {}, "clip": {}}}
    assert StudyData({"spec": spec}, done).reference_baseline == "mobileclip"
    assert StudyData({"spec": {}}, done).reference_baseline == "clip"  # no declared order: by name
    # one searched configuration (nothing varies) is still named by its value, not by a hash
    runs = done.assign(**{"param.compression.schedule": ["[0.5]"] * 9})
    labels = StudyData({"spec": spec, "search_space": ["compression.schedule"]}, runs).labels
    assert labels.tolist() == ["mobileclip"] * 3 + ["clip"] * 3 + ["schedule=[0.5]"] * 3


def test_welch_against_a_constant_group_is_silent_and_exact():
    """A dense baseline's parameter count is the same in every replicate: the test must neither warn (a red
    box in the report) nor change its value; scipy's Welch test gives the same p-value."""
    import warnings

    constant, spread = np.full(3, 7782785.0), np.array([7714600.0, 7715100.0, 7715500.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = welch(spread, constant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = stats.ttest_ind(spread, constant, equal_var=False).pvalue
    assert result.p_value == pytest.approx(expected, rel=1e-9)
