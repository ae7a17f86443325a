"""HPSv2 / HPSv2.1 human-preference reward (Wu et al., 2023).

HPSv2 is an open_clip ViT-H-14 fine-tuned on human preference pairs. Scoring
follows the official ``hpsv2.score``: unit-normalised image and text features,
score = their dot product (the diagonal of ``image_feats @ text_feats.T``),
*without* the logit scale. Typical values: 0.20-0.35.

Real weights: download ``HPS_v2.1_compressed.pt`` (or ``HPS_v2_compressed.pt``)
from https://huggingface.co/xswu/HPSv2 and set::

    rewards:
      - name: hpsv2
        options: {weights: /models/HPS_v2.1_compressed.pt}

The file is a torch checkpoint whose ``state_dict`` holds the whole fine-tuned
open_clip model, so the laion ViT-H-14 base weights are *not* needed: the
architecture is created empty (``pretrained=None``) and the checkpoint fills it.
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Sequence

import torch

from maskfocus_cli.rewards.openclip_common import (
    OpenClipScorer, check_arch, check_precision, resolve_device,
)

WEIGHTS_HELP = ("download HPS_v2.1_compressed.pt from https://huggingface.co/xswu/HPSv2 and set the "
                "reward option weights=/path/to/HPS_v2.1_compressed.pt (recipe: rewards[].options.weights)")


class _NoRandomInitWarning(logging.Filter):
    """open_clip warns "initialized randomly" for pretrained=None; here the checkpoint follows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


class HPSv2Reward:
    """HPS score = <img, txt> of unit open_clip features from the HPSv2 checkpoint."""

    def __init__(self, weights: str | None = None, *, arch: str = "ViT-H-14", device: str | None = None,
                 precision: str = "fp32", weights_only: bool = True, cache_size: int = 4096,
                 batch_size: int = 16) -> None:
        """``weights_only=False`` allows checkpoints that pickle non-tensor objects; only
        use it for files you trust."""
        import open_clip

        if not weights:
            raise ValueError(f"hpsv2 reward needs weights: {WEIGHTS_HELP}")
        if not os.path.isfile(weights):
            raise ValueError(f"hpsv2 weights file not found: {weights}; {WEIGHTS_HELP}")
        dtype = check_precision(precision)
        check_arch(arch)
        self.device = resolve_device(device)
        quiet = _NoRandomInitWarning()
        logging.getLogger().addFilter(quiet)
        try:
            net = open_clip.create_model(arch, pretrained=None, precision=precision, device=self.device)
        finally:
            logging.getLogger().removeFilter(quiet)
        try:
            open_clip.load_checkpoint(net, weights, strict=True, weights_only=weights_only)
        except pickle.UnpicklingError as e:
            raise ValueError(f"hpsv2 weights {weights} hold non-tensor objects that torch refuses to load "
                             "safely; if you trust the file set option weights_only=false") from e
        except (RuntimeError, AssertionError) as e:  # size mismatch / open_clip's shape asserts
            raise ValueError(f"hpsv2 weights {weights} do not fit open_clip architecture {arch!r} "
                             f"(set option arch to the checkpoint's architecture): {str(e)[:300]}") from e
        net.to(self.device)
        self.scorer = OpenClipScorer(net, open_clip.get_tokenizer(arch), self.device, dtype,
                                     cache_size=cache_size, batch_size=batch_size)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str],
                 metadata: Sequence[dict | None] | None = None) -> torch.Tensor:
        return self.scorer.cosine(images, prompts)
