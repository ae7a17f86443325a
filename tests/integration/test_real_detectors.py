"""Real-image detectors through their real loading code, on tiny random models saved to disk.

The models are random, so these are plumbing tests (shapes, types, vocabularies,
capping, sorting); the maths around them is checked with hand-computed values.
"""

from __future__ import annotations

import json

import pytest
import torch

from maskfocus_cli.bench.detection import Detection
from maskfocus_cli.bench.detectors import (GENEVAL_CLASSES, ClipColorClassifier, Mask2FormerDetector,
                                           boxes_from_masks, cap_per_class, coco_label_map, color_crop)
from maskfocus_cli.bench.prompts import GENEVAL_COLORS
from maskfocus_cli.bench.t2i_compbench import T2ICompBenchScorer


@pytest.fixture(scope="module")
def tiny_mask2former(tmp_path_factory):
    pytest.importorskip("scipy")  # transformers builds Mask2Former's matching loss even for inference
    from transformers import (Mask2FormerConfig, Mask2FormerForUniversalSegmentation,
                              Mask2FormerImageProcessor, SwinConfig)

    path = tmp_path_factory.mktemp("mask2former")
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    id2label = {i: name for i, name in enumerate(GENEVAL_CLASSES)}
    id2label.update({64: "mouse", 65: "remote", 66: "keyboard"})  # COCO's own names, as checkpoints spell them
    cfg = Mask2FormerConfig(backbone_config=backbone, num_queries=8, hidden_dim=32, feature_size=32,
                            mask_feature_size=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                            dim_feedforward=32, encoder_feedforward_dim=32, common_stride=4,
                            id2label=id2label, label2id={v: k for k, v in id2label.items()},
                            use_pretrained_backbone=False)
    torch.manual_seed(0)
    Mask2FormerForUniversalSegmentation(cfg).save_pretrained(path)
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """An open_clip 'local-dir' folder: open_clip_config.json + open_clip_model.safetensors."""
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


# ---------------------------------------------------------------- pure helpers

def test_boxes_from_masks():
    masks = torch.zeros(3, 6, 8, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True  # rows 1-2, cols 2-4
    masks[1, 5, 7] = True
    boxes = boxes_from_masks(masks)
    assert boxes.tolist() == [[2, 1, 5, 3], [7, 5, 8, 6], [0, 0, 0, 0]]


def test_coco_label_map_aliases_and_fallback():
    assert coco_label_map({0: "person", 1: "mouse", 2: "tvmonitor", 3: "wall-other-merged"}) == {
        0: "person", 1: "computer mouse", 2: "tv"}
    assert coco_label_map({i: f"LABEL_{i}" for i in range(80)})[64] == "computer mouse"


def test_cap_per_class_sorts_and_caps():
    dets = [Detection("dog", (0, 0, 1, 1), s) for s in (0.2, 0.9, 0.5)] + [Detection("cat", (0, 0, 1, 1), 0.7)]
    kept = cap_per_class(dets, 2)
    assert [(d.cls, d.score) for d in kept] == [("dog", 0.9), ("cat", 0.7), ("dog", 0.5)]


def test_color_crop_composites_mask_on_grey():
    image = torch.zeros(3, 4, 4)
    image[0] = 1.0  # pure red
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[1, 1] = True
    crop = color_crop(image, Detection("dog", (1, 1, 3, 3), 0.9, extra={"mask": mask}), (0.6, 0.6, 0.6))
    assert crop.size == (2, 2)
    assert crop.getpixel((0, 0)) == (255, 0, 0)
    assert crop.getpixel((1, 1)) == (153, 153, 153)


def test_missing_weights_are_value_errors(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="--detector"):
        Mask2FormerDetector(tmp_path / "nope")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        Mask2FormerDetector("facebook/mask2former-swin-small-coco-instance")
    with pytest.raises(ValueError, match="--clip"):
        ClipColorClassifier("ViT-L-14", pretrained="openai")
    with pytest.raises(ValueError, match="needs weights"):
        ClipColorClassifier("ViT-L-14")


# ---------------------------------------------------------------- tiny models

def test_mask2former_detects_and_clip_colours(tiny_mask2former, tiny_clip_dir):
    clf = ClipColorClassifier(tiny_clip_dir, batch_size=3)
    detector = Mask2FormerDetector(tiny_mask2former, score_threshold=0.0, max_per_class=1, batch_size=1,
                                   color_classifier=clf)
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    dets = detector.detect(images)
    assert len(dets) == 2
    assert sum(len(d) for d in dets) > 0
    for per_image in dets:
        assert [d.score for d in per_image] == sorted((d.score for d in per_image), reverse=True)
        classes = [d.cls for d in per_image]
        assert len(classes) == len(set(classes))  # max_per_class=1
        for d in per_image:
            assert d.cls in GENEVAL_CLASSES and 0.0 <= d.score <= 1.0 and d.color is None
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert d.extra["mask"].shape == (64, 64) and d.extra["mask"].any()
    coloured = detector.classify_colors(images, dets, list(GENEVAL_COLORS))
    assert [len(c) for c in coloured] == [len(d) for d in dets]
    assert all(d.color in GENEVAL_COLORS for c in coloured for d in c)
    assert [[d.cls for d in c] for c in coloured] == [[d.cls for d in p] for p in dets]


def test_mask2former_without_colour_model_says_what_to_pass(tiny_mask2former):
    detector = Mask2FormerDetector(tiny_mask2former)
    with pytest.raises(ValueError, match="--clip"):
        detector.classify_colors(torch.zeros(1, 3, 8, 8), [[]], list(GENEVAL_COLORS))


def test_colour_classifier_keeps_known_colours_and_boxes_without_masks(tiny_clip_dir):
    clf = ClipColorClassifier(tiny_clip_dir)
    dets = [[Detection("dog", (0, 0, 10, 10), 0.9), Detection("cat", (5, 5, 20, 20), 0.8, color="black")]]
    out = clf.classify_colors(torch.rand(1, 3, 24, 24), dets, ["red", "green"])
    assert out[0][0].color in ("red", "green") and out[0][1].color == "black"


def test_non_spatial_clipscore_is_a_cosine(tiny_clip_dir):
    scorer = T2ICompBenchScorer("non_spatial", clip=tiny_clip_dir)
    images = torch.rand(3, 3, 40, 40)
    prompts = ["a red car", "a dog", "a person is reading a book"]
    scores = scorer.score(images, prompts)
    assert len(scores) == 3 and all(-1.0 <= s <= 1.0 for s in scores)
    # per-image, independent of the batch it is scored in
    assert scorer.score(images[1:2], prompts[1:2])[0] == pytest.approx(scores[1], abs=1e-5)


def test_unreachable_hub_fails_at_once_not_after_retries(monkeypatch):
    import maskfocus_cli.bench.detectors as detectors
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(detectors, "hub_cached", lambda repo: False)
    monkeypatch.setattr(detectors, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ValueError, match="hub is unreachable.*--detector"):  # before huggingface_hub's retries
        Mask2FormerDetector("facebook/mask2former-swin-small-coco-instance")
    # a cached hub id goes on to the real load, network or not
    monkeypatch.setattr(detectors, "hub_cached", lambda repo: True)
    assert detectors.resolve_weights("owner/model", "X", "--detector") == ("owner/model", False)
