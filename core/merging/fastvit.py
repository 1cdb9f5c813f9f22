"""Merge → attention → unmerge in the attention blocks of timm FastViT / MobileCLIP's MCi (papers.md §3.3).

MCi's attention stage is wrapped by convolutions that need the full 2-D grid (ConvFFN's 7×7 depthwise, RepCPE,
conv_exp), so tokens may only be merged for the attention itself: the block's token mixer merges r of the H·W
tokens (matching on the normalised input tokens, ToMe-SD's choice, since no keys exist before the call),
attends over the H·W − r merged tokens with proportional attention, projects, and copies each merged token's
output back to all its members. Everything outside the token mixer is untouched, so LayerScale and the
residual stay exactly as in the block.
"""

from __future__ import annotations

import torch
from timm.models.fastvit import AttentionBlock
from torch import nn

from ablate.core.merging.attention import attend, supports
from ablate.core.merging.handle import MergeHandle
from ablate.core.merging.matching import bipartite_soft_matching, merge_wavg
from ablate.core.merging.schedule import MergeSchedule


def attention_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks whose token mixer is spatial self-attention, in forward order."""
    return [m for m in model.modules() if isinstance(m, AttentionBlock)]


def patch_fastvit(model: nn.Module, schedule: MergeSchedule, handle: MergeHandle) -> None:
    if schedule.mode != "merge":
        raise ValueError("token pruning leaves holes in MCi's token grid (papers.md §3.3); use mode=merge")
    blocks = attention_blocks(model)
    if not blocks:
        raise ValueError(f"token merging: {type(model).__name__} has no FastViT attention blocks")
    r_per_layer = schedule.per_layer(len(blocks))
    for block, r in zip(blocks, r_per_layer, strict=True):
        mixer = block.token_mixer
        if not supports(mixer):
            raise ValueError(f"token merging: {type(mixer).__name__} is not a timm-style attention module")
        if r > 0:
            handle.replace_forward(mixer, _mixer_forward(mixer, r, schedule, handle))
    handle.patched.append(f"{type(model).__name__} attention blocks: r={r_per_layer} (merge-attend-unmerge)")


def _mixer_forward(mixer: nn.Module, r: int, schedule: MergeSchedule, handle: MergeHandle):
    original = type(mixer).forward.__get__(mixer)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not handle.active(mixer):
            return original(x)
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        matching = bipartite_soft_matching(tokens, r)
        if matching is None:
            return original(x)
        merged, size = merge_wavg(matching, tokens, None)
        result = attend(mixer, merged, size, None, schedule.proportional_attention, num_original=height * width)
        out = matching.unmerge(result.out)
        return out.transpose(1, 2).reshape(batch, channels, height, width)

    return forward
