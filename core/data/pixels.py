"""8-bit image batches to model inputs, on whatever device the model is on.

Loaders hand over uint8 pixels (a quarter of the bytes of float, and one format for student and teachers whose
resolution or normalisation differ); each model converts them with its own `InputSpec` right before its forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ablate.core.models.clip import InputSpec


def to_model_input(images: torch.Tensor, inputs: InputSpec, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> normalised float at the model's resolution (bicubic, antialiased, if it differs)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a uint8 [B, 3, H, W] batch, got {images.dtype} {tuple(images.shape)}")
    pixels = images.to(dtype).div_(255.0)
    if pixels.shape[-2:] != (inputs.image_size, inputs.image_size):
        size = (inputs.image_size, inputs.image_size)
        pixels = F.interpolate(pixels, size=size, mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
    mean = torch.tensor(inputs.mean, dtype=dtype, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(inputs.std, dtype=dtype, device=pixels.device).view(1, 3, 1, 1)
    return pixels.sub_(mean).div_(std)
