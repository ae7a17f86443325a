"""Exact pixel-space detector for the shapes world.

Pipeline, batched over images:
1. every pixel takes its nearest palette colour (background included); pixels far
   from every palette colour, and background pixels, are ignored;
2. connected components of equal colour (8-connectivity) by label propagation
   with pointer jumping (a vectorised union-find; no scipy in the venv);
3. tiny components are dropped; each remaining one is compared with every
   shape's template drawn at the component's own box size. The class is the best
   template, the score its IoU times the box's aspect ratio (min/max side).

A well-formed shape, and so every render and every tokenizer round trip of a
render, scores exactly 1.0; malformed blobs from a generator score lower, so
GenEval's thresholds (0.3, 0.9 for counting) keep their meaning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maskfocus_cli.bench.detection import Detection
from maskfocus_cli.shapes.render import shape_mask
from maskfocus_cli.shapes.world import BACKGROUND_RGB, COLOR_RGB, COLORS, SHAPES

#: the 8 neighbour offsets (dy, dx)
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _shift(x: torch.Tensor, dy: int, dx: int, fill: int) -> torch.Tensor:
    """out[..., y, x] = x[..., y + dy, x + dx] (``fill`` outside the image)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), value=fill)
    return padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def label_components(classes: torch.Tensor, max_iters: int = 10_000) -> torch.Tensor:
    """(B, H, W) long class map (-1 = ignore) → (B, H, W) component labels (0 = none).

    A label is 1 + the flat index of some pixel of its component, equal for all
    pixels of a component and distinct between components.
    """
    b, h, w = classes.shape
    valid = classes >= 0
    labels = torch.where(valid, torch.arange(1, h * w + 1).view(1, h, w).expand(b, h, w),
                         torch.zeros((), dtype=torch.long))
    same = [(_shift(classes, dy, dx, -2) == classes) & valid for dy, dx in _NEIGHBOURS]
    for _ in range(max_iters):
        new = labels
        for (dy, dx), ok in zip(_NEIGHBOURS, same):
            new = torch.maximum(new, torch.where(ok, _shift(labels, dy, dx, 0), 0))
        # pointer jumping: the pixel a label names belongs to the same component
        flat = new.view(b, h * w)
        jumped = flat.gather(1, (flat - 1).clamp_min(0)).view(b, h, w)
        new = torch.where(valid, torch.maximum(new, jumped), 0)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


class ShapesDetector:
    """Exact detector implementing the ``Detector`` protocol of ``bench.detection``."""

    def __init__(self, max_color_dist: float = 48.0, min_area: int = 24) -> None:
        #: pixels farther than this (0-255 RGB units) from every palette colour are ignored
        self.max_color_dist = max_color_dist
        #: components with fewer pixels are specks, not objects
        self.min_area = min_area
        self.palette = torch.tensor([COLOR_RGB[c] for c in COLORS] + [BACKGROUND_RGB], dtype=torch.float32)

    def color_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float [0, 1] → (B, H, W) palette index, -1 for background/unknown."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        px = images.detach().float().cpu().permute(0, 2, 3, 1) * 255.0
        d = ((px.unsqueeze(-2) - self.palette) ** 2).sum(-1)  # (B, H, W, P)
        dist, idx = d.min(-1)
        bg = len(COLORS)
        return torch.where((idx == bg) | (dist > self.max_color_dist ** 2), -1, idx)

    def detect(self, images: torch.Tensor) -> list[list[Detection]]:
        classes = self.color_map(images)
        b, h, w = classes.shape
        labels = label_components(classes)
        out: list[list[Detection]] = [[] for _ in range(b)]
        keys = (torch.arange(b).view(b, 1, 1) * (h * w + 1) + labels)[labels > 0]
        if keys.numel() == 0:
            return out
        uniq, inv, area = torch.unique(keys, return_inverse=True, return_counts=True)
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        sel = labels > 0
        ys, xs = ys.expand(b, h, w)[sel], xs.expand(b, h, w)[sel]
        n = uniq.numel()
        y0 = torch.full((n,), h).scatter_reduce(0, inv, ys, "amin")
        y1 = torch.zeros(n, dtype=torch.long).scatter_reduce(0, inv, ys, "amax") + 1
        x0 = torch.full((n,), w).scatter_reduce(0, inv, xs, "amin")
        x1 = torch.zeros(n, dtype=torch.long).scatter_reduce(0, inv, xs, "amax") + 1
        color = torch.zeros(n, dtype=torch.long).scatter_reduce(0, inv, classes[sel], "amax")
        img_idx, lab = uniq // (h * w + 1), uniq % (h * w + 1)
        for k in (area >= self.min_area).nonzero().flatten().tolist():
            i = int(img_idx[k])
            ya, yb, xa, xb = int(y0[k]), int(y1[k]), int(x0[k]), int(x1[k])
            mask = labels[i, ya:yb, xa:xb] == lab[k]
            shape, iou = self._classify(mask)
            aspect = min(yb - ya, xb - xa) / max(yb - ya, xb - xa)
            out[i].append(Detection(cls=shape, box=(float(xa), float(ya), float(xb), float(yb)),
                                    score=iou * aspect, color=COLORS[int(color[k])],
                                    extra={"area": int(area[k]), "iou": iou}))
        for dets in out:
            dets.sort(key=lambda d: (-d.score, d.box[1], d.box[0]))
        return out

    @staticmethod
    def _classify(mask: torch.Tensor) -> tuple[str, float]:
        """Best shape template at the mask's own size, and its IoU."""
        h, w = mask.shape
        best, best_iou = SHAPES[0], -1.0
        for shape in SHAPES:
            t = shape_mask(shape, h, w)
            iou = float((t & mask).sum()) / float((t | mask).sum())
            if iou > best_iou:
                best, best_iou = shape, iou
        return best, best_iou

    def classify_colors(self, images: torch.Tensor, detections: list[list[Detection]],
                        colors: list[str] | None = None) -> list[list[Detection]]:
        """Colours are exact already: detections come back unchanged."""
        return detections
