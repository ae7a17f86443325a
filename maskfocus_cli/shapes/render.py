"""Scene → RGB image, by pasting precomputed boolean shape masks.

Masks are defined by integer inequalities on pixel centres so they are exact,
symmetric where the shape is, and touch all four sides of their box: the
detector's box is then exactly the object's token box. ``shape_mask`` also
serves the detector, which compares a component against the template of its
own box size (any h × w, not only the sizes the world draws).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch

from maskfocus_cli.shapes.world import (BACKGROUND_RGB, COLOR_RGB, IMAGE_SIZE, PATCH, SHAPES, Scene)


@lru_cache(maxsize=512)
def shape_mask(shape: str, h: int, w: int) -> torch.Tensor:
    """(h, w) bool mask of a shape filling an h × w pixel box."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")
    if h < 1 or w < 1:
        raise ValueError(f"shape box must be at least 1x1 pixels, got {h}x{w}")
    # doubled offsets of pixel centres from the box centre: odd integers in (-h, h)
    ys = (2 * torch.arange(h) + 1 - h).view(h, 1)
    xs = (2 * torch.arange(w) + 1 - w).view(1, w)
    if shape == "circle":
        m = xs * xs * h * h + ys * ys * w * w <= w * w * h * h
    elif shape == "square":
        m = torch.ones(h, w, dtype=torch.bool)
    elif shape == "diamond":
        m = xs.abs() * h + ys.abs() * w <= w * h
    elif shape == "triangle":  # apex up; each pair of rows widens by one pixel per side
        rows = torch.arange(h).view(h, 1)
        half = 2 * torch.div((rows + 1) * w + 2 * h - 1, 2 * h, rounding_mode="floor") - 1
        m = xs.abs() <= half
    elif shape == "cross":  # plus sign, arms 2/5 of the box wide
        m = (xs.abs() <= 2 * w // 5) | (ys.abs() <= 2 * h // 5)
    else:  # pragma: no cover - SHAPES and this table change together
        raise AssertionError(shape)
    return m.expand(h, w).clone()


def _rgb(color: str) -> torch.Tensor:
    if color not in COLOR_RGB:
        raise ValueError(f"unknown colour {color!r}; use one of {', '.join(COLOR_RGB)}")
    return torch.tensor(COLOR_RGB[color], dtype=torch.uint8).view(3, 1, 1)


def render(scene: Scene) -> torch.Tensor:
    """Scene → (3, 64, 64) uint8 image."""
    img = torch.tensor(BACKGROUND_RGB, dtype=torch.uint8).view(3, 1, 1).repeat(1, IMAGE_SIZE, IMAGE_SIZE)
    for o in scene.objects:
        side = o.size * PATCH
        y0, x0 = o.row * PATCH, o.col * PATCH
        if y0 < 0 or x0 < 0 or y0 + side > IMAGE_SIZE or x0 + side > IMAGE_SIZE:
            raise ValueError(f"object {o} does not fit on the {IMAGE_SIZE}x{IMAGE_SIZE} canvas")
        region = img[:, y0:y0 + side, x0:x0 + side]
        region[:] = torch.where(shape_mask(o.shape, side, side), _rgb(o.color), region)
    return img


def render_batch(scenes: Sequence[Scene]) -> torch.Tensor:
    """Scenes → (B, 3, 64, 64) float images in [0, 1]."""
    if len(scenes) == 0:
        return torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE)
    return torch.stack([render(s) for s in scenes]).float() / 255.0
