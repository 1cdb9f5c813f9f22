"""Acceptance plans vs an independent brute force and the paper's plans; exact intervals; audits end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest, hypergeom

from ablate.core.config.base import ConfigError
from ablate.core.quality.acceptance import PRESETS, PlanRequest, double_plan, error_rate_interval, single_plan
from ablate.core.quality.audit import JudgementsPending, run_audit
from ablate.core.quality.detection import noisy_labels
from ablate.core.quality.subset import filter_dataset


def brute_single(pa: float, pr: float, alpha: float, beta: float, lot: int) -> tuple[int, int]:
    """Smallest n, then smallest c, with P(X<=c | round(pa·N)) >= 1-α and P(X<=c | round(pr·N)) <= β."""
    da, dr = round(pa * lot), round(pr * lot)
    for n in range(1, lot + 1):
        for c in range(n + 1):
            if hypergeom.cdf(c, lot, da, n) >= 1 - alpha and hypergeom.cdf(c, lot, dr, n) <= beta:
                return n, c
    raise AssertionError("no plan")


def brute_double(pa: float, pr: float, alpha: float, beta: float, lot: int, exact_second: bool) -> tuple:
    """Min ASN at p_a over every (n, c1 < c2) meeting both risks, by explicit sums."""

    def accept(defects: int, n: int, c1: int, c2: int) -> float:
        total = sum(hypergeom.pmf(j, lot, defects, n) for j in range(c1 + 1))
        for j in range(c1 + 1, c2 + 1):
            second = (
                hypergeom.cdf(c2 - j, lot - n, defects - j, n)
                if exact_second
                else hypergeom.cdf(c2 - j, lot, defects, n)
            )
            total += hypergeom.pmf(j, lot, defects, n) * (second if defects >= j else 0.0)
        return total

    da, dr = round(pa * lot), round(pr * lot)
    best = None
    for n in range(1, lot // 2 + 1):
        for c2 in range(1, 9):
            for c1 in range(c2):
                if accept(da, n, c1, c2) >= 1 - alpha - 1e-12 and accept(dr, n, c1, c2) <= beta + 1e-12:
                    cont = hypergeom.cdf(c2, lot, da, n) - hypergeom.cdf(c1, lot, da, n)
                    candidate = (n * (1 + cont), n, c1, c2)
                    best = candidate if best is None or candidate < best else best
    return best


@pytest.mark.parametrize(
    ("pa", "pr", "alpha", "beta", "lot"),
    [(0.05, 0.2, 0.05, 0.1, 60), (0.02, 0.1, 0.1, 0.2, 150), (0.01, 0.05, 0.05, 0.1, 400), (0.1, 0.3, 0.01, 0.01, 90)],
)
def test_single_plan_matches_brute_force(pa: float, pr: float, alpha: float, beta: float, lot: int) -> None:
    plan = single_plan(PlanRequest(pa, pr, alpha, beta, lot))
    assert (plan.n, plan.c) == brute_single(pa, pr, alpha, beta, lot)
    assert plan.accept_prob_at_p_accept >= 1 - alpha and plan.accept_prob_at_p_reject <= beta


@pytest.mark.parametrize("exact_second", [False, True])
def test_double_plan_matches_brute_force(exact_second: bool) -> None:
    plan = double_plan(PlanRequest(0.05, 0.2, 0.05, 0.1, 60), "remaining_lot" if exact_second else "same_lot")
    asn, n, c1, c2 = brute_double(0.05, 0.2, 0.05, 0.1, 60, exact_second)
    assert (plan.n, plan.c1, plan.c2) == (n, c1, c2)
    assert plan.asn_at_p_accept == pytest.approx(asn)


def test_paper_plans_are_reproduced() -> None:
    """QE Fig. 4 plans for N = 1000 (the reference code's risks; papers.md's "425" is 245 with digits swapped)."""
    plans = {name: PlanRequest(*PRESETS[name], lot_size=1000) for name in PRESETS}
    assert (single_plan(plans["strict"]).n, single_plan(plans["strict"]).c) == (428, 8)
    assert (single_plan(plans["relaxed"]).n, single_plan(plans["relaxed"]).c) == (245, 8)
    strict, relaxed = double_plan(plans["strict"]), double_plan(plans["relaxed"])
    assert (strict.n, strict.c1, strict.c2) == (298, 4, 11)
    assert (relaxed.n, relaxed.c1, relaxed.c2) == (144, 3, 9)
    # the risks printed in the paper's Table 1 give other plans (papers.md's check)
    assert (single_plan(plans["strict_table"]).n, single_plan(plans["strict_table"]).c) == (360, 7)
    assert (single_plan(plans["relaxed_table"]).n, single_plan(plans["relaxed_table"]).c) == (175, 6)


def test_plan_requests_are_checked() -> None:
    with pytest.raises(ValueError, match="p_accept < p_reject"):
        PlanRequest(0.05, 0.01, 0.05, 0.1, 100)
    with pytest.raises(ValueError, match="same number of errors"):
        PlanRequest(0.01, 0.012, 0.05, 0.1, 100)


def test_interval_inverts_the_hypergeometric_tests() -> None:
    lot, n, k, tail = 1000, 100, 3, 0.025
    interval = error_rate_interval(k, n, lot)
    low, high = round(interval.lower * lot), round(interval.upper * lot)
    assert hypergeom.sf(k - 1, lot, low, n) > tail >= hypergeom.sf(k - 1, lot, low - 1, n)
    assert hypergeom.cdf(k, lot, high, n) > tail >= hypergeom.cdf(k, lot, high + 1, n)
    assert error_rate_interval(0, n, lot).lower == 0.0 and error_rate_interval(n, n, lot).upper == 1.0
    assert error_rate_interval(5, lot, lot).lower == error_rate_interval(5, lot, lot).upper == 0.005  # census
    # an enormous lot is binomial sampling: the interval approaches Clopper–Pearson
    big = error_rate_interval(7, 80, 10_000_000)
    cp = binomtest(7, 80).proportion_ci(0.95, method="exact")
    assert big.lower == pytest.approx(cp.low, abs=2e-6) and big.upper == pytest.approx(cp.high, abs=2e-6)


def test_auto_audit_rejects_the_noisy_benchmark_and_accepts_a_clean_subset(shapes_root: Path, tmp_path: Path) -> None:
    noisy = run_audit(shapes_root, PlanRequest(*PRESETS["strict"], lot_size=1536), seed=0)
    assert noisy.decision == "reject" and noisy.lot_size == 1536
    interval = noisy.interval
    assert interval["lower"] < 0.3 < interval["upper"]  # the benchmark's noisy_fraction
    labels = noisy_labels(shapes_root)
    clean = filter_dataset(shapes_root, {u for u, bad in labels.items() if not bad}, tmp_path / "clean")
    report = run_audit(clean.out, kind="double", p_accept=0.01, p_reject=0.03, alpha=0.01, beta=0.05, seed=1)
    assert report.decision == "accept" and report.stages[0]["errors"] == 0 and report.stages[0]["outcome"] == "accept"
    assert report.interval["upper"] < 0.03
    json.loads(report.to_json())


def test_file_judgements_template_round_trip(shapes_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "judgements.csv"
    request = PlanRequest(0.05, 0.3, 0.05, 0.1, lot_size=1536)
    with pytest.raises(JudgementsPending, match=r"for \d+ stage-1 rows"):
        run_audit(shapes_root, request, seed=3, judgements=path)
    rows = list(csv.DictReader(path.open()))
    labels = noisy_labels(shapes_root)
    assert rows and all(r["error"] == "" and r["caption"] for r in rows)
    for row in rows:
        row["error"] = "yes" if labels[row["uid"]] else "0"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    from_file = run_audit(shapes_root, request, seed=3, judgements=path)
    automatic = run_audit(shapes_root, request, seed=3)
    assert from_file.decision == automatic.decision and from_file.stages == automatic.stages
    with pytest.raises(ConfigError, match="not the items this audit draws"):
        run_audit(shapes_root, request, seed=4, judgements=path)
    rows[0]["error"] = "maybe"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ConfigError, match=r"line 2: error = 'maybe'"):
        run_audit(shapes_root, request, seed=3, judgements=path)
    assert np.isfinite(automatic.interval["estimate"])
