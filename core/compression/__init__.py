"""TinyCLIP-style structured compression: hard-concrete masks, sparsity Lagrangian, prune-to-dense, inheritance.

Contract for the trainer (papers.md §2.2–2.3, §9):

    config = CompressionConfig(stages=[CompressionStage(target_sparsity=0.25, steps=..., mask_steps=...,
                                                       q_warmup_steps=...), ...])
    student = inherit_automatic(teacher)             # inherit: auto  (or build + inherit_manual(student, teacher))
    reference = reference_sizes(student, config)     # stage-0 sizes: p and q are fractions of THIS model
    for plan in config.plan():                       # StagePlan: start_step, prune_step, end_step, q ramp
        compressor = Compressor(student, config, stage=plan.index, reference=reference)
        optimizer = AdamW(model_groups(student) + compressor.parameter_groups())
        for t in range(plan.start_step, plan.prune_step):        # mask phase
            terms = compressor.sparsity_terms(t - plan.start_step)   # loss_sparsity, p, q, lambda1, lambda2
            loss = (1 - λ)·L_CLIP + λ·((1 - α)·L_distill + α·terms["loss_sparsity"])
            loss.backward(); optimizer.step(); student.clamp_logit_scale(); compressor.after_optimizer_step()
        student, result = compressor.prune()         # dense smaller model + PruneResult(record, counts)
        optimizer = AdamW(model_groups(student))     # rebuilt; train densely until plan.end_step

- `Compressor(model, config, stage, reference)` hooks the model (no module or state-dict key changes; an
  nn.MultiheadAttention becomes its modular twin with the same parameters). Gates are drawn per tower forward:
  samples in train mode, deterministic masks in eval mode, so evaluation during the mask phase sees the masks.
- `parameter_groups()`: log α (mask LR) and λ1, λ2 (Lagrangian LR), weight decay 0, both flagged
  `constant_lr=True` (the reference does not schedule them; skip them in the LR schedule). λ ascent is done by
  negating their gradients, so the LR is positive and any optimizer works (the code's LR −0.02 ≡ +0.02 here).
- `after_optimizer_step()`: clamps log α to [ln 0.01, ln 100]. `log_metrics()`: kept heads/units/dims per layer,
  p, λ, the mask LR. `prune()`: (dense model, PruneResult) with `counts` = image, text (no token embedding), total,
  prunable and prunable_original (the masked kinds' parameters), realised_sparsity (1 − their ratio: the same
  parameters p and q count), expected_sparsity, target_sparsity, mask_lr; `record` = kept indices (JSON) for
  `apply_prune_record(fresh_model, record)` when resuming from a pruned checkpoint.
- `state_dict()` / `load_state_dict()`: log α, λ1, λ2 and a check that stage, mask sites and reference match.
- Bad input: `StructureError` names the tower and mask kind (`image_masks: 'hidden' ...`), pydantic errors name the
  config field, `InheritanceError` names the parameter.
"""

from ablate.core.compression.accounting import ReferenceSize, tower_parameters
from ablate.core.compression.compressor import (
    Compressor,
    PruneResult,
    apply_prune_record,
    realised_counts,
    reference_sizes,
)
from ablate.core.compression.config import CompressionConfig, CompressionStage, StagePlan
from ablate.core.compression.hard_concrete import HardConcrete
from ablate.core.compression.inheritance import InheritanceError, inherit_automatic, inherit_manual
from ablate.core.compression.structure import StructureError, TowerStructure, discover

__all__ = [
    "CompressionConfig",
    "CompressionStage",
    "Compressor",
    "HardConcrete",
    "InheritanceError",
    "PruneResult",
    "ReferenceSize",
    "StagePlan",
    "StructureError",
    "TowerStructure",
    "apply_prune_record",
    "discover",
    "inherit_automatic",
    "inherit_manual",
    "realised_counts",
    "reference_sizes",
    "tower_parameters",
]
