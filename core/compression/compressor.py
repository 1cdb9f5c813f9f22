"""`Compressor`: the masks of one compression stage on a CLIP model, its sparsity Lagrangian and its prune step."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ablate.core.compression.accounting import (
    ReferenceSize,
    actual_prunable_parameters,
    expected_remaining,
    prunable_size,
    tower_parameters,
)
from ablate.core.compression.config import CompressionConfig
from ablate.core.compression.hard_concrete import HardConcrete
from ablate.core.compression.masking import TowerMasking
from ablate.core.compression.pruning import Keep, TowerPlan, shrink_tower
from ablate.core.compression.structure import MASK_KINDS, MaskKind, StructureError, TowerStructure, discover

TOWER_ATTRIBUTES = {"image": "visual", "text": "text"}


def tower_structures(model: nn.Module, towers: list[str] | tuple[str, ...]) -> dict[str, TowerStructure]:
    return {name: discover(getattr(model, TOWER_ATTRIBUTES[name]), name) for name in towers}


def mask_kinds(model: nn.Module, config: CompressionConfig) -> dict[str, tuple[MaskKind, ...]]:
    """Mask kinds per masked tower, `auto` resolved to every kind the tower's structure offers: a ViT or open_clip
    text tower takes all three, an MCi image tower or an MCt text tower heads and FFN units (no hidden stream)."""
    kinds = {}
    for name, requested in config.masks().items():
        if requested != "auto":
            kinds[name] = requested
            continue
        structure = discover(getattr(model, TOWER_ATTRIBUTES[name]), name)
        if offered := tuple(kind for kind in MASK_KINDS if structure.offers(kind)):
            kinds[name] = offered
    if not kinds:
        raise StructureError("image_masks, text_masks: auto, but neither tower has attention heads, FFNs or a stream")
    return kinds


def reference_sizes(model: nn.Module, config: CompressionConfig) -> dict[str, ReferenceSize]:
    """The stage-0 sizes every stage's p is measured against; computed from the uncompressed model."""
    masks = mask_kinds(model, config)
    return {
        name: ReferenceSize(
            prunable_size(structure, masks[name]), actual_prunable_parameters(structure, masks[name]), masks[name]
        )
        for name, structure in tower_structures(model, tuple(masks)).items()
    }


@dataclass
class PruneResult:
    """`record`: kept indices per tower (rebuild a pruned architecture with `apply_prune_record`);
    `counts`: realised parameters (image, text without token embedding, total) and sparsities."""

    record: dict[str, dict[str, object]]
    counts: dict[str, float]


def apply_prune_record(model: nn.Module, record: dict[str, dict[str, object]]) -> nn.Module:
    """Shrink a freshly built model to a pruned architecture (slice only), e.g. before loading its checkpoint."""
    for name, structure in tower_structures(model, tuple(record)).items():
        shrink_tower(structure, TowerPlan.from_record(record[name]))
    return model


def realised_counts(model: nn.Module, reference: dict[str, ReferenceSize]) -> dict[str, float]:
    """Parameters of the (pruned) model: per tower (image, text without token embedding, total), the prunable
    parameters of the masked kinds now (`prunable`) and in the original model (`prunable_original`), and
    `realised_sparsity` = 1 − prunable / prunable_original, the quantity p estimates and q targets."""
    counts: dict[str, float] = dict(tower_parameters(model))
    structures = tower_structures(model, tuple(reference))
    actual = sum(actual_prunable_parameters(structures[name], size.kinds) for name, size in reference.items())
    original = sum(size.actual for size in reference.values())
    counts["prunable"] = actual
    counts["prunable_original"] = original
    counts["realised_sparsity"] = 1.0 - actual / original
    return counts


class Compressor(nn.Module):
    """Hard-concrete masks on a CLIP model for stage `stage` of `config`.

    Holds the gates and the Lagrange multipliers (its own parameters, not the model's) and hooks the model's
    towers; the model's modules and state-dict keys are unchanged (nn.MultiheadAttention becomes its modular twin,
    which has the same parameters). `reference` is required from stage 1 on: the stage-0 sizes from
    `reference_sizes(original_model, config)` or `previous_compressor.reference`.
    """

    def __init__(
        self,
        model: nn.Module,
        config: CompressionConfig,
        stage: int = 0,
        reference: dict[str, ReferenceSize] | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= stage < len(config.stages):
            raise ValueError(f"stage {stage}: the compression config has {len(config.stages)} stage(s)")
        if stage > 0 and reference is None:
            raise ValueError(
                f"stage {stage}: pass reference= the stage-0 sizes (reference_sizes(original_model, config) or the "
                "previous Compressor's .reference), so that p stays a fraction of the original model"
            )
        self.config, self.stage_plan = config, config.plan()[stage]
        self._model = (model,)  # a tuple, so the model is not registered as a submodule of the compressor
        self.kinds = mask_kinds(model, config)
        self.structures = tower_structures(model, tuple(self.kinds))
        for name, structure in self.structures.items():
            for kind in self.kinds[name]:
                structure.require(kind)
        self.reference = reference if reference is not None else reference_sizes(model, config)
        if set(self.reference) != set(self.kinds):
            raise ValueError(f"reference covers towers {sorted(self.reference)}, the config masks {sorted(self.kinds)}")

        init = config.resolved("log_alpha_init")
        self.sites: list[tuple[str, str, str]] = []  # (tower, kind, layer path); "" = the hidden stream
        gates: list[HardConcrete] = []
        for name, structure in self.structures.items():
            rows = []
            if "heads" in self.kinds[name]:
                rows += [("heads", layer.path, layer.num_heads) for layer in structure.attention]
            if "intermediate" in self.kinds[name]:
                rows += [("intermediate", layer.path, layer.units) for layer in structure.mlp]
            if "hidden" in self.kinds[name]:
                rows.append(("hidden", "", structure.hidden.width))
            for kind, path, size in rows:
                self.sites.append((name, kind, path))
                gates.append(HardConcrete(size, init))
        self.gates = nn.ModuleList(gates)
        lambda_init = config.resolved("lambda_init")
        self.lambda1 = nn.Parameter(torch.tensor(lambda_init))
        self.lambda2 = nn.Parameter(torch.tensor(lambda_init))
        self._gate_of = dict(zip(self.sites, self.gates, strict=True))
        self.masking = {
            name: TowerMasking(structure, {(k, p): g for (t, k, p), g in self._gate_of.items() if t == name})
            for name, structure in self.structures.items()
        }
        parameter = next(model.parameters(), None)
        if parameter is not None:
            self.to(parameter.device)
        for multiplier in (self.lambda1, self.lambda2):  # after .to(), which may replace tensors
            multiplier.register_hook(torch.neg)  # gradient ascent with a positive LR: min over masks, max over λ
        self.attach()

    @property
    def model(self) -> nn.Module:
        return self._model[0]

    def attach(self) -> None:
        for masking in self.masking.values():
            masking.attach()

    def detach(self) -> None:
        """Remove the hooks: the model computes its unmasked function again."""
        for masking in self.masking.values():
            masking.detach()

    # --- optimisation -------------------------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, object]]:
        """Optimizer groups: log α (mask LR) and λ1, λ2 (Lagrangian LR, ascent via negated gradients), no decay.

        Their LRs are constant in the reference code: an LR schedule must skip groups with `constant_lr`.
        """
        return [
            {
                "params": [gate.log_alpha for gate in self.gates],
                "lr": self.config.mask_lr_for(self.stage_plan.index),
                "weight_decay": 0.0,
                "name": "compression/log_alpha",
                "constant_lr": True,
            },
            {
                "params": [self.lambda1, self.lambda2],
                "lr": self.config.resolved("lagrangian_lr"),
                "weight_decay": 0.0,
                "name": "compression/lagrangian",
                "constant_lr": True,
            },
        ]

    def after_optimizer_step(self) -> None:
        """Clamp every log α to [ln 0.01, ln 100] (`constrain_parameters`)."""
        for gate in self.gates:
            gate.clamp_()

    # --- sparsity ----------------------------------------------------------------------------------------------
    def expected_sparsity(self) -> torch.Tensor:
        """p = 1 − Σ_towers R / Σ_towers M_ref, differentiable in log α."""
        remaining = sum(
            expected_remaining(structure, self.kinds[name], self._probabilities(name))
            for name, structure in self.structures.items()
        )
        return 1.0 - remaining / sum(size.prunable for size in self.reference.values())

    def target_sparsity(self, step: int) -> float:
        """q at `step` steps into this stage."""
        return self.stage_plan.target_sparsity(step)

    def sparsity_terms(self, step: int) -> dict[str, torch.Tensor]:
        """`loss_sparsity` (add α·it to the loss) and, detached for logging, p, q, λ1, λ2."""
        p = self.expected_sparsity()
        q = self.target_sparsity(step)
        gap = (q - p).clamp(min=0) if self.config.penalty == "one_sided" else p - q
        loss = self.lambda1 * gap + self.lambda2 * gap.square()
        return {
            "loss_sparsity": loss,
            "p": p.detach(),
            "q": torch.tensor(q),
            "lambda1": self.lambda1.detach().clone(),
            "lambda2": self.lambda2.detach().clone(),
        }

    def _probabilities(self, tower: str):
        def lookup(kind: str, path: str) -> torch.Tensor | None:
            gate = self._gate_of.get((tower, kind, path))
            return None if gate is None else gate.prob_nonzero()

        return lookup

    # --- inspection and pruning -----------------------------------------------------------------------------------
    @torch.no_grad()
    def deterministic_plan(self) -> dict[str, TowerPlan]:
        plans = {name: TowerPlan() for name in self.structures}
        for (tower, kind, path), gate in self._gate_of.items():
            keep = Keep.from_gate(gate.deterministic())
            plan = plans[tower]
            if kind == "hidden":
                plan.hidden = keep
            else:
                getattr(plan, kind)[path] = keep
        return plans

    @torch.no_grad()
    def log_metrics(self) -> dict[str, float]:
        """Kept heads / units / hidden dims per layer under the deterministic masks, p, λ1, λ2, the mask LR."""
        metrics: dict[str, float] = {}
        for (tower, kind, path), gate in self._gate_of.items():
            key = f"compression/{tower}/hidden_kept" if kind == "hidden" else f"compression/{tower}/{path}/{kind}_kept"
            metrics[key] = float(gate.deterministic().count_nonzero())
        metrics["compression/expected_sparsity"] = float(self.expected_sparsity())
        metrics["compression/mask_lr"] = self.config.mask_lr_for(self.stage_plan.index)  # `auto` as realised
        metrics["compression/lambda1"] = float(self.lambda1)
        metrics["compression/lambda2"] = float(self.lambda2)
        return metrics

    @torch.no_grad()
    def prune(self) -> tuple[nn.Module, PruneResult]:
        """A dense copy of the model with the deterministic masks removed and folded in (the model is untouched)."""
        plans = self.deterministic_plan()
        expected = float(self.expected_sparsity())
        self.detach()
        try:
            dense = copy.deepcopy(self.model)
        finally:
            self.attach()
        for name, structure in tower_structures(dense, tuple(plans)).items():
            shrink_tower(structure, plans[name])
        counts = realised_counts(dense, self.reference)
        counts["expected_sparsity"] = expected
        counts["target_sparsity"] = self.stage_plan.q_target
        counts["mask_lr"] = self.config.mask_lr_for(self.stage_plan.index)
        return dense, PruneResult({name: plan.record() for name, plan in plans.items()}, counts)

    # --- checkpoints ------------------------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, object]:
        return {
            "stage": self.stage_plan.index,
            "sites": [list(site) for site in self.sites],
            "reference": {name: [size.prunable, size.actual] for name, size in self.reference.items()},
        }

    def set_extra_state(self, state: dict[str, object]) -> None:
        mine = self.get_extra_state()
        for key in ("stage", "sites", "reference"):
            if state[key] != mine[key]:
                raise ValueError(
                    f"compressor checkpoint does not match this compressor: {key} {state[key]} != {mine[key]}"
                )
