"""Optuna's parameter importances, read from the study's own storage (the URL tagged on the parent run), opened
the way the launcher opens it (`ablations/optuna_storage.py`: database URLs and `journal:PATH` files alike).

Importances need the sampled parameters and objective values exactly as Optuna holds them, so they are
computed on the Optuna study rather than rebuilt from MLflow. Everything that can make them unavailable
(no storage recorded, a storage on another machine, too few complete trials, nothing varied) is reported as
a note instead of an error: a report must still build.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import optuna
import pandas as pd

from ablate.ablations.optuna_storage import open_optuna_storage, storage_file

# fANOVA fits a random forest from parameters to objective values: with fewer points than this per varied
# parameter, or one parameter only (its importance is 1 by definition), or tied values, the numbers mean nothing.
MIN_TRIALS_PER_PARAM = 3


@dataclass(frozen=True)
class Importances:
    """Per objective, the importance of each parameter (rows: parameters, columns: objective metrics); or
    why there are none (`table` is None and `note` says why)."""

    table: pd.DataFrame | None
    note: str


def param_importances(storage: str | None, study: str, objectives: list[dict[str, str]], seed: int = 0) -> Importances:
    """fANOVA importances (Optuna's default evaluator, seeded for reproducible reports) per objective."""
    if not storage:
        return Importances(None, "no Optuna storage is recorded on the study's parent run")
    path = storage_file(storage)
    if path is not None and not path.is_file():  # opening a missing file would create an empty store there
        return Importances(None, f"the Optuna storage {storage} does not exist on this machine")
    optuna.logging.set_verbosity(logging.WARNING)
    try:
        loaded = optuna.load_study(study_name=study, storage=open_optuna_storage(storage))
    except Exception as err:
        return Importances(None, f"the Optuna storage {storage} could not be read ({type(err).__name__}: {err})")
    complete = loaded.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if (why_not := _too_little(complete, objectives)) is not None:
        return Importances(None, why_not)
    columns = {}
    for index, objective in enumerate(objectives):
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        try:
            columns[objective["metric"]] = optuna.importance.get_param_importances(
                loaded, evaluator=evaluator, target=lambda trial, i=index: trial.values[i]
            )
        except (ValueError, RuntimeError) as err:  # e.g. no parameter varies across complete trials
            return Importances(None, f"Optuna could not compute importances: {err}")
    table = pd.DataFrame(columns).fillna(0.0)
    table.index.name = "parameter"
    return Importances(table, f"fANOVA over {len(complete)} complete Optuna trials")


def _too_little(complete: list[optuna.trial.FrozenTrial], objectives: list[dict[str, str]]) -> str | None:
    """Why importances over these complete trials would mean nothing, or None if they can mean something."""
    names = sorted({name for trial in complete for name in trial.params})
    varied = [name for name in names if len({repr(trial.params.get(name)) for trial in complete}) > 1]
    needed = MIN_TRIALS_PER_PARAM * max(2, len(varied))
    if len(complete) < needed:
        return (
            f"{len(complete)} complete trial(s) in Optuna; importances need at least {needed} "
            f"({MIN_TRIALS_PER_PARAM} per varied parameter, two parameters or more)"
        )
    if len(varied) < 2:
        only = f"only {varied[0]} varies" if varied else "no parameter varies"
        return f"{only} across the complete trials: a single parameter's importance is 1 by definition"
    for index, objective in enumerate(objectives):
        values = {trial.values[index] for trial in complete}
        if len(values) == 1:
            return f"every complete trial scored {values.pop():.4g} on {objective['metric']}: nothing to explain"
    return None
