"""The compression schedule (TinyCLIP auto weight inheritance, progressive multi-stage; papers.md §2.2–2.3).

Each stage prunes to a global target sparsity q (a fraction of the ORIGINAL model's prunable parameters): a mask
phase of `mask_steps` where q ramps linearly from the previous target over `q_warmup_steps` and the loss carries
the sparsity Lagrangian, then prune-to-dense, then plain training for the rest of the stage's `steps`.

Paper vs code (§7 item 7, §9) are named options; the default is the reference code, which produced the published
TinyCLIP models:
- `hyperparameters`: "code" = λ1, λ2 init 10, mask LR 0.02; "paper" = λ init 0.01, mask LR 0.01. Lagrangian LR
  0.02 in both (the code's −0.02: see Compressor, ascent is done by negating gradients so the LR stays positive).
  log α starts at 10 in both: the paper only says masks are "initialised to 1", which log α = 10 realises
  (P(z = 1) ≈ 0.9998); set `log_alpha_init` to choose another value (e.g. ln 100, the top of the clamp range).
- `penalty`: "one_sided" (code, default) λ1·max(q−p, 0) + λ2·max(q−p, 0)² penalises only under-sparsity;
  "signed" (CoFi, the paper's Eq. 7) λ1·(p−q) + λ2·(p−q)² also pulls back overshoot. One-sided is the default
  because it is what the reference runs used (§9: match the code unless named otherwise).
- `mask_lr`: "auto" (default) derives each stage's log α learning rate from its mask-phase length, max(15 /
  mask_steps, the preset's): Adam moves a log α by about the LR per step and pruning a unit takes it from 10 to
  below ≈ −2, so a phase must allow ≈ 15 of travel (measured: README, Compression). The reference's 0.02 is made
  for its 3000-step phases (60 of travel) and stays the floor there; a number fixes one LR for every stage, as the
  reference does (its phases all last thousands of steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ablate.core.compression.hard_concrete import CODE_LOG_ALPHA_INIT
from ablate.core.compression.structure import MASK_KINDS, MaskKind
from ablate.core.config.base import StrictModel

MASK_TRAVEL = 15.0
"""log α travel a mask phase must allow (`mask_lr: auto` = this / mask_steps); README, Compression: 0.1 over 150
mask steps landed at the target (q = 0.5 → 0.496), 0.02 over 50 or 150 steps pruned almost nothing (0.003, 0.013)."""

_PRESETS: dict[str, dict[str, float]] = {
    "code": {"mask_lr": 0.02, "lagrangian_lr": 0.02, "lambda_init": 10.0, "log_alpha_init": CODE_LOG_ALPHA_INIT},
    "paper": {"mask_lr": 0.01, "lagrangian_lr": 0.02, "lambda_init": 0.01, "log_alpha_init": CODE_LOG_ALPHA_INIT},
}


class CompressionStage(StrictModel):
    """One stage: prune to `target_sparsity` within `mask_steps`, then train the dense model to `steps`."""

    target_sparsity: float = Field(ge=0, lt=1, description="q: fraction of the original prunable parameters removed")
    steps: int = Field(ge=1, description="length of the whole stage (mask phase + dense training)")
    mask_steps: int = Field(ge=1, description="mask phase length; prune-to-dense happens at its end")
    q_warmup_steps: int = Field(0, ge=0, description="q ramps from the previous target to this one over these steps")

    @model_validator(mode="after")
    def _phases_fit(self) -> CompressionStage:
        if self.mask_steps > self.steps:
            raise ValueError(f"mask_steps ({self.mask_steps}) must not exceed steps ({self.steps})")
        if self.q_warmup_steps > self.mask_steps:
            raise ValueError(f"q_warmup_steps ({self.q_warmup_steps}) must not exceed mask_steps ({self.mask_steps})")
        return self


class CompressionConfig(StrictModel):
    """Masks, Lagrangian, schedule and weight inheritance of a compression run."""

    stages: list[CompressionStage] = Field(default_factory=list, description="explicit stages; or use schedule")
    schedule: list[float] | None = Field(
        None,
        description="stage targets, e.g. [0.25, 0.5, 0.75]: stages split train.steps evenly (one study value)",
    )
    mask_fraction: float = Field(0.5, gt=0, le=1, description="schedule: share of each stage spent in the mask phase")
    q_warmup_fraction: float = Field(
        0.5, ge=0, le=1, description="schedule: share of each mask phase over which q ramps up"
    )
    start_sparsity: float = Field(0.0, ge=0, lt=1, description="q at the start of the first stage's ramp")
    image_masks: list[MaskKind] | Literal["auto"] = Field(
        "auto",
        description="auto: every kind the tower's structure offers (ViT: heads, intermediate, hidden; MCi: heads, "
        f"intermediate); or a list of {list(MASK_KINDS)}; [] = image unmasked",
    )
    text_masks: list[MaskKind] | Literal["auto"] = Field(
        "auto", description="auto: every kind the text tower offers (MCt: no hidden); a list; [] = text unmasked"
    )
    penalty: Literal["one_sided", "signed"] = "one_sided"
    hyperparameters: Literal["code", "paper"] = "code"
    mask_lr: Annotated[float, Field(gt=0)] | Literal["auto"] | None = Field(
        "auto",
        description="log α learning rate; auto: per stage, max(15 / mask_steps, the preset's); None = the preset's",
    )
    lagrangian_lr: float | None = Field(None, gt=0, description="λ1, λ2 ascent learning rate; None = the preset's")
    lambda_init: float | None = Field(None, description="λ1 = λ2 at start; None = the preset's")
    log_alpha_init: float | None = Field(None, description="every log α at start; None = the preset's (10)")
    inherit: Literal["none", "manual", "auto"] = Field(
        "none", description="manual: layer subsampling + front slicing of a teacher; auto: masks on a teacher copy"
    )
    teacher_checkpoint: str | None = Field(
        None, description="the model inherited from (manual / auto); `bundled`: the bundled benchmark's teacher 0"
    )
    teacher_model: str | None = Field(None, description="its factory name (default: the bundled teacher's)")

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_from_text(cls, value: object) -> object:
        """ "0.25,0.5,0.75" -> [0.25, 0.5, 0.75]: Optuna's categorical values are scalars, so a study writes a
        schedule as one string and can compare schedules as one parameter."""
        if isinstance(value, str):
            try:
                return [float(part) for part in value.split(",")]
            except ValueError:
                raise ValueError(f"a schedule string lists stage targets like '0.25,0.5,0.75', got {value!r}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CompressionConfig:
        if not self.stages and not self.schedule:
            raise ValueError("give either stages (explicit) or schedule (stage targets, e.g. [0.5])")
        if self.stages and self.schedule and [s.target_sparsity for s in self.stages] != self.schedule:
            raise ValueError(f"schedule {self.schedule} and stages name different targets: give only one of them")
        targets = [(f"stages[{i}].target_sparsity", s.target_sparsity) for i, s in enumerate(self.stages)]
        targets = targets or [(f"schedule[{i}]", q) for i, q in enumerate(self.schedule or [])]
        previous, previous_name = self.start_sparsity, "start_sparsity"
        for name, target in targets:
            if not 0 <= target < 1:
                raise ValueError(f"{name} ({target}) must lie in [0, 1)")
            if target <= previous:
                raise ValueError(
                    f"{name} ({target}) must be greater than {previous_name} ({previous}): stage targets increase "
                    "strictly"
                )
            previous, previous_name = target, name
        for name in ("image_masks", "text_masks"):
            kinds = getattr(self, name)
            if kinds != "auto" and len(set(kinds)) != len(kinds):
                raise ValueError(f"{name} ({kinds}) lists a mask kind twice")
        if not (self.image_masks or self.text_masks):
            raise ValueError("image_masks and text_masks are both empty: nothing would be masked")
        if (self.inherit == "none") != (self.teacher_checkpoint is None):
            raise ValueError(
                f"teacher_checkpoint ({self.teacher_checkpoint!r}) must be set exactly when inherit is manual or "
                f"auto (inherit is {self.inherit!r})"
            )
        if self.lambda_init is not None and not math.isfinite(self.lambda_init):
            raise ValueError(f"lambda_init must be finite, got {self.lambda_init}")
        return self

    def stages_for(self, total_steps: int) -> list[CompressionStage]:
        """`schedule` as stages: equal shares of the run (the last takes the remainder), each pruned after
        `mask_fraction` of it with q ramping over `q_warmup_fraction` of the mask phase."""
        targets = self.schedule or []
        share = total_steps // len(targets)
        if share < 2:
            raise ValueError(f"schedule {targets} needs at least 2 steps per stage, train.steps is {total_steps}")
        stages = []
        for index, target in enumerate(targets):
            steps = share if index < len(targets) - 1 else total_steps - share * (len(targets) - 1)
            mask_steps = max(1, min(steps, round(self.mask_fraction * steps)))
            warmup = round(self.q_warmup_fraction * mask_steps)
            stages.append(
                CompressionStage(target_sparsity=target, steps=steps, mask_steps=mask_steps, q_warmup_steps=warmup)
            )
        return stages

    def resolved(self, name: Literal["lagrangian_lr", "lambda_init", "log_alpha_init"]) -> float:
        """The field's value, or the `hyperparameters` preset's when it is None."""
        value = getattr(self, name)
        return _PRESETS[self.hyperparameters][name] if value is None else float(value)

    def mask_lr_for(self, stage: int) -> float:
        """The log α learning rate of stage `stage` (0-based): `mask_lr`, the preset's when None, or under `auto`
        max(MASK_TRAVEL / the stage's mask_steps, the preset's) so that short phases can still prune."""
        preset = _PRESETS[self.hyperparameters]["mask_lr"]
        if self.mask_lr is None:
            return preset
        if self.mask_lr == "auto":
            return max(MASK_TRAVEL / self.stages[stage].mask_steps, preset)
        return float(self.mask_lr)

    def masks(self) -> dict[str, tuple[MaskKind, ...] | Literal["auto"]]:
        """Mask kinds per masked tower; "auto" is resolved against the model (`compressor.mask_kinds`)."""
        return {
            tower: kinds if kinds == "auto" else tuple(kinds)
            for tower, kinds in (("image", self.image_masks), ("text", self.text_masks))
            if kinds
        }

    def plan(self) -> list[StagePlan]:
        """Absolute step boundaries and q ramp of every stage."""
        plans, start, q_start = [], 0, self.start_sparsity
        for index, stage in enumerate(self.stages):
            plans.append(
                StagePlan(
                    index,
                    start,
                    start + stage.mask_steps,
                    start + stage.steps,
                    q_start,
                    stage.target_sparsity,
                    stage.q_warmup_steps,
                )
            )
            start, q_start = start + stage.steps, stage.target_sparsity
        return plans

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.stages)

    def stage_at(self, step: int) -> StagePlan:
        """The stage that global `step` (0-based) falls in; steps past the end belong to the last stage."""
        plans = self.plan()
        return next((p for p in plans if step < p.end_step), plans[-1])


@dataclass(frozen=True)
class StagePlan:
    """A stage on the global step axis: mask phase [start_step, prune_step), dense phase [prune_step, end_step)."""

    index: int
    start_step: int
    prune_step: int
    end_step: int
    q_start: float
    q_target: float
    q_warmup_steps: int

    def target_sparsity(self, step_in_stage: int) -> float:
        """q(t) = start + (target − start)·min(1, t/warmup) (TinyCLIP `get_target_sparsity`); no ramp if warmup 0."""
        if self.q_warmup_steps == 0:
            return self.q_target
        return self.q_start + (self.q_target - self.q_start) * min(1.0, step_in_stage / self.q_warmup_steps)
