"""What the open_clip-based rewards (clip, hpsv2) share: device/precision options,
batched image features, cached text features, cosine similarity."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from maskfocus_cli.rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PromptCache, clip_preprocess

_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_precision(precision: str) -> torch.dtype:
    if precision not in _PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {sorted(_PRECISIONS)}")
    return _PRECISIONS[precision]


def check_arch(arch: str) -> None:
    """Fail early, with the list, on an unknown open_clip architecture name."""
    import open_clip

    if arch.startswith(("local-dir:", "hf-hub:")):
        return
    if arch not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {arch!r}; known: ViT-H-14, ViT-L-14, ViT-B-32, ... "
                         "(open_clip.list_models()), or register a config with open_clip.add_model_config")


class OpenClipScorer:
    """Wraps an open_clip CLIP model: normalised image/text features and their cosine."""

    def __init__(self, model: torch.nn.Module, tokenizer, device: torch.device, dtype: torch.dtype,
                 cache_size: int = 4096, batch_size: int = 32) -> None:
        from open_clip.model import get_model_preprocess_cfg

        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device, self.dtype = device, dtype
        cfg = get_model_preprocess_cfg(model)
        self.image_size = cfg.get("size", 224)
        self.mean = tuple(cfg.get("mean", OPENAI_CLIP_MEAN))
        self.std = tuple(cfg.get("std", OPENAI_CLIP_STD))
        self.interpolation = cfg.get("interpolation", "bicubic")
        self.batch_size = batch_size
        self.text_cache = PromptCache(cache_size)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, D) unit vectors (float32), in chunks of ``batch_size``."""
        feats = []
        for chunk in images.split(self.batch_size):
            x = clip_preprocess(chunk.to(self.device), self.image_size, self.mean, self.std,
                                mode=self.interpolation, dtype=self.dtype)
            feats.append(F.normalize(self.model.encode_image(x).float(), dim=-1))
        return torch.cat(feats)

    @torch.no_grad()
    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, D) unit vectors (float32); each distinct prompt is encoded once and cached."""
        return self.text_cache.get(list(prompts), self._encode_text)

    def cosine(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Per-pair cosine similarity, (B,) float32 on CPU."""
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        img = self.image_features(images)
        txt = self.text_features(prompts)
        return (img * txt).sum(-1).cpu()
