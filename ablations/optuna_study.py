"""Turning a StudySpec into Optuna objects. The launcher and every trial job open the same study through here,
so the job's pruner is exactly the launcher's."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from ablate.ablations.spec import CategoricalParam, FixedParam, FloatParam, IntParam, StudySpec


def distributions(spec: StudySpec) -> dict[str, BaseDistribution]:
    """The sampled part of the search space (fixed parameters are not Optuna's business)."""
    result: dict[str, BaseDistribution] = {}
    for name, param in spec.search_space.items():
        if isinstance(param, FloatParam):
            result[name] = FloatDistribution(param.low, param.high, log=param.log)
        elif isinstance(param, IntParam):
            result[name] = IntDistribution(param.low, param.high, step=param.step, log=param.log)
        elif isinstance(param, CategoricalParam):
            result[name] = CategoricalDistribution(param.choices)
    return result


def fixed_params(spec: StudySpec) -> dict[str, Any]:
    return {name: p.value for name, p in spec.search_space.items() if isinstance(p, FixedParam)}


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    seed = spec.sampler.seed
    if spec.sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    name = spec.sampler.name
    if name == "grid":  # the grid itself is enqueued (enqueue_grid); nothing is left to sample
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "cmaes":  # continuous parameters only; categorical ones fall back to independent sampling
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def grid_points(spec: StudySpec) -> list[dict[str, Any]]:
    """Every combination of the categorical choices, in a stable order."""
    names = [name for name, p in spec.search_space.items() if isinstance(p, CategoricalParam)]
    choices = [spec.search_space[name].choices for name in names]
    return [dict(zip(names, combination, strict=True)) for combination in itertools.product(*choices)]


def enqueue_grid(study: optuna.Study, spec: StudySpec) -> None:
    """Queue the grid points no trial has taken yet.

    Optuna's GridSampler calls `study.stop()` when the grid is exhausted, which raises outside `optimize()`,
    i.e. under ask/tell. Enqueued fixed trials give the same coverage and survive relaunches: they are stored
    as WAITING and handed out by the next `ask`.
    """
    taken = [trial.params for trial in study.get_trials(deepcopy=False)]
    taken += [trial.system_attrs.get("fixed_params", {}) for trial in study.get_trials(deepcopy=False)]
    for point in grid_points(spec):
        if point not in taken:
            study.enqueue_trial(point)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """Optuna cannot prune multi-objective studies (peers.md pain point 3): they get no pruner."""
    pruner = spec.pruner
    if pruner.name == "none" or len(spec.objectives) > 1:
        return optuna.pruners.NopPruner()
    if pruner.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.min_resource, reduction_factor=pruner.reduction_factor
        )
    if pruner.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=pruner.min_resource, reduction_factor=pruner.reduction_factor
        )
    return optuna.pruners.MedianPruner(n_startup_trials=pruner.startup_trials, n_warmup_steps=pruner.warmup_steps)


def open_study(spec: StudySpec) -> optuna.Study:
    """Create the study on first launch, load it on later launches and inside trial jobs."""
    optuna.logging.set_verbosity(logging.WARNING)
    return optuna.create_study(
        storage=spec.open_optuna_storage(),
        study_name=spec.name,
        directions=[objective.direction for objective in spec.objectives],
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        load_if_exists=True,
    )
