"""Attention modules whose width may differ from their input width, so heads can be removed.

- `nn.MultiheadAttention` calls its output projection through `F.multi_head_attention_forward` (not as a module,
  so no hook sees the per-head outputs) and requires num_heads × head_dim == embed_dim. `ModularMultiheadAttention`
  is the same module (same parameters and state-dict keys, still an `nn.MultiheadAttention`) computed through
  `self.out_proj(...)` with widths from num_heads × head_dim: head masks hook `out_proj` like every other
  attention, and a pruned one keeps working.
- timm's fastvit `Attention` reshapes the head outputs to the input's channel count; `NarrowFastVitAttention` uses
  num_heads × head_dim instead. timm's ViT `Attention` already uses `attn_dim`, which pruning updates.

The classes are swapped in place (`module.__class__`), which keeps every parameter, buffer and hook.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import fastvit
from torch import nn


class ModularMultiheadAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention (self- or cross-attention, packed in_proj) computed through its submodules."""

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, length, source = query.shape[0], query.shape[1], key.shape[1]
        heads, head_dim = self.num_heads, self.head_dim
        weights = self.in_proj_weight.chunk(3)
        biases = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        q, k, v = (
            F.linear(x, w, b).view(batch, -1, heads, head_dim).transpose(1, 2)
            for x, w, b in zip((query, key, value), weights, biases, strict=True)
        )
        bias = _additive_bias(attn_mask, key_padding_mask, batch, heads, length, source, q.dtype)
        causal = is_causal and bias is None
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) * head_dim**-0.5
            if causal:
                scores = scores.masked_fill(
                    torch.ones(length, source, dtype=torch.bool, device=q.device).triu(1), float("-inf")
                )
            probs = F.dropout((scores if bias is None else scores + bias).softmax(-1), dropout, self.training)
            out = probs @ v
            attention = probs.mean(1) if average_attn_weights else probs
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, is_causal=causal)
            attention = None
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, heads * head_dim))
        return (out if self.batch_first else out.transpose(0, 1)), attention


def _additive_bias(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    batch: int,
    heads: int,
    length: int,
    source: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """nn.MultiheadAttention's masks (bool: True = blocked, or additive) as one additive (B|1, H|1, L, S) bias.

    A 3-D mask is (B·H', L, S); callers such as open_clip build it for the unpruned head count H' by repeating one
    mask per head, so when H' ≠ H the first head's mask stands for all.
    """
    bias = None
    if attn_mask is not None:
        mask = _as_additive(attn_mask, dtype)
        if mask.dim() == 3:
            mask = mask.view(batch, -1, length, source)
            mask = mask if mask.shape[1] in (1, heads) else mask[:, :1]
        bias = mask
    if key_padding_mask is not None:
        padding = _as_additive(key_padding_mask, dtype).view(batch, 1, 1, source)
        bias = padding if bias is None else bias + padding
    return bias


def _as_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


class NarrowFastVitAttention(fastvit.Attention):
    """fastvit's MHSA with the attention width num_heads × head_dim instead of the input's channel count."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        tokens = x.flatten(2).transpose(-2, -1)
        qkv = self.qkv(tokens).reshape(batch, height * width, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        dropout = self.attn_drop.p if self.training else 0.0
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            out = self.attn_drop((q * self.scale @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, height * width, -1)))
        return out.transpose(-2, -1).reshape(batch, -1, height, width)


_NARROW_FORMS: dict[type, type] = {
    nn.MultiheadAttention: ModularMultiheadAttention,
    fastvit.Attention: NarrowFastVitAttention,
}


def make_modular(module: nn.Module) -> None:
    """Swap a known fixed-width attention class for its narrow-capable twin (idempotent)."""
    twin = _NARROW_FORMS.get(type(module))
    if twin is not None:
        module.__class__ = twin


def set_heads(module: nn.Module, num_heads: int, width: int | None) -> None:
    """Record a pruned head count (and, for nn.MultiheadAttention, the pruned model width)."""
    make_modular(module)
    module.num_heads = num_heads
    if hasattr(module, "attn_dim"):  # timm's Attention reshapes the head outputs to attn_dim
        module.attn_dim = num_heads * module.head_dim
    if isinstance(module, nn.MultiheadAttention) and width is not None:
        module.embed_dim = module.kdim = module.vdim = width
