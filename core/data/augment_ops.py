"""RandAugment's op table and how each op is applied to an image, with explicit magnitudes.

The 14 ops, their order and their magnitude ranges are torchvision's (`RandAugment._augmentation_space`), and
each op is applied the way torchvision's `_apply_op` applies it (NEAREST resampling for the geometric ops), so
a stored `(op_index, signed_magnitude)` means the same thing as in torchvision and DataCompDR's
`training/dr/transforms.py`. The tables are re-declared here rather than read from torchvision's private API.

One deliberate difference: torchvision sizes the Translate range in pixels of the image it is given
(150/331 · width). Here Translate magnitudes are a FRACTION of the image side and are turned into pixels only
when applied, so one stored augmentation replays at the student's resolution as the same relative shift. Every
other op is already resolution-independent (angles, shear factors, enhancement factors, bits, thresholds).
Records made by torchvision's table (DataCompDR's `paug.json`) hold Translate in pixels of the `translate_side`
-pixel view they were drawn on: `apply_op` takes them as they are at that size (exactly torchvision's replay)
and as the same fraction of the side at any other.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

__all__ = ["OP_NAMES", "SIGNED_OPS", "apply_op", "op_magnitudes"]

OP_NAMES: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
# Ops whose magnitude gets a random sign (torchvision draws the sign only for these).
SIGNED_OPS: frozenset[str] = frozenset(
    {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}
)
# Largest |magnitude| per op; Translate as a fraction of the side (torchvision: 150/331 · side in pixels).
_LINEAR_MAX: dict[str, float] = {
    "ShearX": 0.3,
    "ShearY": 0.3,
    "TranslateX": 150.0 / 331.0,
    "TranslateY": 150.0 / 331.0,
    "Rotate": 30.0,
    "Brightness": 0.9,
    "Color": 0.9,
    "Contrast": 0.9,
    "Sharpness": 0.9,
}


def op_magnitudes(magnitude: int, num_bins: int) -> tuple[float, ...]:
    """Unsigned magnitude of every op at bin `magnitude` of `num_bins`, in OP_NAMES order.

    Computed with torchvision's float32 `linspace` so the values are bit-identical to its table (Translate
    excepted, see the module docstring); magnitude-free ops (Identity, AutoContrast, Equalize) get 0.0.
    """
    if num_bins < 2 or not 0 <= magnitude < num_bins:
        raise ValueError(f"need num_bins >= 2 and magnitude in [0, num_bins), got {magnitude} of {num_bins}")
    values: list[float] = []
    for name in OP_NAMES:
        if name in _LINEAR_MAX:
            values.append(float(torch.linspace(0.0, _LINEAR_MAX[name], num_bins)[magnitude]))
        elif name == "Posterize":
            values.append(float(8 - (torch.arange(num_bins) / ((num_bins - 1) / 4)).round().int()[magnitude]))
        elif name == "Solarize":
            values.append(float(torch.linspace(255.0, 0.0, num_bins)[magnitude]))
        else:
            values.append(0.0)
    return tuple(values)


def _shear(image: Image.Image, factor: float, axis: int, fill: list[float]) -> Image.Image:
    shear = [0.0, 0.0]
    shear[axis] = math.degrees(math.atan(factor))
    return F.affine(
        image,
        angle=0.0,
        translate=[0, 0],
        scale=1.0,
        shear=shear,
        interpolation=InterpolationMode.NEAREST,
        fill=fill,
        center=[0, 0],
    )


def _translate(
    image: Image.Image, magnitude: float, axis: int, fill: list[float], translate_side: int | None
) -> Image.Image:
    # Pixels truncated toward zero, as torchvision's int(magnitude); PIL size is (width, height).
    side = image.size[axis]
    if translate_side is None:
        pixels = magnitude * side  # a fraction of the side
    elif side == translate_side:
        pixels = magnitude  # as recorded: no arithmetic, so the replay is torchvision's to the bit
    else:
        pixels = magnitude * side / translate_side
    shift = [0, 0]
    shift[axis] = int(pixels)
    return F.affine(
        image,
        angle=0.0,
        translate=shift,
        scale=1.0,
        shear=[0.0, 0.0],
        interpolation=InterpolationMode.NEAREST,
        fill=fill,
    )


_APPLY: dict[str, Callable[[Image.Image, float, list[float]], Image.Image]] = {
    "Identity": lambda img, m, fill: img,
    "ShearX": lambda img, m, fill: _shear(img, m, 0, fill),
    "ShearY": lambda img, m, fill: _shear(img, m, 1, fill),
    "Rotate": lambda img, m, fill: F.rotate(img, m, interpolation=InterpolationMode.NEAREST, fill=fill),
    "Brightness": lambda img, m, fill: F.adjust_brightness(img, 1.0 + m),
    "Color": lambda img, m, fill: F.adjust_saturation(img, 1.0 + m),
    "Contrast": lambda img, m, fill: F.adjust_contrast(img, 1.0 + m),
    "Sharpness": lambda img, m, fill: F.adjust_sharpness(img, 1.0 + m),
    "Posterize": lambda img, m, fill: F.posterize(img, int(m)),
    "Solarize": lambda img, m, fill: F.solarize(img, m),
    "AutoContrast": lambda img, m, fill: F.autocontrast(img),
    "Equalize": lambda img, m, fill: F.equalize(img),
}


def apply_op(
    image: Image.Image, op_index: int, magnitude: float, fill: list[float], translate_side: int | None = None
) -> Image.Image:
    """Apply op `OP_NAMES[op_index]` with its signed `magnitude`. Translate: a fraction of the side, or with
    `translate_side` pixels of a view that many pixels wide (see the module docstring)."""
    name = OP_NAMES[op_index]
    if name in ("TranslateX", "TranslateY"):
        return _translate(image, magnitude, int(name == "TranslateY"), fill, translate_side)
    return _APPLY[name](image, magnitude, fill)
