"""Training losses, written to read like the papers (shared/research/papers.md §6.1, §8 B).

Conventions follow open_clip's `ClipLoss` exactly: features arrive L2-normalised from the model, `logit_scale`
is the multiplier exp(θ) (already exponentiated), each direction's cross-entropy is averaged over rows and the
loss is the mean of the two directions, so a batch of one gives exactly 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_logits(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits_per_image = s·I·Tᵀ and logits_per_text = s·T·Iᵀ (its transpose)."""
    logits_per_image = logit_scale * image_features @ text_features.T
    return logits_per_image, logits_per_image.T


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """L_CLIP = ½[CE(s·I·Tᵀ, y) + CE(s·T·Iᵀ, y)] with y = arange(b): the i-th image matches the i-th text.

    Single-process form of open_clip's ClipLoss (world size 1, so `local_loss` makes no difference).
    """
    logits_per_image, logits_per_text = clip_logits(image_features, text_features, logit_scale)
    labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels))
