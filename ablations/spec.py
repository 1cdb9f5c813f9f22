"""The study file, validated: what to vary, what to optimise, how many trials, where they run and log.

A study names a base TrainConfig (a file or inline) plus fixed overrides, and a search space whose keys are
dotted TrainConfig paths. Every error names the study file, the field path and the value, and the search
space is checked against TrainConfig before any trial starts, so a typo fails in the first second rather than
in trial 40.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ablate.core.config_io import (
    ConfigError,
    apply_overrides,
    describe_validation_error,
    read_yaml,
    validate_train_config,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FloatParam(_Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be smaller than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0 (got {self.low})")
        return self


class IntParam(_Strict):
    type: Literal["int"]
    low: int
    high: int
    step: int = 1
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be smaller than high ({self.high})")
        return self


class CategoricalParam(_Strict):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


class FixedParam(_Strict):
    type: Literal["fixed"]
    value: Any


Param = Annotated[FloatParam | IntParam | CategoricalParam | FixedParam, Field(discriminator="type")]


class Objective(_Strict):
    metric: str = "eval/zeroshot/mean_top1"
    direction: Literal["maximize", "minimize"] = "maximize"


class SamplerSpec(_Strict):
    name: Literal["tpe", "random", "grid", "nsga2", "gp", "cmaes"] = "tpe"
    seed: int = 0


class PrunerSpec(_Strict):
    """Optuna pruner fed by the trial jobs themselves (each evaluation reports the first objective)."""

    name: Literal["median", "hyperband", "successive_halving", "none"] = "median"
    startup_trials: int = Field(2, ge=0, description="median: trials that finish before any is pruned")
    warmup_steps: int = Field(0, ge=0, description="median: training steps before a trial may be pruned")
    min_resource: int = Field(100, ge=1, description="hyperband / successive halving: first rung, in steps")
    reduction_factor: int = Field(3, ge=2, description="hyperband / successive halving")


class BudgetSpec(_Strict):
    trials: int = Field(8, ge=1, description="configurations in total, counting those of earlier launches")
    parallel: int = Field(1, ge=1, description="jobs (trial replicates) running at once")
    wall_clock_min: float | None = Field(None, gt=0, description="no new trial starts after this many minutes")


class ExecutorSpec(_Strict):
    kind: Literal["local", "debug"] = "local"
    threads_per_trial: int | None = Field(None, ge=1, description="default: the machine's cores / parallel")
    timeout_min: int = Field(120, ge=1)
    poll_seconds: float = Field(2.0, gt=0)
    retries: int = Field(1, ge=0, description="reruns of a failed job, each resuming from its last checkpoint")


class ReplicateSpec(_Strict):
    """Each configuration runs once per seed; the objective Optuna sees aggregates the replicates."""

    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    aggregate: Literal["mean", "median", "min", "max"] = "mean"

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct (got {seeds})")
        return seeds


class BaselineSpec(_Strict):
    """A named fixed configuration (overrides of the base), run before any trial with the same seeds."""

    overrides: dict[str, Any] = Field(default_factory=dict)
    description: str = ""


class StorageSpec(_Strict):
    optuna: str | None = Field(None, description="Optuna storage URL; default sqlite in the study's run folder")
    mlflow: str = "sqlite:///mlflow.db"


class StudySpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    base: str | dict[str, Any] = Field(default_factory=dict, description="TrainConfig YAML path or inline")
    overrides: dict[str, Any] = Field(default_factory=dict)
    search_space: dict[str, Param] = Field(default_factory=dict)
    replicates: ReplicateSpec = Field(default_factory=ReplicateSpec)
    baselines: dict[str, BaselineSpec] = Field(default_factory=dict)
    objectives: list[Objective] = Field(default_factory=lambda: [Objective()], min_length=1)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    runs_root: str = Field("runs", description="the study's files go to <runs_root>/<name>/")

    @field_validator("objectives")
    @classmethod
    def _distinct_metrics(cls, objectives: list[Objective]) -> list[Objective]:
        metrics = [objective.metric for objective in objectives]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"each objective metric may appear once (got {metrics})")
        return objectives

    @model_validator(mode="after")
    def _grid_is_enumerable(self) -> StudySpec:
        if self.sampler.name == "grid":
            for name, param in self.search_space.items():
                if not isinstance(param, CategoricalParam | FixedParam):
                    raise ValueError(f"sampler 'grid' needs categorical or fixed parameters; {name} is {param.type}")
        return self

    @property
    def run_folder(self) -> Path:
        return Path(self.runs_root) / self.name

    @property
    def optuna_storage(self) -> str:
        return self.storage.optuna or f"sqlite:///{(self.run_folder / 'optuna.db').resolve()}"


def load_study(path: Path | str) -> tuple[StudySpec, dict[str, Any]]:
    """Validate a study file; returns the spec and its resolved base TrainConfig tree (overrides applied).

    Every search-space path is checked by validating the base config with one value of that parameter.
    """
    path = Path(path)
    raw = read_yaml(path)
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, StudySpec, str(path))) from None
    try:
        base = read_yaml(path.parent / spec.base) if isinstance(spec.base, str) else dict(spec.base)
    except ConfigError as err:
        raise ConfigError(f"{path}: base: {err}") from None
    tree = apply_overrides(base, spec.overrides)
    validate_train_config(tree, f"{path} (base + overrides)")
    for name, baseline in spec.baselines.items():
        validate_train_config(apply_overrides(tree, baseline.overrides), f"{path}: baselines.{name}")
    for name, param in spec.search_space.items():
        for value in example_values(param):
            validate_train_config(apply_overrides(tree, {name: value}), f"{path}: search_space.{name}")
    return spec, tree


def example_values(param: Param) -> list[Any]:
    """Values that must all fit TrainConfig: both ends of a range, every choice, the fixed value."""
    if isinstance(param, FloatParam | IntParam):
        return [param.low, param.high]
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    return [param.value]
