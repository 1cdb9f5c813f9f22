"""The SLURM resources of a study's trial jobs, as a study file may set them.

Every value here ends up on an `#SBATCH --key=value` line of a generated batch script, so the study file is
untrusted input to a shell script: values are plain tokens and extra options come from an allow list.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
