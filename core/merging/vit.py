"""ToMe in a timm VisionTransformer: merge between attention and MLP in every block (papers.md §3.1).

Each block runs x <- x + drop_path(ls1(attn(norm1(x)))); merge; x <- x + drop_path(ls2(mlp(norm2(x)))).
Unlike ToMe's timm patch, LayerScale (ls1, ls2) is applied (papers.md §7 item 8). The class token and any
other prefix tokens (registers) are protected. Sizes are reset at every forward of the tower; average pooling
weighs tokens by size so it equals the mean over the original tokens' merged values.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ablate.core.merging.attention import attend, supports
from ablate.core.merging.handle import MergeHandle
from ablate.core.merging.matching import bipartite_soft_matching, gather_tokens, merge_wavg, prune_lowest
from ablate.core.merging.schedule import MergeSchedule

BLOCK_PARTS = ("norm1", "attn", "ls1", "norm2", "mlp", "ls2")


class _State:
    size: torch.Tensor | None = None


def patch_vit(vit: VisionTransformer, schedule: MergeSchedule, handle: MergeHandle) -> None:
    blocks = list(vit.blocks)
    r_per_layer = schedule.per_layer(len(blocks))
    for index, block in enumerate(blocks):
        missing = [p for p in BLOCK_PARTS if not hasattr(block, p)]
        if missing or not supports(block.attn):
            raise ValueError(
                f"token merging: block {index} ({type(block).__name__}) is not a timm pre-norm Block with "
                f"timm-style attention (missing {missing or ['qkv/proj/num_heads/head_dim']})"
            )
    if vit.attn_pool is not None or vit.global_pool not in ("token", "avg", ""):
        raise ValueError(f"token merging: global_pool {vit.global_pool!r} is not supported (token or avg)")
    state = _State()
    prefix = vit.num_prefix_tokens

    def reset(_module: nn.Module, _args: tuple) -> None:
        state.size = None

    handle.add_hook(vit.register_forward_pre_hook(reset))
    for block, r in zip(blocks, r_per_layer, strict=True):
        handle.replace_forward(block, _block_forward(block, r, schedule, state, prefix, handle))
    handle.replace_forward(vit, _vit_forward(vit, state))
    handle.patched.append(f"{type(vit).__name__}: r={r_per_layer} ({schedule.mode})")


def _block_forward(block: nn.Module, r: int, schedule: MergeSchedule, state: _State, prefix: int, handle: MergeHandle):
    original = type(block).forward.__get__(block)
    prune = schedule.mode == "prune"

    def forward(x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if not handle.active(block) or (state.size is None and r == 0) or attn_mask is not None or is_causal:
            return original(x, attn_mask=attn_mask, is_causal=is_causal)
        result = attend(block.attn, block.norm1(x), state.size, None, schedule.proportional_attention, prune and r > 0)
        x = x + block.drop_path1(block.ls1(result.out))
        if r > 0:
            if prune:
                protected = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
                protected[:, :prefix] = True
                keep = prune_lowest(result.received, r, protected)
                if keep is not None:
                    x = gather_tokens(x, keep)
                    state.size = (
                        gather_tokens(state.size, keep) if state.size is not None else torch.ones_like(x[..., :1])
                    )
            else:
                protected = None
                if prefix:
                    protected = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
                    protected[:, :prefix] = True
                matching = bipartite_soft_matching(result.metric, r, protected, num_protected=prefix)
                if matching is not None:
                    x, state.size = merge_wavg(matching, x, state.size)
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))

    return forward


def _vit_forward(vit: VisionTransformer, state: _State):
    """The tower's forward with size-weighted average pooling; token pooling reads the protected class token."""
    original = type(vit).forward.__get__(vit)

    def forward(x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if vit.global_pool != "avg":
            return original(x, attn_mask=attn_mask, is_causal=is_causal)
        features = vit.forward_features(x, attn_mask=attn_mask, is_causal=is_causal)
        if state.size is None:
            return vit.forward_head(features)
        start = 0 if vit.pool_include_prefix else vit.num_prefix_tokens
        weights = state.size[:, start:]
        pooled = (features[:, start:] * weights).sum(1) / weights.sum(1)
        return vit.head(vit.head_drop(vit.fc_norm(pooled)))

    return forward
