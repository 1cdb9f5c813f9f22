"""What a study will do, checked before anything runs (`ablate launch --dry-run`, and the start of every launch).

Static validation (spec.py) catches wrong keys, types and ranges; this adds what needs the runtime: the data
exists, every model name is in the factory, and every objective is a metric the trainer actually reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from ablate.ablations.optuna_study import distributions, fixed_params, grid_points, make_sampler
from ablate.ablations.spec import CategoricalParam, StudySpec
from ablate.ablations.storage_check import check_storages
from ablate.core.config.base import ConfigError
from ablate.core.config.loading import apply_overrides, validate_train_config
from ablate.core.config.sections import TrainConfig
from ablate.core.data.bundled import bundled_shapes_path
from ablate.core.data.manifest import load_manifest
from ablate.core.data.reinforcement_store import reinforcement_shards
from ablate.core.data.shapes import zero_shot_tasks
from ablate.core.evaluation.suite import resolve_tasks
from ablate.core.models.factory import is_known, unknown_model_message
from ablate.core.models.weights import resolve_weights
from ablate.core.teachers.bundled import RECIPES, inheritance_of, teacher_metrics
from ablate.core.teachers.ensemble import check_teacher
from ablate.core.training.runtime import resolve_device
from ablate.core.training.trainer import result_metric_names
from ablate.slurm.executors import threads_per_trial


@dataclass
class StudyPlan:
    spec: StudySpec
    data: str
    objective_metrics: list[str]
    threads_per_job: int
    jobs: int
    first_trials: list[dict[str, Any]]


def check_runtime(spec: StudySpec, base: dict[str, Any], source: str) -> tuple[str, list[str]]:
    """Stores, data, model names and objectives; returns a description of the data and the reportable metrics."""
    config = validate_train_config(base, source)
    check_storages(spec, source)
    if spec.executor.kind != "slurm":  # a login node may lack the GPUs of the compute nodes
        for where, fixed in _fixed_configs(spec, base, source).items():
            try:
                resolve_device(fixed.train.device)
            except ConfigError as err:
                raise ConfigError(f"{source}: {where}: {err}") from None
    if config.data.root is not None:
        manifest = load_manifest(config.data.root)  # FileNotFoundError names data.root
        tasks, data, root = list(manifest.zero_shot), f"{config.data.root} ({manifest.name})", config.data.root
    else:
        root = bundled_shapes_path(config.data.shapes_train, config.data.shapes_val, config.data.shapes_seed)
        cached = (root / "manifest.json").is_file()
        tasks = list(zero_shot_tasks())
        data = f"bundled shapes benchmark at {root} ({'cached' if cached else 'generated on first launch'})"
    try:
        resolve_tasks(config.eval.tasks, root)  # folders, class names, templates and labels, before any trial
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    data += "".join(f"; eval task {task.name} ({task.format} {task.path or root})" for task in config.eval.tasks)
    data += describe_teachers(config)
    _check_model_names(spec, base, source)
    _check_inheritance_sources(spec, base, source)
    reported = result_metric_names(tasks, config.eval.tasks)
    for index, objective in enumerate(spec.objectives):
        if objective.metric not in reported:
            raise ConfigError(
                f"{source}: objectives.{index}.metric: {objective.metric!r} is not a metric the "
                f"trainer reports (available: {', '.join(reported)})"
            )
    return data, reported


def describe_teachers(config: TrainConfig) -> str:
    """Where the run's teacher embeddings come from; a named reinforcement folder must exist."""
    reinforcement = config.data.reinforcement
    if reinforcement == "bundled" or (config.teachers.mode == "online" and config.teachers.members == "bundled"):
        recipe = RECIPES[config.teachers.recipe]
        trained = teacher_metrics(recipe)
        state = "cached" if len(trained) == len(recipe.models) else "trained on first launch (minutes)"
        return f"; bundled teachers, recipe {config.teachers.recipe} ({state})"
    if reinforcement is not None:
        reinforcement_shards(Path(reinforcement), "train")  # FileNotFoundError names data.reinforcement
        return f"; reinforcement {reinforcement}"
    return ""


def _fixed_configs(spec: StudySpec, base: dict[str, Any], source: str) -> dict[str, TrainConfig]:
    """The base and every baseline as validated configs, keyed by where they come from in the study file."""
    trees = {"base": base}
    trees |= {f"baselines.{name}": apply_overrides(base, b.overrides) for name, b in spec.baselines.items()}
    return {where: validate_train_config(tree, source) for where, tree in trees.items()}


def _check_inheritance_sources(spec: StudySpec, base: dict[str, Any], source: str) -> None:
    """Compression that inherits must know its teacher's architecture before any trial starts, and with
    `inherit: auto` (the student is the teacher) every model.name a trial can get must be that architecture."""
    configs = _fixed_configs(spec, base, source)
    choice = spec.search_space.get("model.name")
    if isinstance(choice, CategoricalParam):
        for name in choice.choices:
            tree = apply_overrides(base, {"model.name": name})
            configs[f"search_space.model.name ({name})"] = validate_train_config(tree, source)
    for where, config in configs.items():
        try:
            inheritance_of(config)
        except ConfigError as err:
            raise ConfigError(f"{source}: {where.split(' ')[0]}: {err}") from None


def _check_model_names(spec: StudySpec, base: dict[str, Any], source: str) -> None:
    """Every student name (ours or open_clip's), and the online teachers' names and weights, before trials run."""
    configs = _fixed_configs(spec, base, source)
    candidates = {(where, config.model.name) for where, config in configs.items()}
    choice = spec.search_space.get("model.name")
    if isinstance(choice, CategoricalParam):
        candidates.update(("search_space.model.name", value) for value in choice.choices)
    for where, name in sorted(candidates):
        if not is_known(name):
            raise ConfigError(f"{source}: {where}: {unknown_model_message(name)}")
    for where, config in configs.items():
        members = config.teachers.members if config.teachers.mode == "online" else "bundled"
        try:
            for index, member in enumerate([] if members == "bundled" else members):
                check_teacher(member, f"teachers.members[{index}]")
            if config.model.pretrained is not None:
                resolve_weights(config.model.name, config.model.pretrained, "model.pretrained")
        except ConfigError as err:
            raise ConfigError(f"{source}: {where}: {err}") from None


def plan_study(spec: StudySpec, base: dict[str, Any], source: str, preview: int = 5) -> StudyPlan:
    data, _ = check_runtime(spec, base, source)
    metrics = [objective.metric for objective in spec.objectives]
    seeds = len(spec.replicates.seeds)
    trials = min(spec.budget.trials, len(grid_points(spec))) if spec.sampler.name == "grid" else spec.budget.trials
    return StudyPlan(
        spec,
        data,
        metrics,
        threads_per_trial(spec.executor.threads_per_trial, spec.budget.parallel, spec.executor.tasks_per_node),
        (trials + len(spec.baselines)) * seeds,
        _first_trials(spec, min(preview, trials)),
    )


def _first_trials(spec: StudySpec, count: int) -> list[dict[str, Any]]:
    """What the sampler would propose first, from a throwaway in-memory study with the same sampler and seed."""
    if spec.sampler.name == "grid":
        return [{**point, **fixed_params(spec)} for point in grid_points(spec)[:count]]
    directions = [objective.direction for objective in spec.objectives]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    scratch = optuna.create_study(directions=directions, sampler=make_sampler(spec))
    return [{**scratch.ask(distributions(spec)).params, **fixed_params(spec)} for _ in range(count)]


def describe(plan: StudyPlan) -> list[str]:
    spec = plan.spec
    space = ", ".join(f"{k} {v.model_dump(exclude={'type'})} [{v.type}]" for k, v in spec.search_space.items())
    lines = [
        f"study {spec.name}: {spec.description or '(no description)'}",
        f"data: {plan.data}",
        f"objectives: {', '.join(f'{o.metric} ({o.direction})' for o in spec.objectives)}",
        f"sampler {spec.sampler.name} (seed {spec.sampler.seed}), pruner {spec.pruner.name}",
        f"search space: {space or 'none'}",
        f"baselines: {', '.join(spec.baselines) or 'none'}; seeds per configuration: {spec.replicates.seeds} "
        f"(objective = {spec.replicates.aggregate})",
        f"resources: {spec.budget.trials} trials, {spec.budget.parallel} jobs at once on the "
        f"{spec.executor.kind} executor, {plan.threads_per_job} threads each, {plan.jobs} jobs in all, "
        f"retries {spec.executor.retries}",
        f"storage: optuna {spec.optuna_storage}; mlflow {spec.storage.mlflow}; files in {spec.run_folder}",
        "first trials:",
    ]
    return lines + [f"  {i}: {params}" for i, params in enumerate(plan.first_trials)]
