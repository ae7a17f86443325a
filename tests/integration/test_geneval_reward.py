"""The `geneval` reward through the registry, on tiny random Mask2Former + open_clip weights (plumbing).

Random detectors find random classes, so the metadata is built from what the
detector sees in each image: a prompt naming a detected class must score 1, one
naming an absent class 0, and a two-object prompt with one of each 0.5 under
partial credit. That checks the reward applies GenEval's rules to *its*
detector's output, the same decision ``maskfocus evaluate --bench geneval`` makes.
"""

from __future__ import annotations

import json

import pytest
import torch

from maskfocus_cli.bench.detectors import GENEVAL_CLASSES
from maskfocus_cli.bench.geneval import evaluate_batch, fill_colors
from maskfocus_cli.rewards.registry import make_reward

ANY = {"score": 0.0, "counting_score": 0.0}  # random weights score ~0.01: keep every detection


@pytest.fixture(scope="module")
def tiny_mask2former(tmp_path_factory):
    pytest.importorskip("scipy")
    from transformers import (Mask2FormerConfig, Mask2FormerForUniversalSegmentation,
                              Mask2FormerImageProcessor, SwinConfig)
    path = tmp_path_factory.mktemp("m2f")
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    id2label = dict(enumerate(GENEVAL_CLASSES))
    cfg = Mask2FormerConfig(backbone_config=backbone, num_queries=8, hidden_dim=32, feature_size=32,
                            mask_feature_size=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                            dim_feedforward=32, encoder_feedforward_dim=32, common_stride=4, id2label=id2label,
                            label2id={v: k for k, v in id2label.items()}, use_pretrained_backbone=False)
    torch.manual_seed(0)
    Mask2FormerForUniversalSegmentation(cfg).save_pretrained(path)
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from open_clip.model import CLIP
    from safetensors.torch import save_file
    path = tmp_path_factory.mktemp("clip")
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    model = CLIP(**cfg)
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return path


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(3)
    return torch.rand(3, 3, 64, 64)


def row(tag: str, *clauses: dict) -> dict:
    return {"tag": tag, "include": list(clauses), "prompt": f"a {tag} prompt"}


def test_reward_follows_its_detector(tiny_mask2former, tiny_clip, images):
    reward = make_reward("geneval", detector=str(tiny_mask2former), clip=str(tiny_clip), device="cpu",
                         thresholds=ANY)
    dets = fill_colors(reward.detector, images, reward.detector.detect(images))
    seen = [{d.cls: d.color for d in reversed(ds)} for ds in dets]  # class → colour of its best detection
    assert all(seen), "the tiny detector should find something in every image"
    present = [sorted(s)[0] for s in seen]
    absent = [next(c for c in GENEVAL_CLASSES if c not in s) for s in seen]
    other_colour = [next(c for c in ("red", "green") if c != s[p]) for s, p in zip(seen, present)]
    metas = [row("single_object", {"class": present[0], "count": 1}),
             row("single_object", {"class": absent[1], "count": 1}),
             row("color_attr", {"class": present[2], "count": 1, "color": seen[2][present[2]]})]
    prompts = [m["prompt"] for m in metas]
    scores = reward(images, prompts, metas)
    assert scores.dtype == torch.float32 and scores.tolist() == [1.0, 0.0, 1.0]
    # the same decision as the benchmark's evaluate_batch on the same detector
    assert scores.tolist() == [float(r.correct) for r in evaluate_batch(reward.detector, images, metas, reward.thr)]
    wrong_colour = [row("color_attr", {"class": present[2], "count": 1, "color": other_colour[2]})]
    assert reward(images[2:], prompts[2:], wrong_colour).tolist() == [0.0]


def test_partial_credit_counts_clauses(tiny_mask2former, tiny_clip, images):
    reward = make_reward("geneval", detector=str(tiny_mask2former), clip=str(tiny_clip), device="cpu",
                         thresholds=ANY, partial=True)
    dets = reward.detector.detect(images[:1])[0]
    present = dets[0].cls
    absent = next(c for c in GENEVAL_CLASSES if c not in {d.cls for d in dets})
    meta = row("two_object", {"class": present, "count": 1}, {"class": absent, "count": 1})
    assert reward(images[:1], [meta["prompt"]], [meta]).tolist() == [0.5]
    # count credit, as the shapes-geneval reward has it: asking for 2 of a class drawn once earns 1/2
    graded = make_reward("geneval", detector=str(tiny_mask2former), clip=str(tiny_clip), device="cpu",
                         thresholds=ANY, partial=True, count_credit=True)
    n = sum(d.cls == present for d in dets)
    meta2 = row("counting", {"class": present, "count": n + 1})
    assert graded(images[:1], [meta2["prompt"]], [meta2]).tolist() == [pytest.approx(n / (n + 1))]
    assert reward(images[:1], [meta2["prompt"]], [meta2]).tolist() == [0.0]


def test_metadata_is_required_and_weights_errors_name_the_option(tiny_mask2former, tiny_clip, images, tmp_path):
    reward = make_reward("geneval", detector=str(tiny_mask2former), clip=str(tiny_clip), device="cpu")
    with pytest.raises(ValueError, match="metadata row"):
        reward(images[:1], ["a photo of a dog"], [None])
    with pytest.raises(ValueError, match="metadata row"):
        reward(images[:1], ["a photo of a dog"], None)
    with pytest.raises(ValueError, match="reward option 'detector'"):
        make_reward("geneval", detector=str(tmp_path / "missing"), clip=str(tiny_clip), device="cpu")
    with pytest.raises(ValueError, match="unknown GenEval threshold"):
        make_reward("geneval", detector=str(tiny_mask2former), clip=str(tiny_clip), thresholds={"nope": 1})
