"""Weight-free rewards: instant, deterministic, for smoke runs and pipeline checks."""

from __future__ import annotations

from typing import Sequence

import torch


class Brightness:
    """Mean pixel intensity in [0, 1] (``target`` set: 1 - |mean - target|).

    Not a quality signal: it exists so a training or serving pipeline can be
    exercised end to end without any model weights.
    """

    def __init__(self, target: float | None = None) -> None:
        if target is not None and not 0.0 <= float(target) <= 1.0:
            raise ValueError(f"brightness target must be in [0, 1], got {target}")
        self.target = None if target is None else float(target)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str],
                 metadata: Sequence[dict | None] | None = None) -> torch.Tensor:
        mean = images.float().mean(dim=(1, 2, 3))
        return mean if self.target is None else 1.0 - (mean - self.target).abs()
