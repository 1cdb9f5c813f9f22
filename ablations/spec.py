"""The study file, validated: what to vary, what to optimise, how many trials, where they run and log.

A study names a base TrainConfig (a file or inline) plus fixed overrides, and a search space whose keys are
dotted TrainConfig paths. Every error names the study file, the field path and the value, and the search
space is checked against TrainConfig before any trial starts, so a typo fails in the first second rather than
in trial 40.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ablate.ablations.optuna_storage import JOURNAL_PREFIX, open_optuna_storage, storage_file
from ablate.ablations.slurm_spec import SlurmSpec
from ablate.core.config.base import ConfigError
from ablate.core.config.loading import (
    apply_overrides,
    describe_validation_error,
    read_yaml,
    validate_train_config,
)
from ablate.core.config.presets import PRESETS, preset_overrides
from ablate.core.config.uris import check_database_url, check_sqlite_url, check_tracking_uri


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FloatParam(_Strict):
    type: Literal["float"]
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be smaller than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0 (got {self.low})")
        return self


class IntParam(_Strict):
    """Optuna's IntDistribution rules, checked here so that the study file, not the launch, is blamed."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be smaller than high ({self.high})")
        if self.log and self.low < 1:
            raise ValueError(f"log scale needs low >= 1 (got {self.low})")
        if self.log and self.step != 1:
            raise ValueError(f"log scale samples every integer: drop step (got {self.step})")
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
    kind: Literal["local", "debug", "slurm"] = "local"
    threads_per_trial: int | None = Field(
        None,
        ge=1,
        description="threads of each trial process; local: default the machine's cores / (parallel x processes); "
        "slurm: use slurm.cpus_per_task",
    )
    nodes: int = Field(1, ge=1, description="nodes per trial (slurm only): a multi-node torch.distributed trial")
    tasks_per_node: int = Field(
        1, ge=1, description="processes per node of one trial: >1 runs it as a torch.distributed job (gloo/nccl)"
    )
    timeout_min: int = Field(120, ge=1, description="time limit of each job (sbatch --time on SLURM)")
    poll_seconds: float | None = Field(
        None, gt=0, description="how often job states are read, one query for all jobs; default 2 s, SLURM 10 s"
    )
    retries: int = Field(1, ge=0, description="reruns of a failed job, each resuming from its last checkpoint")
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)

    @model_validator(mode="after")
    def _threads_from_allocation(self) -> ExecutorSpec:
        if self.kind == "slurm" and self.threads_per_trial is not None:
            raise ValueError("with kind 'slurm' a trial's threads are its slurm.cpus_per_task; drop threads_per_trial")
        if self.kind != "slurm" and self.nodes != 1:
            raise ValueError(f"nodes: {self.nodes} needs kind 'slurm'; a {self.kind} trial runs on this machine")
        if self.kind == "debug" and self.tasks_per_node != 1:
            raise ValueError("tasks_per_node: the debug executor runs a trial inside this process; use kind 'local'")
        if self.poll_seconds is None:  # sacct is a call to the accounting database: keep it light on clusters
            self.poll_seconds = 10.0 if self.kind == "slurm" else 2.0
        return self


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
    """A named fixed configuration (overrides of the base), run before any trial with the same seeds.

    `preset` (e.g. `mobileclip`, core/config/presets.py) contributes its overrides first; explicit ones win.
    """

    preset: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    description: str = ""

    @model_validator(mode="after")
    def _merge_preset(self) -> BaselineSpec:
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ValueError(f"unknown preset {self.preset!r} (known: {', '.join(PRESETS)})")
            self.overrides = preset_overrides(self.preset) | self.overrides
            self.description = self.description or PRESETS[self.preset][0]
        return self


OPTUNA_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+", "mysql://", "mysql+", "journal:")


class StorageSpec(_Strict):
    """Where the Optuna study and the MLflow runs live.

    `optuna`: a database URL (sqlite, PostgreSQL, MySQL) or `journal:PATH`, Optuna's append-only journal file,
    which many jobs on a shared file system can write at once (sqlite over NFS cannot). Default: sqlite in the
    study's run folder, or a journal there for SLURM studies. `mlflow`: a sqlite URL or an `ablate mlflow serve`
    address (http://host:port), which is how jobs on other nodes log.
    """

    optuna: str | None = Field(None, description="Optuna storage URL or journal:PATH")
    mlflow: str = "sqlite:///mlflow.db"

    @field_validator("optuna")
    @classmethod
    def _known_optuna_scheme(cls, url: str | None) -> str | None:
        if url is None:
            return url
        if not url.startswith(OPTUNA_SCHEMES):
            raise ValueError(f"expected one of {', '.join(OPTUNA_SCHEMES)}... (a database URL or journal:PATH)")
        if url.startswith(JOURNAL_PREFIX):
            if not url.removeprefix(JOURNAL_PREFIX).strip():
                raise ValueError("journal: needs a file path after it, e.g. journal:runs/study.journal")
            return url
        return check_sqlite_url(url) if url.startswith("sqlite:///") else check_database_url(url)

    @field_validator("mlflow")
    @classmethod
    def _known_mlflow_scheme(cls, url: str) -> str:
        return check_tracking_uri(url)


class StudySpec(_Strict):
    # The name is a folder, an MLflow experiment and part of report folder names (compare_A_vs_B): 100
    # characters leaves room under the file systems' 255-byte limit on one path component.
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
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
            points = grid_size(self)
            if points > MAX_GRID_POINTS:
                raise ValueError(
                    f"sampler.name: 'grid' over {points} points; a study enqueues at most {MAX_GRID_POINTS}"
                )
        return self

    @model_validator(mode="after")
    def _pruner_fits_objectives(self) -> StudySpec:
        """Optuna cannot prune a multi-objective study: an explicit pruner there is an error (the launch would
        run without it), and the default becomes `none`, so the plan says what the launch does."""
        if len(self.objectives) > 1 and self.pruner.name != "none":
            if "pruner" in self.model_fields_set:
                raise ValueError(
                    f"pruner.name: {self.pruner.name!r} with {len(self.objectives)} objectives: Optuna cannot "
                    "prune multi-objective studies, the launch would run unpruned; set pruner: {name: none}"
                )
            self.pruner = PrunerSpec(name="none")
        return self

    @property
    def run_folder(self) -> Path:
        return Path(self.runs_root) / self.name

    @property
    def optuna_storage(self) -> str:
        """The storage URL; `journal:/abs/path` for journal files (Optuna has no URL form for them)."""
        if self.storage.optuna is None:
            if self.executor.kind == "slurm":
                return f"{JOURNAL_PREFIX}{(self.run_folder / 'optuna.journal').resolve()}"
            return f"sqlite:///{(self.run_folder / 'optuna.db').resolve()}"
        journal = storage_file(self.storage.optuna) if self.storage.optuna.startswith(JOURNAL_PREFIX) else None
        if journal is not None:
            return f"{JOURNAL_PREFIX}{journal.resolve()}"
        return self.storage.optuna

    def open_optuna_storage(self) -> Any:
        """What `optuna.create_study/load_study(storage=...)` takes: the URL, or a journal storage object."""
        return open_optuna_storage(self.optuna_storage)


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
    base_file = path.parent / spec.base if isinstance(spec.base, str) else None
    try:
        base = read_yaml(base_file) if base_file is not None else dict(spec.base)
    except ConfigError as err:
        raise ConfigError(f"{path}: base: {err}") from None
    tree = apply_overrides(base, spec.overrides, f"{path}: overrides.")
    validate_train_config(tree, _blame(path, base_file, base, spec.overrides))
    for name, baseline in spec.baselines.items():
        where = f"{path}: baselines.{name}"
        validate_train_config(apply_overrides(tree, baseline.overrides, f"{where}.overrides."), where)
    for name, param in spec.search_space.items():
        for value in example_values(param):
            where = f"{path}: search_space.{name}"
            validate_train_config(apply_overrides(tree, {name: value}, f"{path}: search_space."), where)
    return spec, tree


def _blame(study: Path, base_file: Path | None, base: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """Which file (and part of it) holds the field a validation error is about: an override of it, else the
    base that sets it, else both together (a rule across fields, a field neither sets)."""

    def source(loc: tuple[str, ...]) -> str:
        dotted = ".".join(loc)
        if dotted and any(dotted == k or dotted.startswith(f"{k}.") or k.startswith(f"{dotted}.") for k in overrides):
            return f"{study} (overrides)"
        if loc and _holds(base, loc):
            return str(base_file) if base_file is not None else f"{study} (base)"
        return f"{study} (base + overrides)"

    return source


def _holds(tree: Any, loc: tuple[str, ...]) -> bool:
    for key in loc:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


MAX_GRID_POINTS = 10_000


def grid_size(spec: StudySpec) -> int:
    """How many points the grid sampler enumerates, counted without enumerating them."""
    return math.prod(len(p.choices) for p in spec.search_space.values() if isinstance(p, CategoricalParam))


def example_values(param: Param) -> list[Any]:
    """Values that must all fit TrainConfig: both ends of a range, every choice, the fixed value, and for a float
    range one fractional value inside it (pydantic accepts 100.0 for an int field, but not what TPE samples)."""
    if isinstance(param, FloatParam):
        low, high = param.low, param.high
        inside = math.exp(0.63 * math.log(low) + 0.37 * math.log(high)) if param.log else 0.63 * low + 0.37 * high
        return [low, high, inside if inside != int(inside) else math.nextafter(inside, high)]
    if isinstance(param, IntParam):
        return [param.low, param.high]
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    return [param.value]
