"""Token merging in open_clip's TextTransformer (papers.md §3.3: protect the EOT token, respect padding).

The tower pools at the EOT token (the argmax token id), so that token is protected: it is never merged into
another token nor receives one, and its output is read wherever it ends up. Padding (pad_id, after EOT) only
merges with padding and content only with content. Positions are tracked per token: a merged token sits at
the latest original position among its members, and the causal mask lets a query see a key when the key's
position is not after its own. So no token ever sees a future token; EOT, being last among the content, sees
every content token as before. The approximation (a merged token's early members see the keys up to the
latest member's position) is the semantic change papers.md §3.3 warns of for causal text towers.
"""

from __future__ import annotations

import torch
from open_clip.transformer import TextTransformer
from torch import nn

from ablate.core.merging.attention import attend, supports
from ablate.core.merging.handle import MergeHandle
from ablate.core.merging.matching import bipartite_soft_matching, gather_tokens, merge_wavg, prune_lowest
from ablate.core.merging.schedule import MergeSchedule

BLOCK_PARTS = ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2")


def patch_text_transformer(text: TextTransformer, schedule: MergeSchedule, handle: MergeHandle) -> None:
    blocks = list(text.transformer.resblocks)
    r_per_layer = schedule.per_layer(len(blocks))
    if text.cls_emb is not None:
        raise ValueError("token merging: text towers with an appended class token (CoCa) are not supported")
    if text.pool_type not in ("argmax", "eos", "first", "last"):
        raise ValueError(f"token merging: text pool_type {text.pool_type!r} is not supported")
    if not getattr(text.transformer, "batch_first", True):
        raise ValueError("token merging: the text transformer must be batch_first")
    for index, block in enumerate(blocks):
        missing = [p for p in BLOCK_PARTS if not hasattr(block, p)]
        if missing or not supports(block.attn):
            raise ValueError(
                f"token merging: text block {index} ({type(block).__name__}) lacks {missing or 'attention'}"
            )
    original = type(text).forward.__get__(text)

    def forward(tokens: torch.Tensor) -> torch.Tensor:
        if not handle.active(text) or not any(r_per_layer):
            return original(tokens)
        return _merged_forward(text, blocks, tokens, r_per_layer, schedule)

    handle.replace_forward(text, forward)
    handle.patched.append(f"{type(text).__name__}: r={r_per_layer} ({schedule.mode})")


def _pool_index(text: TextTransformer, tokens: torch.Tensor) -> torch.Tensor:
    if text.pool_type == "argmax":
        return tokens.argmax(dim=-1)
    if text.pool_type == "eos":
        return (tokens == text.eos_id).int().argmax(dim=-1)
    return torch.full_like(tokens[:, 0], 0 if text.pool_type == "first" else tokens.shape[1] - 1)


def _mask(text: TextTransformer, position: torch.Tensor, content: torch.Tensor) -> torch.Tensor | None:
    """Additive [B, 1, N, N] mask from the tokens' positions (causal) and validity (padding mask)."""
    allowed = None
    if text.attn_mask is not None:
        allowed = position[:, None, :] <= position[:, :, None]  # [B, query, key]
    if text.use_pad_mask:
        valid = content[:, None, :].expand(-1, position.shape[1], -1)
        allowed = valid if allowed is None else allowed & valid
    if allowed is None:
        return None
    bias = torch.zeros(allowed.shape, dtype=torch.float32, device=position.device)
    return bias.masked_fill(~allowed, float("-inf"))[:, None]


def _merged_forward(
    text: TextTransformer,
    blocks: list[nn.Module],
    tokens: torch.Tensor,
    r_per_layer: list[int],
    schedule: MergeSchedule,
) -> torch.Tensor:
    x, _ = text._embeds(tokens)
    batch, length = tokens.shape
    position = torch.arange(length, device=tokens.device).expand(batch, length)
    pool_at = _pool_index(text, tokens)
    protected = position == pool_at[:, None]
    content = tokens != text.pad_id
    content = content | protected  # the pooled token is content even if its id equals pad_id
    size = None
    for block, r in zip(blocks, r_per_layer, strict=True):
        mask = _mask(text, position, content)
        result = attend(
            block.attn,
            block.ln_1(x),
            size,
            mask.to(x.dtype) if mask is not None else None,
            schedule.proportional_attention,
            schedule.mode == "prune" and r > 0,
            num_original=length,
        )
        x = x + block.ls_1(result.out)
        if r > 0:
            if schedule.mode == "prune":
                # padding receives -inf, so it goes first: under a causal mask it never reaches EOT anyway
                keep = prune_lowest(result.received.masked_fill(~content, -torch.inf), r, protected)
                if keep is not None:
                    size = gather_tokens(size if size is not None else torch.ones_like(x[..., :1]), keep)
                    x = gather_tokens(x, keep)
                    position, content, protected = (
                        gather_tokens(t[..., None], keep)[..., 0] for t in (position, content, protected)
                    )
            else:
                matching = bipartite_soft_matching(result.metric, r, protected, content.long(), num_protected=1)
                if matching is not None:
                    x, size = merge_wavg(matching, x, size)
                    position = matching.merge(position[..., None], mode="amax")[..., 0]
                    content = matching.merge(content[..., None].long(), mode="amax")[..., 0].bool()
                    protected = matching.merge(protected[..., None].long(), mode="amax")[..., 0].bool()
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    x = text.ln_final(x)
    pooled = x[torch.arange(batch, device=x.device), protected.int().argmax(dim=-1)]
    if text.text_projection is not None:
        pooled = (
            text.text_projection(pooled)
            if isinstance(text.text_projection, nn.Linear)
            else pooled @ text.text_projection
        )
    if getattr(text, "output_tokens", False):
        return pooled, x
    return pooled
