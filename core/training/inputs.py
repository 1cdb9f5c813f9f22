"""What a run reads besides its config: the reinforced shards, the online teachers and the weights a compressed
student inherits, as resolved paths.

The trainer takes these resolved, so it never builds them: preparing an input that must itself be trained (the
bundled teachers, their reinforced copy of the benchmark) happens a layer above, in `core/teachers/bundled.py`,
which calls the trainer and hands its results down. `direct_inputs` resolves a config that names its inputs
explicitly and refuses `bundled`, which only the preparing layer can resolve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ablate.core.compression.stages import inheritance_source
from ablate.core.config.base import ConfigError
from ablate.core.config.sections import TeacherSpec, TrainConfig


@dataclass(frozen=True)
class RunInputs:
    """`reinforcement`: the DataCompDR-layout folder the run reads teacher embeddings from (None: no stored
    teachers); `teachers`: the online ensemble's members; `inherit_from`: the compression weight source."""

    reinforcement: Path | None = None
    teachers: list[TeacherSpec] = field(default_factory=list)
    inherit_from: TeacherSpec | None = None


def unprepared_fields(config: TrainConfig) -> list[str]:
    """The dotted fields of `config` that say `bundled`, i.e. need the preparing layer."""
    fields = []
    if config.data.reinforcement == "bundled":
        fields.append("data.reinforcement")
    if config.teachers.mode == "online" and config.teachers.members == "bundled":
        fields.append("teachers.members")
    if config.compression and config.compression.teacher_checkpoint == "bundled":
        fields.append("compression.teacher_checkpoint")
    return fields


def direct_inputs(config: TrainConfig) -> RunInputs:
    """The inputs of a config that names every one of them explicitly."""
    unprepared = unprepared_fields(config)
    if unprepared:
        raise ConfigError(
            f"{', '.join(unprepared)}: 'bundled' must be prepared before training "
            "(use ablate.core.teachers.bundled.prepare_inputs, as `ablate train` and the trial job do)"
        )
    members = config.teachers.members if config.teachers.mode == "online" else []
    compression = config.compression
    inherits = compression is not None and compression.inherit != "none"
    return RunInputs(
        reinforcement=Path(config.data.reinforcement) if config.data.reinforcement else None,
        teachers=list(members),
        inherit_from=inheritance_source(compression) if inherits else None,
    )
