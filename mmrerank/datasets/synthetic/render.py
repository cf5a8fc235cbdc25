"""Drawing scenes with PIL: deterministic pixels from a scene graph and a seed."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from mmrerank.datasets.synthetic.scenes import COLOUR_NAMES, COLOURS, RADIUS, SHAPES, Obj

SUPERSAMPLE = 3  # draw large, then downsample: smooth edges without relying on PIL's antialiasing


def _polygon(cx: float, cy: float, r: float, corners: int, rotation: float, inner: float | None = None):
    points = []
    steps = corners * (2 if inner else 1)
    for k in range(steps):
        radius = r if inner is None or k % 2 == 0 else r * inner
        angle = rotation + 2 * math.pi * k / steps
        points.append((cx + radius * math.sin(angle), cy - radius * math.cos(angle)))
    return points


def _draw(draw: ImageDraw.ImageDraw, o: Obj, side: int) -> None:
    cx, cy, r = o.x * side, o.y * side, RADIUS[o.size] * side
    fill = COLOURS[COLOUR_NAMES[o.colour]]
    shape = SHAPES[o.shape]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy + r * 0.15, r * 1.1, 3, 0.0), fill=fill)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, r, 4, 0.0), fill=fill)
    elif shape == "cross":
        w = r * 0.36
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, r * 1.1, 5, 0.0, inner=0.45), fill=fill)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, math.pi / 6), fill=fill)
    else:  # a new shape name without a drawing would render as nothing: refuse instead
        raise ValueError(f"no drawing for shape {shape!r}")


def render(scene: list[Obj], size: int, rng: np.random.Generator, noise: float = 6.0) -> np.ndarray:
    """Render a scene on a light, slightly tinted background with mild pixel noise.

    Returns:
        `[size, size, 3]` uint8.
    """
    side = size * SUPERSAMPLE
    background = tuple(int(v) for v in rng.integers(205, 250, size=3))
    img = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(img)
    for o in scene:
        _draw(draw, o, side)
    pixels = np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    pixels += rng.normal(0.0, noise, size=pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
