"""The dual encoder every tower pairing is wrapped in.

One small interface for the trainer, the losses and (later) the masks: `visual` maps images and `text` maps
token ids to `embed_dim` vectors, `encode_*` L2-normalise them, and `logit_scale` is the learnable ln(1/τ)
that open_clip initialises to ln(1/0.07) and clamps to ln(100) after each optimiser step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class InputSpec:
    """What a model expects from the data pipeline."""

    image_size: int
    context_length: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class CLIP(nn.Module):
    """Image tower + text tower + learnable temperature."""

    def __init__(
        self,
        visual: nn.Module,
        text: nn.Module,
        inputs: InputSpec,
        init_logit_scale: float = math.log(1 / 0.07),
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__()
        self.visual = visual
        self.text = text
        self.inputs = inputs
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.max_log_scale = math.log(max_logit_scale)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(images), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(tokens), dim=-1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised image features, normalised text features and the multiplier exp(logit_scale)."""
        return self.encode_image(images), self.encode_text(tokens), self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """open_clip clamps ln-scale to [0, ln 100] in place after every optimiser step (papers.md §6.1)."""
        self.logit_scale.clamp_(0, self.max_log_scale)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(model: CLIP) -> dict[str, int]:
    """Image, text and total parameters (the temperature counts only in the total)."""
    image, text = count_parameters(model.visual), count_parameters(model.text)
    return {"image": image, "text": text, "total": count_parameters(model)}
