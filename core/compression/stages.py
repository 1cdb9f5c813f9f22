"""TinyCLIP's progressive compression inside one training run (papers.md §2.2–2.3, checklist C).

The run's steps are cut into stages (`compression.stages`, or a `schedule` of targets split evenly). Each stage
has a mask phase, in which hard-concrete masks sit on the student and the loss carries λ·α·L_sparsity, ending in
prune-to-dense, then dense training to the stage's end; the next stage masks the pruned model. p and q are always
fractions of the ORIGINAL student's prunable parameters, the teacher stays the original one.

Resuming: a checkpoint's `extra` holds the stage-0 reference sizes, the prune record of every finished stage
(kept indices) and the compressor's state mid mask phase; `restore` rebuilds the pruned architecture from the
records before the weights are loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from ablate.core.compression import (
    CompressionConfig,
    Compressor,
    PruneResult,
    ReferenceSize,
    StagePlan,
    apply_prune_record,
    inherit_automatic,
    inherit_manual,
    realised_counts,
    reference_sizes,
)
from ablate.core.config.base import ConfigError
from ablate.core.config.sections import TeacherSpec
from ablate.core.models import CLIP
from ablate.core.teachers.ensemble import load_teacher


def inheritance_source(config: CompressionConfig) -> TeacherSpec:
    """The checkpoint weights are inherited from (not `bundled`) and its architecture: `teacher_model`, or the
    model a run folder of ours records in its `config.yaml`; an open_clip file must be named explicitly."""
    checkpoint = Path(str(config.teacher_checkpoint))
    model = config.teacher_model
    described = checkpoint / "config.yaml"
    if model is None and described.is_file():
        model = (yaml.safe_load(described.read_text()).get("model") or {}).get("name")
    if model is None:
        raise ConfigError(
            f"compression.teacher_model: not set, and compression.teacher_checkpoint {str(checkpoint)!r} is not a run "
            "folder whose config.yaml names its model; give the teacher's architecture (a factory name)"
        )
    return TeacherSpec(model=model, checkpoint=str(checkpoint))


@dataclass
class Pruned:
    """What a finished mask phase hands back to the trainer."""

    stage: int
    model: CLIP
    result: PruneResult


class CompressionStages:
    """The compression state of a run: reference sizes, finished stages, the current stage's compressor."""

    def __init__(self, config: CompressionConfig) -> None:
        self.config = config
        self.plans = config.plan()
        self.reference: dict[str, ReferenceSize] | None = None
        self.records: list[dict] = []
        self.compressor: Compressor | None = None

    # --- the student ---------------------------------------------------------------------------------------------
    def initial_model(
        self, build: Callable[[], CLIP], inherit_from: TeacherSpec | None, adapt: Callable[[CLIP], CLIP]
    ) -> CLIP:
        """The student at step 0: built from scratch, or inherited (manually, or as a trainable copy of the
        teacher) from `inherit_from`, the weights `compression.teacher_checkpoint` names. `adapt` gives the
        teacher's copy the run's model axes (resolution, attention, ...), which `build` applies to a built one."""
        if self.config.inherit == "auto":
            return adapt(inherit_automatic(load_teacher(inherit_from))).train().requires_grad_(True)
        model = build()
        if self.config.inherit == "manual":
            inherit_manual(model, load_teacher(inherit_from))
        return model

    def restore(self, model: CLIP, extra: dict) -> CLIP:
        """Shrink a freshly built student to the architecture a checkpoint was saved with."""
        state = extra.get("compression")
        if state is None:
            return model
        self.reference = {  # [prunable, actual, kinds]; without kinds (older checkpoints) actual counted all kinds
            name: ReferenceSize(sizes[0], sizes[1], *(tuple(kinds) for kinds in sizes[2:]))
            for name, sizes in state["reference"].items()
        }
        self.records = list(state["records"])
        for record in self.records:
            apply_prune_record(model, record)
        return model

    # --- the step loop -------------------------------------------------------------------------------------------
    def plan_at(self, step: int) -> StagePlan:
        return self.config.stage_at(step)

    def begin_step(self, model: nn.Module, step: int) -> list[dict] | None:
        """Attach the stage's masks when `step` is in a mask phase and none are attached yet; returns the new
        optimizer groups (log α, λ1, λ2) to add, or None."""
        if self.reference is None:
            self.reference = reference_sizes(model, self.config)
        plan = self.plan_at(step)
        in_mask_phase = plan.start_step <= step < plan.prune_step
        if not in_mask_phase or self.compressor is not None or len(self.records) > plan.index:
            return None
        self.compressor = Compressor(model, self.config, plan.index, self.reference)
        return self.compressor.parameter_groups()

    def groups_before_load(self, model: nn.Module, step: int, extra: dict) -> list[dict] | None:
        """`begin_step` for the optimizer a run starts or resumes with: the mask groups it must hold before a
        checkpoint's state (`extra`; {} for a fresh run) is loaded into it. A checkpoint saved at the step a mask
        phase starts holds no compressor: that phase's masks are attached by the loop's `begin_step`, as in the
        run that never stopped (attached here, the optimizer's groups disagreed with the checkpoint's)."""
        if "compression" in extra and extra["compression"]["compressor"] is None:
            return None
        return self.begin_step(model, step)

    def sparsity_terms(self, step: int) -> dict[str, torch.Tensor] | None:
        if self.compressor is None:
            return None
        return self.compressor.sparsity_terms(step - self.plan_at(step).start_step)

    def after_optimizer_step(self) -> None:
        """Clamp log α to its range, as the reference does after every step."""
        if self.compressor is not None:
            self.compressor.after_optimizer_step()

    def prune_due(self, done: int) -> bool:
        """Whether `done` steps end the current mask phase (what is pruned alongside the student, e.g. its
        weight average, is pruned by `self.compressor` before `prune_if_due`)."""
        return self.compressor is not None and done == self.plan_at(done - 1).prune_step

    def prune_if_due(self, done: int) -> Pruned | None:
        """After `done` steps: prune-to-dense if that ended the current mask phase."""
        if not self.prune_due(done):
            return None
        plan = self.plan_at(done - 1)
        dense, result = self.compressor.prune()
        self.compressor.detach()
        self.compressor = None
        self.records.append(result.record)
        return Pruned(plan.index, dense, result)

    def metrics(self, step: int) -> dict[str, float]:
        """p, q, λ1, λ2 and kept heads/units/dims per layer while masks are on; the stage index always."""
        metrics = {"compression/stage": float(self.plan_at(step).index)}
        if self.compressor is not None:
            metrics |= self.compressor.log_metrics()
            metrics["compression/target_sparsity"] = self.compressor.target_sparsity(
                step - self.plan_at(step).start_step
            )
        return metrics

    def realised_sparsity(self, model: nn.Module) -> float | None:
        """Of the original prunable parameters, the fraction pruned away so far (None before the first prune)."""
        if not self.records or self.reference is None:
            return None
        return realised_counts(model, self.reference)["realised_sparsity"]

    def tags(self) -> dict[str, str]:
        """What the run's sparsity numbers count, for readers of its tracking record (after `begin_step`)."""
        assert self.reference is not None
        kinds = ", ".join(f"{tower}: {'+'.join(size.kinds)}" for tower, size in self.reference.items())
        return {
            "ablate.sparsity": "p (compression/expected_sparsity), q (compression/target_sparsity) and "
            "compression/realised_sparsity: fraction of the original student's prunable parameters of the masked "
            f"kinds ({kinds}) removed; model/params_*: whole-model parameter counts"
        }

    def extra_state(self) -> dict:
        assert self.reference is not None
        return {
            "compression": {
                "reference": {
                    name: [size.prunable, size.actual, list(size.kinds)] for name, size in self.reference.items()
                },
                "records": self.records,
                "compressor": self.compressor.state_dict() if self.compressor is not None else None,
            }
        }

    def load_compressor_state(self, extra: dict) -> None:
        state = extra.get("compression", {}).get("compressor")
        if state is not None and self.compressor is not None:
            self.compressor.load_state_dict(state)
