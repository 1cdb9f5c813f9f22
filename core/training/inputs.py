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
from ablate.core.data.manifest import load_manifest
from ablate.core.data.reinforcement_store import check_reinforcement_folder
from ablate.core.models.weights import resolve_weights
from ablate.core.teachers.ensemble import check_teacher


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
    check_explicit_inputs(config)
    members = config.teachers.members if config.teachers.mode == "online" else []
    return RunInputs(
        reinforcement=Path(config.data.reinforcement) if config.data.reinforcement else None,
        teachers=list(members),
        inherit_from=explicit_inheritance(config),
    )


def check_explicit_inputs(config: TrainConfig) -> None:
    """The data folders, online teachers and student weights a config names exist, checked from the config alone.
    `prepare_inputs` gets here before the bundled benchmark is generated or a teacher trained, so a wrong path
    fails in a second, not in minutes."""
    if config.data.root is not None:
        load_manifest(config.data.root)
    if config.data.reinforcement not in (None, "bundled"):
        check_reinforcement_folder(Path(config.data.reinforcement))
    if config.teachers.mode == "online" and config.teachers.members != "bundled":
        for index, member in enumerate(config.teachers.members):  # names and weights files; nothing is loaded
            check_teacher(member, f"teachers.members[{index}]")
    if config.model.pretrained is not None:
        resolve_weights(config.model.name, config.model.pretrained, "model.pretrained")


def explicit_inheritance(config: TrainConfig) -> TeacherSpec | None:
    """The weights a compressed student inherits from a named checkpoint (None: it inherits nothing)."""
    compression = config.compression
    if compression is None or compression.inherit == "none":
        return None
    source = inheritance_source(compression)
    named = compression.teacher_model is not None
    check_auto_inheritance(config, source, "compression.teacher_model" if named else f"{source.checkpoint}/config.yaml")
    return source


def check_auto_inheritance(config: TrainConfig, source: TeacherSpec, origin: str) -> None:
    """`inherit: auto` trains a copy of the teacher, so `model.name` must name the teacher's architecture:
    otherwise the run logs one model and trains another, and its resume rebuilds the logged one and fails.
    `origin` says where the teacher's architecture came from."""
    compression = config.compression
    if compression is not None and compression.inherit == "auto" and source.model != config.model.name:
        raise ConfigError(
            f"model.name: {config.model.name!r}, but compression.inherit is auto: the student is a trainable copy "
            f"of its teacher, a {source.model!r} ({origin}); set model.name: {source.model}"
        )
