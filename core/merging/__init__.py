"""Token merging (ToMe) and text-agnostic token pruning for ViT, open_clip text and MCi towers."""

from ablate.core.merging.apply import apply_token_merging, token_merging
from ablate.core.merging.handle import MergeHandle
from ablate.core.merging.matching import bipartite_soft_matching, merge_wavg
from ablate.core.merging.schedule import MergeSchedule, TokenMergingConfig

__all__ = [
    "MergeHandle",
    "MergeSchedule",
    "TokenMergingConfig",
    "apply_token_merging",
    "bipartite_soft_matching",
    "merge_wavg",
    "token_merging",
]
