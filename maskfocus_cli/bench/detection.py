"""Detector interface shared by every benchmark (GenEval rules, T2I-CompBench spatial/numeracy).

A detector turns a batch of images into, per image, a list of ``Detection``s. The
GenEval decision rules in ``bench/geneval.py`` run over this interface only, so
the exact shapes detector and a learned detector (Mask2Former + CLIP colours)
are scored by exactly the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass(frozen=True)
class Detection:
    """One detected object, in GenEval's terms."""

    cls: str  #: class name, as it appears in GenEval metadata ("circle", "dog")
    box: tuple[float, float, float, float]  #: (x0, y0, x1, y1) in pixels, x right, y down
    score: float  #: detector confidence in [0, 1]
    color: str | None = None  #: colour name when the detector knows it (exact for shapes)
    extra: dict = field(default_factory=dict, compare=False)  #: detector-specific details

    def to_json(self) -> dict:
        d = {"class": self.cls, "box": [round(float(v), 2) for v in self.box],
             "score": round(float(self.score), 4)}
        if self.color is not None:
            d["color"] = self.color
        return d


class Detector(Protocol):
    """Images (B, 3, H, W) float in [0, 1] → per image a list of detections."""

    def detect(self, images: torch.Tensor) -> list[list[Detection]]: ...

    def classify_colors(self, images: torch.Tensor, detections: list[list[Detection]],
                        colors: list[str]) -> list[list[Detection]]:
        """Fill ``color`` on detections that lack it (learned detectors use CLIP here)."""
        ...
