"""Self-attention with a choice of weight function: softmax, or sigmoid attention (papers.md §4, §8 F).

Sigmoid attention replaces the row-normalised softmax(QKᵀ/√d) by the element-wise σ(QKᵀ/√d + b). Without
normalisation each row sums to about n·σ(0) = n/2 at init, so the output norm grows with the number of keys n;
the bias b = −ln n brings a row's sum back to ≈ mean(e^z), like softmax (σ(z − ln n) ≈ e^z/n when e^z ≪ n).

Every attention module here is timm's `Attention` (so masks find `qkv`, `proj`, `num_heads`, `head_dim` in
timm's layout: q, k, v concatenated, heads contiguous). Softmax runs timm's own forward unchanged; only the
sigmoid path is ours. `swap_attention` converts the attention of any built tower in place, copying weights,
so a sigmoid model starts from exactly the weights its softmax twin would have had.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from timm.layers import Attention as TimmAttention
from timm.models import fastvit
from torch import nn

AttentionKind = Literal["softmax", "sigmoid"]
SigmoidBias = Literal["neg_log_n", "learnable", "zero"]


@dataclass(frozen=True)
class AttentionSpec:
    """How every attention block of a model weighs its keys.

    sigmoid_bias (sigmoid only): `neg_log_n` b = −ln n, n = number of keys of the call (the paper's default; with
    causal or padding masks n still counts every key, as the reference LM config −ln 2048 does); `learnable`
    b = −ln n + β with a per-layer scalar β trained from 0; `zero` b = 0 (the unstable baseline).
    qk_norm: LayerNorm on each head's q and k before the dot product (the reference repo's stabiliser).
    """

    kind: AttentionKind = "softmax"
    sigmoid_bias: SigmoidBias = "neg_log_n"
    qk_norm: bool = False

    @property
    def is_default(self) -> bool:
        """Plain softmax without QK-norm: the towers as timm/open_clip build them, nothing to swap."""
        return self.kind == "softmax" and not self.qk_norm


def sigmoid_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    bias: torch.Tensor | float,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """σ(q kᵀ·scale + b) v over (..., n_q, d) × (..., n_k, d). `attn_mask` as in SDPA: bool (True = attend) or
    additive float (0 / −inf); masked keys get weight exactly 0 (σ(−inf) = 0), never a renormalised share."""
    logits = (q * scale) @ k.transpose(-2, -1) + bias
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        logits = logits.masked_fill(~attn_mask, float("-inf"))
    elif attn_mask is not None:
        logits = logits + attn_mask
    return torch.sigmoid(logits) @ v


class Attention(TimmAttention):
    """timm's multi-head self-attention on (B, N, C) tokens, with softmax or sigmoid weights."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        spec: AttentionSpec,
        *,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            qk_norm=spec.qk_norm,
            proj_bias=proj_bias,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            norm_layer=nn.LayerNorm,
        )
        self.kind = spec.kind
        self.bias_mode = spec.sigmoid_bias
        learnable = spec.kind == "sigmoid" and spec.sigmoid_bias == "learnable"
        self.bias_offset = nn.Parameter(torch.zeros(())) if learnable else None

    def sigmoid_bias(self, num_keys: int) -> torch.Tensor | float:
        if self.bias_mode == "zero":
            return 0.0
        bias = -math.log(num_keys)
        return bias + self.bias_offset if self.bias_offset is not None else bias

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if self.kind == "softmax":
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if is_causal:
            attn_mask = torch.ones(tokens, tokens, dtype=torch.bool, device=x.device).tril()
        x = sigmoid_attention(q, k, v, self.scale, self.sigmoid_bias(k.shape[-2]), attn_mask)
        x = x.transpose(1, 2).reshape(batch, tokens, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(x)))


class SpatialAttention(Attention):
    """The same attention on a (B, C, H, W) feature map, as in FastViT/MCi's attention stage (H·W keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(-2, -1)
        out = super().forward(tokens)
        return out.transpose(-2, -1).reshape(batch, channels, height, width)


def _converted(old: nn.Module, spec: AttentionSpec) -> Attention:
    """A copy of `old` (timm's ViT or FastViT attention, or ours) with `spec`, carrying over its weights."""
    dim = old.qkv.in_features
    target = SpatialAttention if isinstance(old, (fastvit.Attention, SpatialAttention)) else Attention
    new = target(
        dim,
        old.num_heads,
        spec,
        qkv_bias=old.qkv.bias is not None,
        proj_bias=old.proj.bias is not None,
        attn_drop=old.attn_drop.p,
        proj_drop=old.proj_drop.p,
    )
    if new.head_dim != old.head_dim:
        raise ValueError(f"{type(old).__name__}: head_dim {old.head_dim} is not dim/num_heads; cannot convert")
    state = {k: v for k, v in old.state_dict().items() if not k.startswith(("q_norm", "k_norm", "bias_offset"))}
    missing, unexpected = new.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(("q_norm", "k_norm", "bias_offset")) for k in missing):
        raise ValueError(f"{type(old).__name__}: weights do not map onto Attention ({missing=}, {unexpected=})")
    return new.to(device=old.qkv.weight.device, dtype=old.qkv.weight.dtype)


CONVERTIBLE = (TimmAttention, fastvit.Attention, Attention, SpatialAttention)


def swap_attention(module: nn.Module, spec: AttentionSpec) -> int:
    """Replace every timm ViT/FastViT attention under `module` by ours with `spec`, in place; return how many.

    Anything else that attends (torch's `nn.MultiheadAttention`, e.g. inside open_clip's text transformer, or a
    timm variant with extra parts) must be rebuilt by its owner first (see text.TextEncoder.from_open_clip);
    leaving one behind is an error, so no block silently keeps softmax.
    """
    swapped = 0
    for name, child in list(module.named_children()):
        if type(child) in CONVERTIBLE:
            setattr(module, name, _converted(child, spec))
            swapped += 1
        elif isinstance(child, (nn.MultiheadAttention, TimmAttention, fastvit.Attention)):
            raise ValueError(f"{type(child).__name__} at {name!r} cannot take attention={spec.kind!r}")
        else:
            swapped += swap_attention(child, spec)
    return swapped
