"""Parameter accounting: expected remaining size under the masks (→ expected sparsity p) and realised counts.

Charges follow TinyCLIP's `L0Module.get_num_parameters_and_constraint` (papers.md §2.2, §9), generalised from the
fixed 4h²+4h / 2hI+h+I to the parameters each layer really has (biases or not, Linear or 1×1 conv):
- a head is charged ⌊(in-projection + out-projection parameters)/H⌋, an FFN unit ⌊(fc1 + fc2 parameters)/I⌋;
- prunable size M = Σ_layers H·head charge + Σ_layers (fc1 + fc2 parameters); norms and embeddings are ignored.
  The attention part counts when heads or hidden dims are masked, the FFN part when units or hidden dims are.
- With a hidden mask: R = Σ_l (ΣP_hidden)·(ΣP_head,l)·(head charge_l / h) + Σ_l (ΣP_hidden)·(ΣP_int,l)·2;
  without: R = Σ_l ΣP_head,l·head charge_l + Σ_l ΣP_int,l·unit charge_l. An unmasked kind has P = 1.
- Joint over towers: p = 1 − ΣR / ΣM_ref, where M_ref is the prunable size of the stage-0 (uncompressed) model so
  that stage targets (0.25 → 0.5 → 0.75) are fractions of the original, as in TinyCLIP's multi-stage runs.
- One definition of sparsity: p, q and the realised sparsity (1 − actual / actual_ref) all count the prunable
  parameters of the masked kinds only (attention when heads or hidden dims are masked, FFNs when units or hidden
  dims are); whole-model sizes are the separate `model/params_*` counts.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
from torch import nn

from ablate.core.compression.structure import MASK_KINDS, AttentionLayer, MlpLayer, TowerStructure

ProbabilityLookup = Callable[[str, str], torch.Tensor | None]  # (kind, layer path) -> P(z≠0) row, None = unmasked


def head_charge(layer: AttentionLayer) -> int:
    return layer.parameters // layer.num_heads


def unit_charge(layer: MlpLayer) -> int:
    return layer.parameters // layer.units


def prunable_size(structure: TowerStructure, kinds: Collection[str]) -> int:
    """M for one tower: what the masks of `kinds` can remove (§9 "prunable size")."""
    size = 0
    if "heads" in kinds or "hidden" in kinds:
        size += sum(layer.num_heads * head_charge(layer) for layer in structure.attention)
    if "intermediate" in kinds or "hidden" in kinds:
        size += sum(layer.parameters for layer in structure.mlp)
    return size


def actual_prunable_parameters(structure: TowerStructure, kinds: Collection[str]) -> int:
    """Parameters really held by the layers the masks of `kinds` can shrink (for realised sparsity): the same
    layers `prunable_size` charges, so p, q and the realised sparsity are fractions of one set of parameters."""
    attention = "heads" in kinds or "hidden" in kinds
    mlp = "intermediate" in kinds or "hidden" in kinds
    layers = [*(structure.attention if attention else ()), *(structure.mlp if mlp else ())]
    return sum(layer.parameters for layer in layers)


def expected_remaining(structure: TowerStructure, kinds: Collection[str], probs: ProbabilityLookup) -> torch.Tensor:
    """R for one tower, differentiable in every mask's log α."""
    total = torch.zeros(())

    def mass(kind: str, path: str, size: int) -> torch.Tensor | float:
        row = probs(kind, path) if kind in kinds else None
        return float(size) if row is None else row.sum()

    if "hidden" in kinds:
        assert structure.hidden is not None
        hidden_mass, width = mass("hidden", "", structure.hidden.width), structure.hidden.width
        for layer in structure.attention:
            total = total + hidden_mass * mass("heads", layer.path, layer.num_heads) * (head_charge(layer) / width)
        for layer in structure.mlp:
            total = total + hidden_mass * mass("intermediate", layer.path, layer.units) * 2
        return total
    if "heads" in kinds:
        for layer in structure.attention:
            total = total + mass("heads", layer.path, layer.num_heads) * head_charge(layer)
    if "intermediate" in kinds:
        for layer in structure.mlp:
            total = total + mass("intermediate", layer.path, layer.units) * unit_charge(layer)
    return total


@dataclass(frozen=True)
class ReferenceSize:
    """One tower's sizes in the uncompressed (stage-0) model: charged prunable size M and the actual parameters
    of the same layers, for the masked `kinds` (checkpoints written before kinds were recorded counted all)."""

    prunable: int
    actual: int
    kinds: tuple[str, ...] = MASK_KINDS


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tower_parameters(model: nn.Module) -> dict[str, int]:
    """Image and text parameters, the text count without its token embedding (TinyCLIP's convention)."""
    text = count_parameters(model.text)
    embedding = getattr(model.text, "token_embedding", None)
    if isinstance(embedding, nn.Embedding):
        text -= embedding.weight.numel()
    image = count_parameters(model.visual)
    return {"image": image, "text": text, "total": image + text}
