"""ToMe's bipartite soft matching, size-weighted merging and unmerging (facebookresearch/ToMe tome/merge.py).

Tokens split alternately into A (even positions) and B (odd). Every A token proposes its most similar B token
(cosine of the metric, normally the keys averaged over heads); the r best proposals merge (several A tokens may
land on one B token). The result is [unmerged A tokens in their original order, all B tokens].

Beyond the reference: `protected` tokens (a class token, the text tower's EOT pooling token) are neither
sources nor destinations, and `group` ids restrict merges to tokens of the same group (text padding never mixes
with content). The reference protects a class token only as a source, which is the same thing for a class
token at position 0 (always in A). The reference keeps the unmerged A tokens in score order unless there is a
class token; here they always keep their original order, which changes no output (attention is
permutation-equivariant and pooling reads the protected token) but keeps positions readable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Matching:
    """Which A tokens stay (unm_idx), which merge (src_idx) into which B token (dst_idx); indices within A/B."""

    unm_idx: torch.Tensor  # [B, a − r, 1]
    src_idx: torch.Tensor  # [B, r, 1]
    dst_idx: torch.Tensor  # [B, r, 1]
    num_tokens: int

    @property
    def r(self) -> int:
        return self.src_idx.shape[1]

    def merge(self, x: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        """[B, N, C] -> [B, N − r, C], reducing each destination with its sources by `mode` (sum, mean, amax)."""
        src, dst = x[..., ::2, :], x[..., 1::2, :]
        batch, a_len, channels = src.shape
        unm = src.gather(-2, self.unm_idx.expand(batch, a_len - self.r, channels))
        moving = src.gather(-2, self.src_idx.expand(batch, self.r, channels))
        dst = dst.scatter_reduce(-2, self.dst_idx.expand(batch, self.r, channels), moving, reduce=mode)
        return torch.cat([unm, dst], dim=1)

    def unmerge(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N − r, C] -> [B, N, C]: every source gets its destination's value (ToMe-SD's merge→op→unmerge)."""
        unm_len = self.unm_idx.shape[1]
        unm, dst = x[..., :unm_len, :], x[..., unm_len:, :]
        batch, _, channels = unm.shape
        src = dst.gather(-2, self.dst_idx.expand(batch, self.r, channels))
        out = x.new_zeros(batch, self.num_tokens, channels)
        out[..., 1::2, :] = dst
        out.scatter_(-2, (2 * self.unm_idx).expand(batch, unm_len, channels), unm)
        out.scatter_(-2, (2 * self.src_idx).expand(batch, self.r, channels), src)
        return out


def bipartite_soft_matching(
    metric: torch.Tensor,
    r: int,
    protected: torch.Tensor | None = None,
    group: torch.Tensor | None = None,
    num_protected: int = 0,
) -> Matching | None:
    """Match r token pairs by cosine similarity of `metric` [B, N, C]; None when nothing can merge.

    protected: bool [B, N] tokens that never merge. group: int [B, N], merges only within a group.
    num_protected: how many tokens `protected` marks per row (for the static cap r <= (N − protected) // 2).
    With per-row masks r is further capped so that every row has r finite candidate edges (one sync).
    """
    tokens = metric.shape[1]
    r = min(r, (tokens - num_protected) // 2)
    if r <= 0:
        return None
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[..., ::2, :], metric[..., 1::2, :]
        scores = a @ b.transpose(-1, -2)
        if group is not None:
            same = group[..., ::2, None] == group[..., None, 1::2]
            scores = scores.masked_fill(~same, -torch.inf)
        if protected is not None:
            scores = scores.masked_fill(protected[..., ::2, None], -torch.inf)
            scores = scores.masked_fill(protected[..., None, 1::2], -torch.inf)
        node_max, node_idx = scores.max(dim=-1)
        if group is not None or protected is not None:
            r = min(r, int(torch.isfinite(node_max).sum(dim=-1).min()))
            if r <= 0:
                return None
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx = edge_idx[..., r:, :].sort(dim=1).values
        src_idx = edge_idx[..., :r, :]
        dst_idx = node_idx[..., None].gather(-2, src_idx)
    return Matching(unm_idx, src_idx, dst_idx, tokens)


def merge_wavg(matching: Matching, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average: x <- merge(x·s) / merge(s), s <- merge(s); s starts at 1 per token."""
    if size is None:
        size = torch.ones_like(x[..., :1])
    merged = matching.merge(x * size, mode="sum")
    size = matching.merge(size, mode="sum")
    return merged / size, size


def prune_lowest(score: torch.Tensor, r: int, protected: torch.Tensor | None = None) -> torch.Tensor | None:
    """Indices [B, N − r, 1] (ascending) of the tokens to keep when the r lowest-`score` tokens are dropped."""
    tokens = score.shape[1]
    keep = tokens - min(r, tokens - (int(protected.sum(-1).max()) if protected is not None else 0) - 1)
    if keep >= tokens:
        return None
    if protected is not None:
        score = score.masked_fill(protected, torch.inf)
    return score.topk(keep, dim=-1).indices.sort(dim=-1).values[..., None]


def gather_tokens(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return x.gather(1, keep.expand(-1, -1, x.shape[-1]))
