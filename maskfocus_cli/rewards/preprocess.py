"""Batched CLIP-style image preprocessing in torch, and a per-prompt text-feature cache.

CLIP reward models are trained on PIL ``Resize(shortest side, bicubic) ->
CenterCrop -> ToTensor -> Normalize``. Doing that per image through PIL would
move every rollout image GPU -> CPU -> uint8 and back; here the same geometry
runs on the whole batch on its device (bicubic with antialias, like PIL, then a
clamp to [0, 1] because PIL's uint8 output cannot overshoot).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def resize_center_crop(images: torch.Tensor, size: int | Sequence[int],
                       mode: str = "bicubic") -> torch.Tensor:
    """Resize so the image covers ``size`` (shortest side matches), then centre-crop to it."""
    th, tw = _pair(size)
    h, w = images.shape[-2:]
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    x = images
    if (nh, nw) != (h, w):
        smooth = mode in ("bilinear", "bicubic")
        kw = {"align_corners": False, "antialias": True} if smooth else {}
        x = F.interpolate(x, size=(nh, nw), mode=mode, **kw).clamp_(0.0, 1.0)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return x[..., top:top + th, left:left + tw]


def clip_preprocess(images: torch.Tensor, size: int | Sequence[int],
                    mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD,
                    mode: str = "bicubic", dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> normalised (B, 3, size, size) ready for a CLIP vision tower."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    x = resize_center_crop(images.float(), size, mode)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    x = (x - m) / s
    return x if dtype is None else x.to(dtype)


class PromptCache:
    """LRU cache of per-prompt text features.

    A GRPO batch holds G images of the same prompt and prompts recur across epochs,
    so each distinct prompt is encoded once; misses are encoded together in one batch.
    """

    def __init__(self, max_size: int = 4096) -> None:
        self.max_size = max_size
        self._store: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    def get(self, prompts: Sequence[str],
            encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """Features for ``prompts`` (B, D); ``encode(list_of_new_prompts) -> (n, D)``."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._store))
        if missing:
            feats = encode(missing)
            if feats.shape[0] != len(missing):
                raise RuntimeError(f"text encoder returned {feats.shape[0]} rows for {len(missing)} prompts")
            for p, f in zip(missing, feats):
                self._store[p] = f.detach()
        out = []
        for p in prompts:
            self._store.move_to_end(p)
            out.append(self._store[p])
        while len(self._store) > self.max_size:
            self._store.popitem(last=False)
        return torch.stack(out)
