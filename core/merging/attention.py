"""Attention over merged tokens, for any module laid out like timm's `Attention` or torch's MultiheadAttention.

ToMe needs three things from an attention call that the stock modules do not give: a size term (proportional
attention), the keys averaged over heads (the matching metric), and, for the pruning option, the attention each
token receives. This recomputes attention from the module's own weights, so the module is never modified.

Supported layouts (duck typing):
- timm-style: `qkv` (Linear, q/k/v concatenated, heads contiguous), `proj`, `num_heads`, `head_dim`, optional
  `q_norm`/`k_norm`/`norm`/`gate`/`attn_drop`/`proj_drop` (timm ViT and FastViT attention, and ours);
  `kind == "sigmoid"` with `sigmoid_bias(num_keys)` selects sigmoid attention.
- torch `nn.MultiheadAttention` with `batch_first=True` and packed in-projection (open_clip's text blocks).

Proportional attention: softmax adds log s_j to the logits of key j (ToMe). Sigmoid attention has no row
normalisation, so s identical keys contribute s·σ(z + b)·v: the weight is multiplied by s_j, and the bias uses
the number of original tokens Σ s_j, so an unmerged layer sees exactly the bias it had without merging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AttentionOutput:
    out: torch.Tensor  # [B, N, C] after the output projection
    metric: torch.Tensor  # [B, N, head_dim]: keys averaged over heads
    received: torch.Tensor | None  # [B, N]: mean attention each token receives (only when asked)


def supports(module: nn.Module) -> bool:
    timm_like = all(hasattr(module, name) for name in ("qkv", "proj", "num_heads", "head_dim"))
    return timm_like or isinstance(module, nn.MultiheadAttention)


def _project(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, tokens, _ = x.shape
    if isinstance(module, nn.MultiheadAttention):
        if not module.batch_first or not module._qkv_same_embed_dim:
            raise ValueError("token merging needs nn.MultiheadAttention(batch_first=True) with packed in_proj")
        heads = module.num_heads
        qkv = F.linear(x, module.in_proj_weight, module.in_proj_bias)
        qkv = qkv.reshape(batch, tokens, 3, heads, module.head_dim).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)
    qkv = module.qkv(x).reshape(batch, tokens, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q_norm, k_norm = getattr(module, "q_norm", None), getattr(module, "k_norm", None)
    return (q_norm(q) if q_norm is not None else q), (k_norm(k) if k_norm is not None else k), v


def _output(module: nn.Module, x_in: torch.Tensor, heads_out: torch.Tensor) -> torch.Tensor:
    batch, _, tokens, _ = heads_out.shape
    merged = heads_out.transpose(1, 2).reshape(batch, tokens, -1)
    if isinstance(module, nn.MultiheadAttention):
        return module.out_proj(merged)
    norm = getattr(module, "norm", None)
    merged = norm(merged) if norm is not None else merged
    gate = getattr(module, "gate", None)
    if gate is not None:
        merged = merged * gate(x_in).sigmoid()
    merged = module.proj(merged)
    drop = getattr(module, "proj_drop", None)
    return drop(merged) if drop is not None else merged


def _dropout_p(module: nn.Module) -> float:
    if not module.training:
        return 0.0
    if isinstance(module, nn.MultiheadAttention):
        return module.dropout
    drop = getattr(module, "attn_drop", None)
    return drop.p if isinstance(drop, nn.Dropout) else 0.0


def attend(
    module: nn.Module,
    x: torch.Tensor,
    size: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    proportional: bool = True,
    want_received: bool = False,
    num_original: int | None = None,
) -> AttentionOutput:
    """Self-attention of `module` on x [B, N, C].

    size: [B, N, 1] token sizes (None = all 1). mask: additive float [B, 1, N, N] or [N, N] (0 / −inf).
    num_original: tokens before any merging (for sigmoid's b = −ln n); defaults to Σ size.
    """
    q, k, v = _project(module, x)
    kind = getattr(module, "kind", "softmax")
    scale = module.head_dim**-0.5
    bias = mask
    size_keys = size[..., 0][:, None, None, :] if (size is not None and proportional) else None  # [B, 1, 1, N]
    received = None
    if kind == "sigmoid":
        keys = (
            num_original if num_original is not None else (int(size.sum(1).max()) if size is not None else k.shape[-2])
        )
        logits = (q * scale) @ k.transpose(-2, -1) + module.sigmoid_bias(keys)
        if bias is not None:
            logits = logits + bias
        weights = torch.sigmoid(logits)
        if size_keys is not None:
            weights = weights * size_keys
        weights = F.dropout(weights, _dropout_p(module), module.training)
        out = weights @ v
        received = weights.mean(dim=(1, 2)) if want_received else None
    elif kind == "softmax":
        if size_keys is not None:
            log_size = size_keys.log()
            bias = log_size if bias is None else bias + log_size
        if want_received:
            weights = ((q * scale) @ k.transpose(-2, -1) + (bias if bias is not None else 0.0)).softmax(dim=-1)
            received = weights.mean(dim=(1, 2))
            out = F.dropout(weights, _dropout_p(module), module.training) @ v
        else:
            attn_mask = bias.to(q.dtype) if bias is not None else None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=_dropout_p(module))
    else:
        raise ValueError(f"{type(module).__name__}: attention kind {kind!r} is not supported by token merging")
    return AttentionOutput(_output(module, x, out), k.mean(dim=1), received)
