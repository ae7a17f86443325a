"""Batched CLIP preprocessing and the per-prompt feature cache."""

import numpy as np
import pytest
import torch
from PIL import Image

from maskfocus_cli.rewards.preprocess import (
    OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PromptCache, clip_preprocess, resize_center_crop,
)


def test_center_crop_without_resize_picks_the_middle():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6) / 1000
    out = resize_center_crop(x, 4)
    # shortest side already 4: no resize, columns 1..4 kept
    assert torch.equal(out, x[..., :, 1:5])


def test_resize_shortest_side_then_crop_shape():
    x = torch.rand(1, 3, 20, 40)
    assert resize_center_crop(x, 10).shape == (1, 3, 10, 10)
    assert resize_center_crop(x, (8, 12)).shape == (1, 3, 8, 12)


def test_constant_image_normalises_to_hand_value():
    x = torch.full((1, 3, 16, 16), 0.5)
    out = clip_preprocess(x, 8)
    expect = [(0.5 - m) / s for m, s in zip(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)]
    assert out.shape == (1, 3, 8, 8)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(expect), atol=1e-5)


def test_matches_hf_clip_image_processor():
    """Same geometry as the PIL pipeline the reward models were trained with (up to 8-bit rounding)."""
    from transformers import CLIPImageProcessor

    g = torch.Generator().manual_seed(0)
    # a smooth image (PIL and torch bicubic differ most on pixel noise)
    low = torch.rand(2, 3, 6, 8, generator=g)
    x = torch.nn.functional.interpolate(low, size=(48, 64), mode="bilinear", align_corners=False)
    proc = CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    pil = [Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for im in x]
    ref = proc(images=pil, return_tensors="pt")["pixel_values"]
    ours = clip_preprocess(x, 24)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() < 0.03  # normalised units: one grey level is 1/255/0.27 = 0.015


def test_bad_shape_rejected():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        clip_preprocess(torch.rand(3, 8, 8), 4)


def test_prompt_cache_encodes_each_prompt_once_and_evicts():
    calls = []

    def encode(prompts):
        calls.append(list(prompts))
        return torch.tensor([[float(len(p))] for p in prompts])

    cache = PromptCache(max_size=2)
    out = cache.get(["aa", "b", "aa", "b"], encode)
    assert out.squeeze(1).tolist() == [2.0, 1.0, 2.0, 1.0]
    assert calls == [["aa", "b"]]
    cache.get(["b"], encode)
    assert calls == [["aa", "b"]]
    cache.get(["ccc"], encode)  # evicts the least recently used ("aa")
    assert len(cache) == 2
    cache.get(["aa"], encode)
    assert calls[-1] == ["aa"]
