"""Drawing for the synthetic "shapes" benchmark: one image and its object list from one generator.

Kept separate from captioning and shard writing so the geometry can change without touching either. Objects
are rasterised as masks at 4x resolution and box-downsampled, which antialiases their edges the way a real
photo of a vector graphic would look, while the background is built directly at the output size because its
texture is meant to be noisy anyway.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "pentagon",
    "hexagon",
    "diamond",
    "cross",
    "heart",
    "crescent",
    "ring",
    "arrow",
)

# Saturated or extreme-luminance colours: backgrounds are desaturated mid-greys, so every name keeps contrast.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 25),
    "green": (25, 165, 45),
    "blue": (25, 65, 225),
    "yellow": (250, 225, 20),
    "orange": (250, 135, 10),
    "purple": (135, 30, 180),
    "pink": (250, 125, 195),
    "brown": (115, 62, 22),
    "white": (252, 252, 252),
    "black": (12, 12, 12),
}
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUNDS: tuple[str, ...] = ("gradient", "striped", "checkered", "blotchy", "grainy")

SUPERSAMPLE = 4
# Object radius as a fraction of the image side. Only the main object may be large; secondaries are kept
# smaller than a small main object so "the largest object" is almost never a coin flip.
RADIUS = {"large": (0.21, 0.27), "small": (0.12, 0.145), "secondary": (0.085, 0.115)}
P_LARGE_MAIN = 0.75
# Centres closer than this fraction of the summed radii are rejected: overlap stays slight.
MIN_SEPARATION = 0.85


@dataclass(frozen=True)
class DrawnObject:
    """One object as placed in the image; `area` is its unoccluded mask area in output pixels."""

    shape: str
    colour: str
    size: str
    x: float
    y: float
    area: float

    def record(self) -> dict[str, str | float]:
        """The object as stored in the sample's json (area is an internal ordering detail)."""
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "x": self.x, "y": self.y}


def _regular_polygon(n: int, radius: float, phase: float) -> np.ndarray:
    angles = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius


def _star() -> np.ndarray:
    outer = _regular_polygon(5, 1.0, -math.pi / 2)
    inner = _regular_polygon(5, 0.42, -math.pi / 2 + math.pi / 5)
    return np.stack([outer, inner], axis=1).reshape(-1, 2)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y + 2.5], axis=1)
    return pts / np.abs(pts).max()


# Unit outlines (radius ~1, y pointing down) for the polygonal shapes; circle, ring and crescent are ellipses.
_OUTLINES: dict[str, np.ndarray] = {
    "square": np.array([[-0.82, -0.82], [0.82, -0.82], [0.82, 0.82], [-0.82, 0.82]]),
    "triangle": _regular_polygon(3, 1.05, -math.pi / 2) + np.array([0, 0.15]),
    "star": _star(),
    "pentagon": _regular_polygon(5, 1.0, -math.pi / 2),
    "hexagon": _regular_polygon(6, 1.0, 0.0),
    "diamond": np.array([[0, -1.0], [0.6, 0], [0, 1.0], [-0.6, 0]]),
    "cross": np.array(
        [
            [-0.3, -1],
            [0.3, -1],
            [0.3, -0.3],
            [1, -0.3],
            [1, 0.3],
            [0.3, 0.3],
            [0.3, 1],
            [-0.3, 1],
            [-0.3, 0.3],
            [-1, 0.3],
            [-1, -0.3],
            [-0.3, -0.3],
        ]
    ),
    "heart": _heart(),
    "arrow": np.array([[-1, -0.24], [0.15, -0.24], [0.15, -0.62], [1, 0], [0.15, 0.62], [0.15, 0.24], [-1, 0.24]]),
}


def _rotation_for(shape: str, rng: np.random.Generator) -> float:
    """Small jitter only: a square turned 45 degrees would read as a diamond, a turned heart as a blob."""
    if shape == "arrow":
        return float(rng.integers(4)) * math.pi / 2 + rng.uniform(-0.2, 0.2)
    if shape == "crescent":
        return rng.uniform(0, 2 * math.pi)
    return rng.uniform(-0.25, 0.25)


def _draw_mask(shape: str, cx: float, cy: float, r: float, angle: float, side: int) -> np.ndarray:
    """Antialiased coverage in [0, 1] at the output size, for one object centred at pixel (cx, cy)."""
    s = SUPERSAMPLE
    mask = Image.new("L", (side * s, side * s), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy, r = cx * s, cy * s, r * s

    def disc(x: float, y: float, rad: float, fill: int) -> None:
        draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=fill)

    if shape == "circle":
        disc(cx, cy, r, 255)
    elif shape == "ring":
        disc(cx, cy, r, 255)
        disc(cx, cy, r * 0.55, 0)
    elif shape == "crescent":
        disc(cx, cy, r, 255)
        disc(cx + 0.45 * r * math.cos(angle), cy + 0.45 * r * math.sin(angle), r * 0.82, 0)
    else:
        c, si = math.cos(angle), math.sin(angle)
        pts = _OUTLINES[shape] @ np.array([[c, si], [-si, c]]) * r + [cx, cy]
        draw.polygon([tuple(p) for p in pts.tolist()], fill=255)
    return np.asarray(mask.reduce(s), dtype=np.float32) / 255.0


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.05, 0.28), rng.uniform(0.38, 0.68))
    return np.array(rgb, dtype=np.float32) * 255


def _background(rng: np.random.Generator, side: int) -> tuple[str, np.ndarray]:
    """A desaturated mid-tone texture: busy enough that the model must find the object, never colour-named."""
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    c1, c2 = _muted_colour(rng), _muted_colour(rng)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    theta = rng.uniform(0, 2 * math.pi)
    along = xx * math.cos(theta) + yy * math.sin(theta)
    if kind == "gradient":
        t = (along - along.min()) / (along.max() - along.min())
    elif kind == "striped":
        t = 0.5 + 0.5 * np.tanh(3 * np.sin(2 * math.pi * along * side / rng.uniform(5, 14)))
    elif kind == "checkered":
        cell = rng.uniform(4, 11) / side
        t = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float32)
    elif kind == "blotchy":
        coarse = (rng.random((5, 5)) * 255).astype(np.uint8)
        t = np.asarray(Image.fromarray(coarse).resize((side, side), Image.BICUBIC), dtype=np.float32) / 255
    else:
        t = np.zeros((side, side), np.float32)
    img = c1 + t[..., None] * (c2 - c1)
    sigma = 22.0 if kind == "grainy" else rng.uniform(5, 12)
    return kind, img + rng.normal(0, sigma, img.shape).astype(np.float32)


def _place(rng: np.random.Generator, radius: float, placed: list[tuple[float, float, float]]):
    """Rejection-sample a centre inside the frame whose overlap with earlier objects stays slight."""
    for _ in range(40):
        x, y = rng.uniform(radius, 1 - radius, size=2)
        if all(math.hypot(x - px, y - py) >= MIN_SEPARATION * (radius + pr) for px, py, pr in placed):
            return float(x), float(y)
    return None


def render_image(rng: np.random.Generator, side: int) -> tuple[np.ndarray, list[DrawnObject], str]:
    """Draw 1-3 objects on a background; returns (uint8 HxWx3, objects largest-first, background name).

    Objects are painted smallest first so the largest one is always on top and fully visible.
    """
    background, canvas = _background(rng, side)
    n_objects = int(rng.integers(1, 4))
    placed: list[tuple[float, float, float]] = []
    objects: list[DrawnObject] = []
    masks: list[np.ndarray] = []
    for i in range(n_objects):
        size = ("large" if rng.random() < P_LARGE_MAIN else "small") if i == 0 else "small"
        radius = float(rng.uniform(*RADIUS[size if i == 0 else "secondary"]))
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = COLOURS[int(rng.integers(len(COLOURS)))]
        angle = _rotation_for(shape, rng)
        centre = _place(rng, radius, placed)
        if centre is None:
            continue
        placed.append((*centre, radius))
        mask = _draw_mask(shape, centre[0] * side, centre[1] * side, radius * side, angle, side)
        masks.append(mask)
        objects.append(DrawnObject(shape, colour, size, round(centre[0], 3), round(centre[1], 3), float(mask.sum())))
    # Stable sort: equal areas keep drawing order, so ties resolve to the earlier-sampled object.
    order = sorted(range(len(objects)), key=lambda k: -objects[k].area)
    for k in reversed(order):
        shade = rng.uniform(0.9, 1.05)
        rgb = np.clip(np.array(COLOUR_RGB[objects[k].colour], np.float32) * shade, 0, 255)
        alpha = masks[k][..., None]
        canvas = canvas * (1 - alpha) + rgb * alpha
    canvas += rng.normal(0, 3.0, canvas.shape).astype(np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, [objects[k] for k in order], background
