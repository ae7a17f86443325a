"""PickScore reward (Kirstain et al., 2023): a transformers CLIP-H fine-tuned on Pick-a-Pic.

Score = ``logit_scale.exp() * cos(E_image, E_text)`` (the model's own logit for the
pair; typically 18-23 since logit_scale.exp() is about 100). Flow-GRPO divides by
26 to bring it near [0, 1]; do the same here with the recipe weight (``weight: 0.0385``).

Real weights: download two folders from the Hugging Face hub,

* https://huggingface.co/yuvalkirstain/PickScore_v1 (the fine-tuned CLIPModel), and
* https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K (only its processor /
  tokenizer files are used: preprocessor_config.json, tokenizer*.json, vocab.json, merges.txt),

then set::

    rewards:
      - name: pickscore
        options: {path: /models/PickScore_v1, processor: /models/CLIP-ViT-H-14-laion2B-s32B-b79K}

``processor`` defaults to ``path`` when that folder holds the processor files too.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F

from maskfocus_cli.rewards.openclip_common import check_precision, resolve_device
from maskfocus_cli.rewards.preprocess import PromptCache, clip_preprocess

_HELP = ("download https://huggingface.co/yuvalkirstain/PickScore_v1 and set option path=DIR "
         "(recipe: rewards[].options.path), plus processor=DIR of "
         "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K if PickScore_v1 lacks the processor files")

_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL resample codes used by HF image processors


def _features(out) -> torch.Tensor:
    """transformers 4.x returns a tensor from get_*_features, 5.x an output with pooler_output."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _field(obj, key: str):
    """Read ``key`` from a size spec: a dict (transformers 4.x) or a SizeDict (5.x)."""
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _crop_size(proc) -> tuple[int, int]:
    """(H, W) the vision tower sees: the processor's centre crop, else its shortest edge."""
    crop = getattr(proc, "crop_size", None)
    if isinstance(crop, int):
        return crop, crop
    if crop is not None and _field(crop, "height"):
        return int(_field(crop, "height")), int(_field(crop, "width"))
    size = proc.size
    s = size if isinstance(size, int) else _field(size, "shortest_edge")
    return int(s), int(s)


class PickScore:
    """PickScore = logit_scale.exp() * cos(image, prompt), on a transformers CLIPModel."""

    def __init__(self, path: str | None = None, processor: str | None = None, *, device: str | None = None,
                 precision: str = "fp32", cache_size: int = 4096, batch_size: int = 16) -> None:
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        if not path:
            raise ValueError(f"pickscore reward needs weights: {_HELP}")
        if not os.path.isdir(path):
            raise ValueError(f"pickscore model folder not found: {path}; {_HELP}")
        processor = processor or path
        if not os.path.isfile(os.path.join(processor, "preprocessor_config.json")):
            raise ValueError(f"no preprocessor_config.json in {processor}: {_HELP}")
        self.device = resolve_device(device)
        self.dtype = check_precision(precision)
        self.model = CLIPModel.from_pretrained(path).to(self.device, self.dtype).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(processor)
        proc = CLIPImageProcessor.from_pretrained(processor)
        self.size = _crop_size(proc)
        self.mean, self.std = tuple(proc.image_mean), tuple(proc.image_std)
        self.mode = _RESAMPLE.get(int(getattr(proc, "resample", 3)), "bicubic")
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        self.batch_size = batch_size
        self.text_cache = PromptCache(cache_size)

    @torch.no_grad()
    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        feats = _features(self.model.get_text_features(input_ids=tok["input_ids"],
                                                       attention_mask=tok["attention_mask"]))
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:
        feats = []
        for chunk in images.split(self.batch_size):
            x = clip_preprocess(chunk.to(self.device), self.size, self.mean, self.std, self.mode, self.dtype)
            feats.append(F.normalize(_features(self.model.get_image_features(pixel_values=x)).float(), dim=-1))
        return torch.cat(feats)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str],
                 metadata: Sequence[dict | None] | None = None) -> torch.Tensor:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        img = self._encode_images(images)
        txt = self.text_cache.get(list(prompts), self._encode_text)
        scale = self.model.logit_scale.exp().float()
        return (scale * (img * txt).sum(-1)).cpu()
