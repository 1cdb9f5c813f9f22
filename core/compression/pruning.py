"""Prune-to-dense: remove gated-off heads, FFN units and hidden dims and fold the kept gate values into the
weights, in place on a tower (the caller prunes a copy). The result is the same module types with smaller
tensors, so it trains on with a rebuilt optimizer and can be masked again.

What is folded where (the masked forward of masking.py, made dense):
- head values → columns of the output projection; unit values → fc2's input columns;
- hidden values → the stream's entry writers (embeddings, or a pre-norm's affine) and the rows + bias of every
  branch output projection / fc2. LayerNorms, LayerScales and the readers of the stream (qkv, fc1, the tower's
  output projection) are only sliced: the masked LayerNorm output is not gated.
  (TinyCLIP's `prune()` also multiplies the tower's output projection by the hidden values, which its masked
  forward never does; we follow the forward, which is what the masks were trained on, so outputs match.)
- A layer whose heads (units) are all gated off keeps one head (unit) with a zero output column: the exact
  function, without changing the block's module types.

`Keep.value = None` means slice only: `shrink_tower` then rebuilds a pruned architecture from a `PruneRecord`
(kept indices) so a checkpoint of a pruned model can be loaded into a freshly built one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ablate.core.compression.attention import set_heads
from ablate.core.compression.structure import AttentionLayer, HiddenStream, MlpLayer, TensorRef, TowerStructure


@dataclass
class Keep:
    """Kept indices of one gate row and, when folding, their gate values."""

    index: torch.Tensor
    value: torch.Tensor | None = None

    @classmethod
    def from_gate(cls, gate: torch.Tensor) -> Keep:
        index = gate.nonzero().squeeze(1)
        return cls(index, gate.index_select(0, index))


@dataclass
class TowerPlan:
    heads: dict[str, Keep] = field(default_factory=dict)
    intermediate: dict[str, Keep] = field(default_factory=dict)
    hidden: Keep | None = None

    def record(self) -> dict[str, object]:
        """JSON-able kept indices (what a pruned architecture needs to be rebuilt)."""
        return {
            "heads": {path: keep.index.tolist() for path, keep in self.heads.items()},
            "intermediate": {path: keep.index.tolist() for path, keep in self.intermediate.items()},
            "hidden": None if self.hidden is None else self.hidden.index.tolist(),
        }

    @classmethod
    def from_record(cls, record: dict[str, object]) -> TowerPlan:
        def keep(indices: list[int]) -> Keep:
            return Keep(torch.tensor(indices, dtype=torch.long))

        hidden = record.get("hidden")
        return cls(
            heads={p: keep(i) for p, i in record.get("heads", {}).items()},
            intermediate={p: keep(i) for p, i in record.get("intermediate", {}).items()},
            hidden=None if hidden is None else keep(hidden),
        )


def shrink_tower(structure: TowerStructure, plan: TowerPlan) -> None:
    hidden = plan.hidden
    if hidden is not None and structure.hidden is None:
        raise ValueError(f"{structure.name}: a hidden-dim plan for a tower without a supported residual stream")
    known = {layer.path for layer in structure.attention} | {layer.path for layer in structure.mlp}
    unknown = (set(plan.heads) | set(plan.intermediate)) - known
    if unknown:
        raise ValueError(f"{structure.name}: the plan names layers this tower does not have: {sorted(unknown)}")
    for layer in structure.attention:
        _shrink_attention(layer, plan.heads.get(layer.path), hidden)
    for layer in structure.mlp:
        _shrink_mlp(layer, plan.intermediate.get(layer.path), hidden)
    if hidden is not None:
        _shrink_stream(structure.hidden, hidden)


def _along(values: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[axis] = -1
    return values.view(shape)


def _take(tensor: torch.Tensor, axis: int, keep: Keep | None, fold: bool) -> torch.Tensor:
    """Select `keep.index` along `axis`, multiplying by `keep.value` there when `fold`."""
    if keep is None:
        return tensor
    taken = tensor.index_select(axis, keep.index.to(tensor.device))
    if fold and keep.value is not None:
        taken = taken * _along(keep.value.to(taken), axis, taken.dim())
    return taken


def _replace(owner: nn.Module, name: str, tensor: torch.Tensor) -> None:
    old = getattr(owner, name)
    setattr(owner, name, nn.Parameter(tensor.contiguous(), requires_grad=old.requires_grad))
    _sync_shape(owner)


def _sync_shape(module: nn.Module) -> None:
    """Keep the size attributes of torch layers in line with their new weights."""
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.Conv2d):
        module.out_channels, module.in_channels = module.weight.shape[:2]
    elif isinstance(module, nn.Embedding):
        module.embedding_dim = module.weight.shape[1]
    elif isinstance(module, nn.LayerNorm) and module.weight is not None:
        module.normalized_shape = tuple(module.weight.shape)


def _row_keep(keep: Keep | None, size: int) -> tuple[Keep, bool]:
    """The kept rows, and whether all were gated off (then row 0 stays, with a zero output)."""
    if keep is None:
        return Keep(torch.arange(size)), False
    if keep.index.numel() == 0:
        return Keep(torch.zeros(1, dtype=torch.long), torch.zeros(1)), True
    return keep, False


def _shrink_attention(layer: AttentionLayer, heads: Keep | None, hidden: Keep | None) -> None:
    num_heads, head_dim, module = layer.num_heads, layer.head_dim, layer.module
    heads, _ = _row_keep(heads, num_heads)
    owner, weight_name, bias_name = (
        (module, "in_proj_weight", "in_proj_bias") if layer.is_mha else (module.qkv, "weight", "bias")
    )
    weight = getattr(owner, weight_name)
    weight = weight.view(3, num_heads, head_dim, weight.shape[1])
    weight = _take(_take(weight, 1, heads, fold=False), 3, hidden, fold=False)
    _replace(owner, weight_name, weight.reshape(-1, weight.shape[-1]))
    if getattr(owner, bias_name) is not None:
        bias = _take(getattr(owner, bias_name).view(3, num_heads, head_dim), 1, heads, fold=False)
        _replace(owner, bias_name, bias.reshape(-1))
    proj = layer.out_proj
    out_weight = _take(proj.weight.view(proj.weight.shape[0], num_heads, head_dim), 1, heads, fold=True)
    _replace(proj, "weight", _take(out_weight.flatten(1), 0, hidden, fold=True))
    if proj.bias is not None:
        _replace(proj, "bias", _take(proj.bias, 0, hidden, fold=True))
    set_heads(module, heads.index.numel(), None if hidden is None else hidden.index.numel())


def _shrink_mlp(layer: MlpLayer, units: Keep | None, hidden: Keep | None) -> None:
    units, _ = _row_keep(units, layer.units)
    fc1, fc2 = layer.fc1, layer.fc2
    _replace(fc1, "weight", _take(_take(fc1.weight, 0, units, fold=False), 1, hidden, fold=False))
    if fc1.bias is not None:
        _replace(fc1, "bias", _take(fc1.bias, 0, units, fold=False))
    _replace(fc2, "weight", _take(_take(fc2.weight, 1, units, fold=True), 0, hidden, fold=True))
    if fc2.bias is not None:
        _replace(fc2, "bias", _take(fc2.bias, 0, hidden, fold=True))


def _shrink_stream(stream: HiddenStream, hidden: Keep) -> None:
    def apply(ref: TensorRef, fold: bool) -> None:
        tensor = getattr(ref.owner, ref.name)
        _replace(ref.owner, ref.name, _take(tensor, ref.axis % tensor.dim(), hidden, fold))

    for ref in stream.entry_writers:
        apply(ref, fold=True)
    for ref in stream.sliced:
        apply(ref, fold=False)
    # A pre-norm is both an entry writer (its affine was folded above) and a stream norm: each tensor once.
    done = {(id(ref.owner), ref.name) for ref in (*stream.entry_writers, *stream.sliced)}
    for norm in stream.norms:
        for name in ("weight", "bias"):
            if getattr(norm, name) is not None and (id(norm), name) not in done:
                apply(TensorRef(norm, name, 0), fold=False)
        norm.normalized_shape = (hidden.index.numel(),)
    for owner, attr in stream.width_attrs:
        setattr(owner, attr, hidden.index.numel())
