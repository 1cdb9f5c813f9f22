"""How many tokens each layer merges: the config object a model config carries (papers.md §3.1, §8 E)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MergeSchedule(BaseModel):
    """Token reduction for one tower.

    r: tokens removed per layer: one int for every layer (ToMe's constant schedule, with `inflect` for its linear
    ramp), or an explicit list, one entry per layer (missing layers get 0, as ToMe's `parse_r`).
    mode: `merge` = ToMe bipartite soft matching with size-weighted averaging; `prune` = drop the r tokens that
    receive the least attention (the text-agnostic pruning score of papers.md §3.3 (b)); ViT and text towers only.
    proportional_attention: add log(size) to the attention logits (softmax) or weight keys by size (sigmoid), so
    a merged token counts as the tokens it stands for (ToMe's default).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int | list[int] = Field(0, description="tokens removed per layer, or a per-layer list")
    inflect: float = Field(0.0, ge=-1.0, le=1.0, description="ToMe's (r, inflect) ramp; 0 = constant")
    mode: Literal["merge", "prune"] = "merge"
    proportional_attention: bool = True

    @model_validator(mode="after")
    def _non_negative(self) -> MergeSchedule:
        values = self.r if isinstance(self.r, list) else [self.r]
        if any(v < 0 for v in values):
            raise ValueError(f"r must be >= 0 per layer, got {self.r}")
        return self

    @property
    def enabled(self) -> bool:
        return any(self.r) if isinstance(self.r, list) else self.r > 0

    def per_layer(self, num_layers: int) -> list[int]:
        """ToMe's `parse_r`: a list is padded with 0 (or rejected when too long); an int r with inflect i
        ramps linearly from int(r·(1−i)) to 2r − that value, truncating each layer's value to an int."""
        if isinstance(self.r, list):
            if len(self.r) > num_layers:
                raise ValueError(f"r lists {len(self.r)} layers but the tower has {num_layers}")
            return list(self.r) + [0] * (num_layers - len(self.r))
        low = int(self.r * (1.0 - self.inflect))
        high = 2 * self.r - low
        if num_layers == 1:
            return [self.r]
        step = (high - low) / (num_layers - 1)
        return [int(low + step * i) for i in range(num_layers)]


class TokenMergingConfig(BaseModel):
    """Token merging for a dual encoder: a schedule per tower; off during training unless asked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: MergeSchedule = Field(default_factory=MergeSchedule)
    text: MergeSchedule = Field(default_factory=MergeSchedule)
    during_training: bool = Field(False, description="also merge in train mode (ToMe's trained-with-merging setting)")

    @property
    def enabled(self) -> bool:
        return self.image.enabled or self.text.enabled
