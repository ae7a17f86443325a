"""CLIPScore reward (Hessel et al., 2021) on an open_clip model.

Score = ``w * max(cos(E_image, E_text), 0)`` with ``w = 2.5`` by default, exactly
the paper's reference-free CLIPScore (ranges over [0, 2.5]; typical values
0.6-0.9 for ViT-L-14). ``w`` and the clamp are options because an RL reward may
prefer the raw cosine (``w=1, clamp=False``).

Real weights (no download happens unless you ask for an open_clip tag):

* recipe::

    rewards:
      - name: clip
        options: {model: ViT-L-14, pretrained: /models/clip/ViT-L-14-openai.bin}

  where the file is an open_clip / OpenAI checkpoint for that architecture, e.g.
  ``open_clip_pytorch_model.bin`` from https://huggingface.co/laion/CLIP-ViT-L-14-laion2B-s32B-b82K
  (or ``open_clip_model.safetensors``);
* or ``model: "local-dir:/models/clip-dir"`` for a folder holding ``open_clip_config.json``
  plus weights (the layout of open_clip hub repos); ``pretrained`` is then ignored;
* or ``pretrained: openai`` (any open_clip tag), which lets open_clip download to its cache.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from maskfocus_cli.rewards.openclip_common import (
    OpenClipScorer, check_arch, check_precision, resolve_device,
)


class ClipScore:
    """CLIPScore = w * max(cos, 0) between each image and its own prompt."""

    def __init__(self, model: str = "ViT-L-14", pretrained: str | None = None, *, w: float = 2.5,
                 clamp: bool = True, device: str | None = None, precision: str = "fp32",
                 cache_size: int = 4096, batch_size: int = 32) -> None:
        import open_clip

        dtype = check_precision(precision)
        check_arch(model)
        local_dir = model.startswith("local-dir:")
        if not local_dir:
            if not pretrained:
                raise ValueError(
                    f"clip reward needs weights: set options.pretrained to a local open_clip checkpoint for "
                    f"{model} (e.g. open_clip_pytorch_model.bin from huggingface.co/laion/CLIP-ViT-L-14-"
                    "laion2B-s32B-b82K), or options.model to 'local-dir:DIR'")
            tags = open_clip.list_pretrained_tags_by_model(model)
            if not os.path.isfile(pretrained) and pretrained not in tags:
                raise ValueError(f"clip reward: pretrained={pretrained!r} is neither a file nor an open_clip tag "
                                 f"for {model} (tags: {', '.join(tags) or 'none'}); give the checkpoint path")
        self.device = resolve_device(device)
        try:
            net = open_clip.create_model(model, pretrained=None if local_dir else pretrained,
                                         precision=precision, device=self.device)
        except (AssertionError, RuntimeError) as e:  # shape asserts / size mismatch: another architecture
            raise ValueError(f"clip reward: weights {pretrained!r} do not fit open_clip architecture {model!r} "
                             f"(set options.model to the checkpoint's architecture): {str(e)[:200]}") from None
        self.scorer = OpenClipScorer(net, open_clip.get_tokenizer(model), self.device, dtype,
                                     cache_size=cache_size, batch_size=batch_size)
        self.w, self.clamp = float(w), clamp

    def __call__(self, images: torch.Tensor, prompts: Sequence[str],
                 metadata: Sequence[dict | None] | None = None) -> torch.Tensor:
        cos = self.scorer.cosine(images, prompts)
        return self.w * (cos.clamp_min(0.0) if self.clamp else cos)
