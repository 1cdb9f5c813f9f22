"""Acceptance sampling and exact error-rate intervals for a finite lot (arXiv 2405.11919, papers.md §5).

Inspecting n of the N items of a lot without replacement makes the number of erroneous items found
hypergeometric: X ~ Hypergeom(N, D, n) with D the errors in the lot. A plan decides "accept" or "reject" from
X alone, with two guarantees (QE Eq. 1):

    P(accept | D_a) >= 1 - α   (producer's risk α: a lot at the acceptable error rate p_a is rarely rejected)
    P(accept | D_r) <= β       (consumer's risk β: a lot at the rejectable error rate p_r is rarely accepted)

with D_a = defects(p_a·N), D_r = defects(p_r·N). Definitions used (each checked against the paper's plans and
against an independent brute force in the tests):

- `defects`: round(p·N) (Python's round, as the reference code ml-sampleplan does); floor and ceil are options.
  For the paper's settings p·N is an integer, so the choice does not matter there.
- Single plan (n, c): accept iff X <= c. Criterion: the smallest n for which some c meets both conditions;
  at that n the smallest such c. (The smallest c meeting the producer's condition is the best one for the
  consumer's, because P(accept) grows with c, so feasibility of n is one check.)
- Double plan (n1 = n2 = n, c1 < c2): inspect n; accept if X1 <= c1, reject if X1 > c2, else inspect n more and
  accept iff X1 + X2 <= c2. Criterion: among all (n, c1, c2) meeting both conditions, the smallest average
  sample number at p_a, ASN = n + n·P(c1 < X1 <= c2 | D_a) (ties: smaller n). The second sample's law is an
  option: `same_lot` (X2 ~ Hypergeom(N, D, n), independent of X1: the paper's and the reference code's model)
  or `remaining_lot` (X2 ~ Hypergeom(N − n, D − X1, n): exact for drawing without replacement).

Reproduced plans (N = 1000): the paper's Fig. 4 plans come out of these definitions for the risks of the
reference code's configurations, strict (p_a .01, p_r .03, α .01, β .05) -> single n=428 c=8, double n=298
c1=4 c2=11; relaxed (.02, .05, .05, β .10) -> single n=245 c=8, double n=144 c1=3 c2=9. The paper's Table 1
lists β = 0.1 / 0.2 instead; those give single 360/7 and 175/6 (presets `strict_table`, `relaxed_table`). The
digest's "relaxed n = 425" is 245 with two digits swapped (c = 8 matches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.stats import hypergeom

Rounding = Literal["round", "floor", "ceil"]
SecondSample = Literal["same_lot", "remaining_lot"]
_EPS = 1e-12  # cdf values that should be equal to a threshold may differ in the last bits


def defects(rate: float, lot_size: int, rounding: Rounding = "round") -> int:
    """Errors in a lot of `lot_size` at error rate `rate`."""
    value = rate * lot_size
    if rounding == "round":
        return round(value)
    if rounding == "floor":
        return math.floor(value + 1e-9)
    if rounding == "ceil":
        return math.ceil(value - 1e-9)
    raise ValueError(f"rounding must be round, floor or ceil, got {rounding!r}")


@dataclass(frozen=True)
class PlanRequest:
    """What the plan must guarantee."""

    p_accept: float
    p_reject: float
    alpha: float
    beta: float
    lot_size: int
    rounding: Rounding = "round"

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_accept < self.p_reject <= 1.0:
            raise ValueError(f"need 0 <= p_accept < p_reject <= 1, got {self.p_accept} and {self.p_reject}")
        if not (0.0 < self.alpha < 1.0 and 0.0 < self.beta < 1.0 and self.beta < 1.0 - self.alpha):
            raise ValueError(f"need 0 < alpha, beta and beta < 1 - alpha, got alpha={self.alpha} beta={self.beta}")
        if self.lot_size < 1:
            raise ValueError(f"lot_size must be >= 1, got {self.lot_size}")
        if self.defects_accept == self.defects_reject:
            raise ValueError(
                f"p_accept={self.p_accept} and p_reject={self.p_reject} give the same number of errors "
                f"({self.defects_accept}) in a lot of {self.lot_size}: no plan can tell them apart"
            )

    @property
    def defects_accept(self) -> int:
        return defects(self.p_accept, self.lot_size, self.rounding)

    @property
    def defects_reject(self) -> int:
        return defects(self.p_reject, self.lot_size, self.rounding)


# Presets: the risks behind the paper's plotted plans (reference code) and those its Table 1 prints.
PRESETS: dict[str, tuple[float, float, float, float]] = {
    "strict": (0.01, 0.03, 0.01, 0.05),
    "relaxed": (0.02, 0.05, 0.05, 0.10),
    "strict_table": (0.01, 0.03, 0.01, 0.10),
    "relaxed_table": (0.02, 0.05, 0.05, 0.20),
}


@dataclass(frozen=True)
class SinglePlan:
    n: int
    c: int
    accept_prob_at_p_accept: float
    accept_prob_at_p_reject: float

    def decide(self, errors: int) -> Literal["accept", "reject"]:
        return "accept" if errors <= self.c else "reject"


@dataclass(frozen=True)
class DoublePlan:
    n: int  # each stage inspects n items
    c1: int
    c2: int
    second_sample: SecondSample
    accept_prob_at_p_accept: float
    accept_prob_at_p_reject: float
    asn_at_p_accept: float

    def decide_first(self, errors: int) -> Literal["accept", "reject", "continue"]:
        if errors <= self.c1:
            return "accept"
        return "reject" if errors > self.c2 else "continue"

    def decide_second(self, errors_first: int, errors_second: int) -> Literal["accept", "reject"]:
        return "accept" if errors_first + errors_second <= self.c2 else "reject"


def accept_prob_single(lot_size: int, lot_defects: int, n: int, c: int) -> float:
    return float(hypergeom.cdf(c, lot_size, lot_defects, n))


def single_plan(request: PlanRequest, chunk: int = 512) -> SinglePlan:
    """The smallest-n single plan meeting both risks (see the module docstring)."""
    big_n, d_a, d_r = request.lot_size, request.defects_accept, request.defects_reject
    for start in range(1, big_n + 1, chunk):
        n = np.arange(start, min(start + chunk, big_n + 1))
        c = hypergeom.ppf(1.0 - request.alpha - _EPS, big_n, d_a, n)  # smallest c with P(X<=c|D_a) >= 1-α
        c = np.nan_to_num(c, nan=0.0).astype(int)
        feasible = hypergeom.cdf(c, big_n, d_r, n) <= request.beta + _EPS
        if feasible.any():
            i = int(np.argmax(feasible))
            ni, ci = int(n[i]), int(c[i])
            return SinglePlan(ni, ci, accept_prob_single(big_n, d_a, ni, ci), accept_prob_single(big_n, d_r, ni, ci))
    raise ValueError(f"no single plan meets {request} even with the whole lot inspected")


def _accept_prob_double(
    lot_size: int, lot_defects: int, n: np.ndarray, c_max: int, second_sample: SecondSample
) -> np.ndarray:
    """P(accept) for every (n, c1, c2) with c1 < c2 <= c_max: array [len(n), c_max+1, c_max+1] (NaN if c1 >= c2)."""
    j = np.arange(c_max + 1)
    first = hypergeom.pmf(j[None, :], lot_size, lot_defects, n[:, None])  # [n, j]
    k = j  # second-stage allowance c2 - j
    if second_sample == "same_lot":
        second = hypergeom.cdf(k[None, None, :], lot_size, lot_defects, n[:, None, None])  # [n, 1, k]
        second = np.broadcast_to(second, (len(n), c_max + 1, c_max + 1))
    elif second_sample == "remaining_lot":
        remaining = np.clip(lot_defects - j, 0, None)
        second = hypergeom.cdf(
            k[None, None, :], lot_size - n[:, None, None], remaining[None, :, None], n[:, None, None]
        )  # [n, j, k]
    else:
        raise ValueError(f"second_sample must be same_lot or remaining_lot, got {second_sample!r}")
    cum_first = np.cumsum(first, axis=1)  # P(X1 <= c1)
    out = np.full((len(n), c_max + 1, c_max + 1), np.nan)
    for c2 in range(1, c_max + 1):
        # term_j = P(X1 = j)·P(X2 <= c2 - j) for j = 0..c2; a suffix sum from c1+1 gives the continue-term.
        terms = first[:, : c2 + 1] * second[:, np.arange(c2 + 1), c2 - np.arange(c2 + 1)]
        suffix = np.cumsum(terms[:, ::-1], axis=1)[:, ::-1]  # suffix[:, m] = Σ_{j>=m} term_j
        for c1 in range(c2):
            out[:, c1, c2] = cum_first[:, c1] + suffix[:, c1 + 1]
    return out


def double_plan(request: PlanRequest, second_sample: SecondSample = "same_lot", max_n: int | None = None) -> DoublePlan:
    """The double plan (n1 = n2) with the smallest ASN at p_a among all meeting both risks.

    The search covers n up to the single plan's n (a double plan whose first stage alone is larger can never
    have a smaller ASN) and acceptance numbers up to twice the single plan's c plus 4, beyond which the
    acceptance probability at p_r cannot fall below β for such n.
    """
    single = single_plan(request)
    big_n = request.lot_size
    max_n = min(max_n or single.n, big_n // 2)
    c_max = 2 * single.c + 4
    n = np.arange(1, max_n + 1)
    pa = _accept_prob_double(big_n, request.defects_accept, n, c_max, second_sample)
    pr = _accept_prob_double(big_n, request.defects_reject, n, c_max, second_sample)
    feasible = (pa >= 1.0 - request.alpha - _EPS) & (pr <= request.beta + _EPS)
    if not feasible.any():
        raise ValueError(f"no double plan with n <= {max_n} meets {request}")
    j = np.arange(c_max + 1)
    first = hypergeom.pmf(j[None, :], big_n, request.defects_accept, n[:, None])
    cum = np.cumsum(first, axis=1)
    continue_prob = cum[:, None, :] - cum[:, :, None]  # [n, c1, c2] = P(c1 < X1 <= c2)
    asn = n[:, None, None] * (1.0 + continue_prob)
    asn = np.where(feasible, asn, np.inf)
    best = np.unravel_index(
        np.lexsort((np.broadcast_to(n[:, None, None], asn.shape).ravel(), asn.ravel()))[0], asn.shape
    )
    i, c1, c2 = (int(v) for v in best)
    return DoublePlan(
        n=int(n[i]),
        c1=c1,
        c2=c2,
        second_sample=second_sample,
        accept_prob_at_p_accept=float(pa[i, c1, c2]),
        accept_prob_at_p_reject=float(pr[i, c1, c2]),
        asn_at_p_accept=float(asn[i, c1, c2]),
    )


@dataclass(frozen=True)
class RateInterval:
    errors: int
    sample_size: int
    lot_size: int
    confidence: float
    estimate: float  # errors / sample_size (unbiased for D/N under sampling without replacement)
    lower: float  # D_lower / N
    upper: float  # D_upper / N


def error_rate_interval(errors: int, sample_size: int, lot_size: int, confidence: float = 0.95) -> RateInterval:
    """Exact (Clopper–Pearson-type) interval for the lot's error rate D/N from `errors` in a sample.

    Inverting the two one-sided hypergeometric tests (QE §3.2): D_lower is the smallest D with
    P(X >= k | D) > γ/2 and D_upper the largest D with P(X <= k | D) > γ/2, γ = 1 − confidence. Both tail
    probabilities are monotone in D, so each bound is an integer bisection.
    """
    if not 0 <= errors <= sample_size <= lot_size:
        raise ValueError(f"need 0 <= errors <= sample_size <= lot_size, got {errors}, {sample_size}, {lot_size}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1.0 - confidence) / 2
    d_min, d_max = errors, lot_size - (sample_size - errors)  # D values the observation is possible under

    def first_true(lo: int, hi: int, predicate) -> int:  # smallest D in [lo, hi] with predicate; hi if none
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if predicate(mid) else (mid + 1, hi)
        return lo

    lower = (
        d_min
        if errors == 0
        else first_true(d_min, d_max, lambda d: hypergeom.sf(errors - 1, lot_size, d, sample_size) > tail)
    )
    # upper: largest D with P(X <= k | D) > tail, i.e. one below the first D where it drops to <= tail
    drop = first_true(d_min, d_max + 1, lambda d: d > d_max or hypergeom.cdf(errors, lot_size, d, sample_size) <= tail)
    upper = d_max if errors == sample_size else drop - 1
    return RateInterval(
        errors,
        sample_size,
        lot_size,
        confidence,
        errors / sample_size if sample_size else float("nan"),
        lower / lot_size,
        upper / lot_size,
    )
