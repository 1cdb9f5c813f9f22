"""Why a trial was pruned, in words the launcher prints: `at step 200 (0.402 < median 0.431 of 3 complete
trials)`, not just `pruned`.

The pruner itself (Optuna's, built in optuna_study.make_pruner) only answers yes or no; the reason is rebuilt
from what it decided on, read back from the study: the trial's reported values and, for the median rule, the
values the complete trials reported at the same step (Optuna's PercentilePruner compares the trial's best
value so far with the median of those).
"""

from __future__ import annotations

import math

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from ablate.ablations.spec import StudySpec


def prune_reason(study: optuna.Study, trial_number: int, spec: StudySpec) -> str:
    """`at step S (...)` for the trial numbered `trial_number`, as the pruner of `spec` saw it."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == trial_number)
    step = trial.last_step
    if step is None:
        return "before its first evaluation"
    values = trial.intermediate_values
    maximize = study.direction == StudyDirection.MAXIMIZE
    reported = [values[s] for s in values if s <= step and not math.isnan(values[s])]
    best = (max if maximize else min)(reported) if reported else math.nan
    if spec.pruner.name != "median":
        share = f"1/{spec.pruner.reduction_factor}"
        return f"at step {step} ({_pair(best)[0]} not in the best {share} of its rung, {spec.pruner.name})"
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    at_step = [t.intermediate_values[step] for t in complete if step in t.intermediate_values]
    if math.isnan(best):
        return f"at step {step} (its value is not a number)"
    if not at_step:  # pruned by the other rules' view of the study; nothing to compare with here
        return f"at step {step}"
    median = float(np.nanpercentile(np.array(at_step, dtype=float), 50))
    mine, theirs = _pair(best, median)
    sign = "<" if maximize else ">"
    return f"at step {step} ({mine} {sign} median {theirs} of {len(at_step)} complete trials)"


def _pair(*values: float) -> tuple[str, ...]:
    """Three significant digits, or four where three would print two different values alike."""
    texts = tuple(f"{v:.3g}" for v in values)
    return tuple(f"{v:.4g}" for v in values) if len(set(texts)) < len(texts) else texts
