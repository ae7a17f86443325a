"""Image files: tensors ↔ PNG (atomic writes) and contact sheets."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from maskfocus_cli.io.checkpoint import atomic_write_bytes


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] → (H, W, 3) uint8."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image tensor of shape (3, H, W), got {tuple(image.shape)}")
    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return arr.permute(1, 2, 0).cpu().numpy()


def to_pil(image: torch.Tensor | Image.Image) -> Image.Image:
    """(3, H, W) float tensor in [0, 1] (or a PIL image) → RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(to_uint8(image))


def png_bytes(image: torch.Tensor | Image.Image) -> bytes:
    buf = io.BytesIO()
    to_pil(image).save(buf, format="PNG")
    return buf.getvalue()


def save_png(image: torch.Tensor | Image.Image, path: str | Path) -> Path:
    """Write one image as PNG atomically; returns the path."""
    atomic_write_bytes(path, png_bytes(image))
    return Path(path)


def load_image(path: str | Path) -> torch.Tensor:
    """PNG/JPEG → (3, H, W) float in [0, 1]."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def contact_sheet(images: torch.Tensor, ncols: int | None = None, pad: int = 2,
                  scale: int = 1) -> torch.Tensor:
    """(B, 3, H, W) → one (3, H', W') grid image on a white background."""
    b, c, h, w = images.shape
    ncols = ncols or max(1, math.ceil(math.sqrt(b)))
    nrows = math.ceil(b / ncols)
    sheet = torch.ones(c, nrows * (h + pad) + pad, ncols * (w + pad) + pad)
    for i in range(b):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        sheet[:, y:y + h, x:x + w] = images[i].float().clamp(0, 1)
    if scale > 1:
        sheet = sheet.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return sheet
