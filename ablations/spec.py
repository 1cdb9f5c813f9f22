"""The study file, validated: what to vary, what to optimise, how many trials, where they run and log.

A study names a base TrainConfig (a file or inline) plus fixed overrides, and a search space whose keys are
dotted TrainConfig paths. Every error names the study file, the field path and the value, and the search
space is checked against TrainConfig before any trial starts, so a typo fails in the first second rather than
in trial 40.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ablate.ablations.optuna_storage import JOURNAL_PREFIX, open_optuna_storage, storage_file
from ablate.core.config.base import ConfigError
from ablate.core.config.loading import (
    apply_overrides,
    describe_validation_error,
    read_yaml,
    validate_train_config,
)
from ablate.core.config.presets import PRESETS, preset_overrides


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


# sbatch values from a study file end up on `#SBATCH --key=value` lines. Plain tokens only: no spaces, quotes,
# `;`, `|`, `$` or backticks, so a study file can never smuggle in a shell command or a second option.
PLAIN_TOKEN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.,:=+/@%-]*$")
# Feature expressions may also combine features with & and | and brackets (sbatch --constraint).
CONSTRAINT = re.compile(r"^[A-Za-z0-9_\[][A-Za-z0-9_.,:&|*\[\]-]*$")


def _plain_token(value: str) -> str:
    if not PLAIN_TOKEN.match(value):
        raise ValueError("must be one plain token: letters, digits and _ . , : = + / @ % - (no spaces or shell syntax)")
    return value


def _constraint(value: str) -> str:
    if not CONSTRAINT.match(value):
        raise ValueError("must be a feature expression: feature names joined by & or |, no spaces or shell syntax")
    return value


SbatchToken = Annotated[str, AfterValidator(_plain_token)]
Constraint = Annotated[str, AfterValidator(_constraint)]

# sbatch options a study may add. Options that change what runs or where its output goes (--wrap, --output,
# --export, --chdir, --array, --signal, ...) belong to the executor and are not accepted.
EXTRA_SBATCH_OPTIONS = frozenset(
    {
        "begin",
        "comment",
        "cpus-per-gpu",
        "deadline",
        "dependency",
        "distribution",
        "exclude",
        "exclusive",
        "gpu-bind",
        "gpus-per-task",
        "gres",
        "hint",
        "hold",
        "licenses",
        "mail-type",
        "mail-user",
        "mem-per-cpu",
        "mem-per-gpu",
        "nice",
        "nodelist",
        "no-requeue",
        "priority",
        "requeue",
        "reservation",
        "switches",
        "tmp",
        "wckey",
    }
)


class SlurmSpec(_Strict):
    """Resources of each trial job on a SLURM cluster (submitit's SlurmExecutor)."""

    partition: SbatchToken | None = None
    account: SbatchToken | None = None
    qos: SbatchToken | None = None
    constraint: Constraint | None = None
    cpus_per_task: int = Field(1, ge=1, description="also the trial's torch threads (SLURM_CPUS_PER_TASK)")
    gpus_per_node: int = Field(0, ge=0)
    mem_gb: float | None = Field(None, gt=0)
    array_parallelism: int = Field(256, ge=1, description="jobs of one submitted array running at once")
    max_requeues: int = Field(3, ge=0, description="requeues after reaching the time limit; preemptions always")
    signal_delay_s: int = Field(90, ge=1, description="USR2 this long before the time limit: checkpoint, requeue")
    additional_parameters: dict[str, Any] = Field(
        default_factory=dict, description="further sbatch options, e.g. {mail-type: END}; true for bare flags"
    )

    @field_validator("additional_parameters")
    @classmethod
    def _plain_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        for key, value in options.items():
            if key not in EXTRA_SBATCH_OPTIONS:
                allowed = ", ".join(sorted(EXTRA_SBATCH_OPTIONS))
                raise ValueError(f"sbatch option {key!r} is not accepted here (allowed: {allowed})")
            if value is True or (isinstance(value, int) and not isinstance(value, bool)):
                continue
            if not isinstance(value, str):
                raise ValueError(f"sbatch option {key!r}: {value!r} is not a value (a token, a number, or true)")
            try:
                _plain_token(value)
            except ValueError as err:
                raise ValueError(f"sbatch option {key!r}: {value!r} {err}") from None
        return options


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
        if url is not None and not url.startswith(OPTUNA_SCHEMES):
            raise ValueError(f"expected one of {', '.join(OPTUNA_SCHEMES)}... (a database URL or journal:PATH)")
        return url

    @field_validator("mlflow")
    @classmethod
    def _known_mlflow_scheme(cls, url: str) -> str:
        if not url.startswith(("sqlite:///", "http://", "https://", "postgresql", "mysql")):
            raise ValueError("expected sqlite:///PATH, a tracking server http(s)://HOST:PORT or a database URL")
        return url


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
