"""Reproducible image augmentation with record and replay (DataCompDR semantics).

Dataset reinforcement computes teacher embeddings for A augmentations of each image once, offline, and stores
each augmentation's random parameters next to them; at train time one is picked and replayed on the original
image so the student sees exactly the view the teacher embedded. This module does both halves, following
ml-mobileclip-dr's `training/dr/transforms.py`:

    RandomResizedCrop(size, bicubic, scale, ratio) -> RandAugment(num_ops, magnitude, bins, p)
    -> ToTensor -> Normalize(mean, std)

Stored parameters, in this fixed order (only transforms with random parameters are stored):

- `random_resized_crop`: the crop box `(i, j, h, w)` (top, left, height, width) in SOURCE-image pixels, drawn
  exactly as torchvision's `RandomResizedCrop.get_params`. Replay crops that box and resizes it to the
  requested size, so one box serves any output resolution (the student's size may differ from the teacher's).
- `rand_augment`: `((op_index, signed_magnitude), ...)`, one pair per op, `op_index` into `OP_NAMES` and the
  magnitude as applied, sign included. Translate magnitudes are stored as a FRACTION of the image side and
  converted to pixels when applied (torchvision's table is in pixels of the recording resolution), so a replay
  at the student's own resolution shifts by the same fraction of the image; see `augment_ops`. `None` means
  RandAugment was skipped (probability 1 - p).

Published DataCompDR records have the same positions and op indices but keep torchvision's Translate pixels
(of the 224-px view they were drawn on); the shard set's metadata says which (`ReinforcementInfo.translate`)
and `decompress(record, translate_side=224)` reads them so: the decoded `translate_side` travels with the
parameters to the replay.

Images are processed as 8-bit PIL images, like torchvision's RandAugment and the reference pipeline, through
torchvision's PIL kernels: deterministic, so a replay at the recording size reproduces the uint8 image and the
normalised tensor bit for bit. With p = 1 the random draws are, in order and kind, torchvision's, so a seeded
`torch.Generator` gives the same views as `RandomResizedCrop` + `RandAugment` under `torch.manual_seed` (no p
draw is made when p = 1). All randomness comes from the generator passed in, never from global state.

MobileCLIP v1 image towers take unnormalised [0, 1] inputs: use mean (0, 0, 0) and std (1, 1, 1) for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

from ablate.core.data.augment_ops import OP_NAMES, SIGNED_OPS, apply_op, op_magnitudes

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "OP_NAMES",
    "TRANSFORM_KEYS",
    "AugmentConfig",
    "RecordedAugment",
    "ReplayableCrop",
    "ReplayableRandAugment",
    "compress",
    "decompress",
]

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
# The transforms with random parameters, in pipeline order: the positions of a compressed record.
TRANSFORM_KEYS: tuple[str, ...] = ("random_resized_crop", "rand_augment")

Box = tuple[int, int, int, int]
Ops = tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class AugmentConfig:
    """The DataCompDR augmentation recipe; defaults are the paper's (MC §5, Tab 12) and torchvision's."""

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    num_ops: int = 2
    magnitude: int = 9
    num_magnitude_bins: int = 31
    randaugment_p: float = 1.0
    fill: tuple[int, int, int] = (0, 0, 0)
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must satisfy 0 < min <= max, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        if self.num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {self.num_ops}")
        if not 0.0 <= self.randaugment_p <= 1.0:
            raise ValueError(f"randaugment_p must be in [0, 1], got {self.randaugment_p}")
        op_magnitudes(self.magnitude, self.num_magnitude_bins)  # validates magnitude against the bins


class ReplayableCrop:
    """RandomResizedCrop whose parameter is the crop box in source pixels, so it replays at any size."""

    def __init__(self, size: int, scale: tuple[float, float], ratio: tuple[float, float]) -> None:
        self.size = size
        self.scale = scale
        self.ratio = ratio
        self._log_ratio = torch.log(torch.tensor(ratio))  # float32, as torchvision computes it

    def sample(self, height: int, width: int, generator: torch.Generator) -> Box:
        """torchvision's `RandomResizedCrop.get_params`, drawing from `generator` in the same order."""
        area = height * width
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(*self.scale, generator=generator).item()
            log_aspect = torch.empty(1).uniform_(self._log_ratio[0], self._log_ratio[1], generator=generator)
            aspect = torch.exp(log_aspect).item()
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                i = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
                j = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
                return i, j, h, w
        # Ten misses (extreme source aspect ratios): the largest central crop within the ratio bounds.
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, round(width / min(self.ratio))
        elif in_ratio > max(self.ratio):
            w, h = round(height * max(self.ratio)), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def apply(self, image: Image.Image, box: Box, size: int | None = None) -> Image.Image:
        """Crop `box` from the source and resize it (bicubic) to `size` x `size` (default: the recording size).

        Raises if the box does not fit the image: a replay on the wrong (or a resized) source image would
        otherwise pad silently with black.
        """
        i, j, h, w = box
        if i < 0 or j < 0 or h < 1 or w < 1 or i + h > image.height or j + w > image.width:
            raise ValueError(f"crop box {box} does not fit a {image.width}x{image.height} image")
        out = self.size if size is None else size
        return F.resized_crop(image, i, j, h, w, [out, out], InterpolationMode.BICUBIC, antialias=True)

    def __call__(self, image: Image.Image, generator: torch.Generator) -> tuple[Image.Image, Box]:
        box = self.sample(image.height, image.width, generator)
        return self.apply(image, box), box


class ReplayableRandAugment:
    """RandAugment whose parameters are the ops it drew with their signed magnitudes (None: skipped)."""

    def __init__(self, num_ops: int, magnitude: int, num_bins: int, p: float, fill: tuple[int, int, int]) -> None:
        self.num_ops = num_ops
        self.p = p
        self.fill = [float(f) for f in fill]
        self._magnitudes = op_magnitudes(magnitude, num_bins)

    def sample(self, generator: torch.Generator) -> Ops | None:
        """Draw op, then sign (signed ops only), per op, as torchvision does; a p draw only when p < 1."""
        if self.p < 1.0 and torch.rand(1, generator=generator).item() >= self.p:
            return None
        ops: list[tuple[int, float]] = []
        for _ in range(self.num_ops):
            op_index = int(torch.randint(len(OP_NAMES), (1,), generator=generator).item())
            magnitude = self._magnitudes[op_index]
            if OP_NAMES[op_index] in SIGNED_OPS and torch.randint(2, (1,), generator=generator).item():
                magnitude = -magnitude
            ops.append((op_index, magnitude))
        return tuple(ops)

    def apply(self, image: Image.Image, ops: Ops | None, translate_side: int | None = None) -> Image.Image:
        """Replay `ops`; with `translate_side` their Translate magnitudes are pixels of a view that wide."""
        for op_index, magnitude in ops or ():
            image = apply_op(image, op_index, magnitude, self.fill, translate_side)
        return image

    def __call__(self, image: Image.Image, generator: torch.Generator) -> tuple[Image.Image, Ops | None]:
        ops = self.sample(generator)
        return self.apply(image, ops), ops


class RecordedAugment:
    """The whole pipeline: record (sample + apply) an augmentation, or replay a recorded one.

    `record_uint8` / `replay_uint8` stop at the 8-bit image (what the teacher and student actually see before
    ToTensor); `__call__` / `reapply` add ToTensor + Normalize.
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config or AugmentConfig()
        c = self.config
        self.crop = ReplayableCrop(c.size, c.scale, c.ratio)
        self.rand_augment = ReplayableRandAugment(c.num_ops, c.magnitude, c.num_magnitude_bins, c.randaugment_p, c.fill)
        self._mean = torch.tensor(c.mean).view(3, 1, 1)
        self._std = torch.tensor(c.std).view(3, 1, 1)

    def record_uint8(self, image: Image.Image, generator: torch.Generator) -> tuple[Image.Image, dict[str, Any]]:
        image, box = self.crop(image.convert("RGB"), generator)
        image, ops = self.rand_augment(image, generator)
        return image, {"random_resized_crop": box, "rand_augment": ops, "translate_side": None}

    def replay_uint8(self, image: Image.Image, params: dict[str, Any], size: int | None = None) -> Image.Image:
        image = self.crop.apply(image.convert("RGB"), params["random_resized_crop"], size)
        return self.rand_augment.apply(image, params["rand_augment"], params.get("translate_side"))

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """ToTensor + Normalize, bit-identical to torchvision's pair but about twice as fast (one copy)."""
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous().float().div_(255)
        return x.sub_(self._mean).div_(self._std)

    def __call__(self, image: Image.Image, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        image, params = self.record_uint8(image, generator)
        return self.to_tensor(image), params

    def reapply(self, image: Image.Image, params: dict[str, Any], size: int | None = None) -> torch.Tensor:
        """Replay `params` on the source image; `size` (default: the config's) only changes the output size."""
        return self.to_tensor(self.replay_uint8(image, params, size))


def compress(params: dict[str, Any]) -> list[Any]:
    """Positional JSON-able form `[[i, j, h, w], [[op_index, magnitude], ...]]`; a skipped RandAugment is `None`.

    The crop has no skip probability, so its entry is always a box.
    """
    if params.get("translate_side") is not None:
        raise ValueError("compress writes Translate as fractions of the side; these parameters hold pixels")
    box, ops = (params[key] for key in TRANSFORM_KEYS)
    return [[int(v) for v in box], None if ops is None else [[int(op), float(m)] for op, m in ops]]


def decompress(data: list[Any], translate_side: int | None = None) -> dict[str, Any]:
    """Inverse of `compress` (also after a JSON round trip); rejects records of another layout.

    `translate_side`: the record's Translate magnitudes are pixels of a view that many pixels wide (DataCompDR's
    published records: 224), not our writer's fractions of the side (None).
    """
    if translate_side is not None and translate_side < 1:
        raise ValueError(f"translate_side must be a positive view width in pixels, got {translate_side}")
    if not isinstance(data, list | tuple) or len(data) != len(TRANSFORM_KEYS):
        raise ValueError(f"expected a list of {len(TRANSFORM_KEYS)} entries {TRANSFORM_KEYS}, got {data!r}")
    box, ops = data
    if box is None or len(box) != 4:
        raise ValueError(f"random_resized_crop must be [i, j, h, w], got {box!r}")
    if ops is not None and any(len(pair) != 2 or not 0 <= int(pair[0]) < len(OP_NAMES) for pair in ops):
        raise ValueError(f"rand_augment must be [[op_index in 0..{len(OP_NAMES) - 1}, magnitude], ...], got {ops!r}")
    return {
        "random_resized_crop": tuple(int(v) for v in box),
        "rand_augment": None if ops is None else tuple((int(op), float(m)) for op, m in ops),
        "translate_side": translate_side,
    }
