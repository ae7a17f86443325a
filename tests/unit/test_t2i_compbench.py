"""T2I-CompBench formulas (hand-computed) and a tiny random BLIP scored end to end."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from maskfocus_cli.bench.detection import Detection
from maskfocus_cli.bench.t2i_compbench import (
    BlipVqa, T2ICompBenchScorer, blip_questions, blip_vqa_score, dedup_detections, determine_position,
    find_relation, noun_phrases, numeracy_formula, numeracy_score, parse_numeracy, same_object,
    spatial_formula, spatial_objects, spatial_score, strip_attributes, three_in_one, unidet_distance_threshold)


def det(cls, box, score=0.9):
    return Detection(cls=cls, box=tuple(float(v) for v in box), score=score)


# ---------------------------------------------------------------- prompt parsing

@pytest.mark.parametrize("prompt, phrases", [
    ("a green bench and a blue bowl", ["a green bench", "a blue bowl"]),
    ("an oblong cucumber and a teardrop plum", ["an oblong cucumber", "a teardrop plum"]),
    ("rubber sole shoes and fluffy clouds", ["rubber sole shoes", "fluffy clouds"]),
    ("a metallic desk lamp and a fluffy sweater", ["a metallic desk lamp", "a fluffy sweater"]),
    ("A bathroom with white tile and a beige toilet.", ["a bathroom", "white tile", "a beige toilet"]),
    ("The brown dog was lying on the green mat.", ["the brown dog", "the green mat"]),
])
def test_noun_phrases(prompt, phrases):
    assert noun_phrases(prompt) == phrases


def test_blip_questions_are_capped_at_eight():
    prompt = " and ".join(f"a red thing{i}" for i in range(10))
    qs = blip_questions(prompt)
    assert len(qs) == 8 and qs[0] == "a red thing0?"


def test_blip_score_is_product_and_one_without_questions():
    assert blip_vqa_score([0.5, 0.8]) == pytest.approx(0.4)
    assert blip_vqa_score([]) == 1.0


def test_relations_and_objects():
    assert find_relation("a girl on the top of a frog") == "on the top of"
    assert find_relation("The red hat was on top of the brown coat rack.") == "on the top of"
    assert find_relation("a dog near a cat") == "near"
    assert find_relation("two cars parked nearby") is None
    assert spatial_objects("a girl on the top of a sofa", "on the top of", ["girl"]) == ("girl", "couch")
    assert spatial_objects("a boy on side of a traffic light", "on side of") == ("person", "traffic light")
    assert spatial_objects("The red apple was next to the oval plate.", "next to") == ("apple", "plate")


def test_parse_numeracy():
    assert parse_numeracy("two dogs and a cat") == [("dog", 2), ("cat", 1)]
    assert parse_numeracy("three hot dogs, one boy and four mice") == [
        ("hot dog", 3), ("person", 1), ("computer mouse", 4)]
    assert parse_numeracy("six people gathered for a picnic") == [("person", 6)]
    assert parse_numeracy("four tents, two ships") == [("tent", 4), ("boat", 2)]
    assert parse_numeracy("a helicopter and two buses") == [("helicopter", 1), ("bus", 2)]


# ---------------------------------------------------------------- spatial formulas

def test_determine_position_directional():
    left, right = (0, 0, 10, 10), (20, 0, 30, 10)
    assert determine_position("on the left of", left, right) == 1.0
    assert determine_position("on the right of", left, right) == 0.0
    assert determine_position("on the right of", right, left) == 1.0
    above, below = (0, 0, 10, 10), (0, 20, 10, 30)
    assert determine_position("on the top of", above, below) == 1.0
    assert determine_position("on the bottom of", below, above) == 1.0
    assert determine_position("on the top of", below, above) == 0.0
    # mostly vertical offset does not count as 'left of'
    assert determine_position("on the left of", (0, 0, 10, 10), (5, 40, 15, 50)) == 0.0
    # overlap: centres 5 apart, intersection 50, union 150 → iou 1/3 ≥ 0.1 → 0.1 / (1/3) = 0.3
    assert determine_position("on the left of", (0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(0.3)
    assert determine_position(None, left, right) == 0.0


def test_determine_position_near():
    a = (0, 0, 10, 10)  # centre (5, 5)
    assert determine_position("near", a, (200, 100, 210, 110)) == 1.0  # |dy| = 100 < 150
    assert determine_position("next to", a, (200, 300, 210, 310)) == pytest.approx(150 / 300)


def test_unidet_distance_threshold():
    assert unidet_distance_threshold(479, 479) == pytest.approx(150)
    assert unidet_distance_threshold(958, 958) == pytest.approx(300)
    assert unidet_distance_threshold(512, 1024) == pytest.approx(150 * 1024 / 480)


def test_spatial_formula():
    d1, d2 = det("dog", (0, 0, 10, 10), 0.9), det("cat", (20, 0, 30, 10), 0.8)
    assert spatial_formula("on the left of", d1, d2) == pytest.approx(0.225 + 0.2 + 0.5)
    assert spatial_formula("on the right of", d1, d2) == 0.0  # 0.425 < 0.5
    assert spatial_formula("on the left of", d1, None) == 0.0  # 0.225 < 0.5
    assert spatial_formula("on the left of", None, None) == 0.0
    overlap = det("cat", (5, 0, 15, 10), 1.0)
    assert spatial_formula("on the left of", det("dog", (0, 0, 10, 10), 1.0), overlap) == pytest.approx(0.65)


def test_spatial_score_on_detections():
    dog, cat = det("dog", (10, 200, 110, 300), 0.9), det("cat", (300, 200, 400, 300), 0.8)
    assert spatial_score("a dog on the left of a cat", [cat, dog], (479, 479)) == pytest.approx(0.925)
    assert spatial_score("a cat on the left of a dog", [cat, dog], (479, 479)) == 0.0
    # far apart: centres (5, 5) and (400, 400) → 150/395
    far = [det("dog", (0, 0, 10, 10), 0.9), det("cat", (395, 395, 405, 405), 0.8)]
    assert spatial_score("a dog next to a cat", far, (479, 479)) == pytest.approx(0.425 + 0.5 * 150 / 395)
    # the best-scored dog is used; a dog under UniDet's 0.5 threshold is not seen
    weak = [det("dog", (300, 0, 310, 10), 0.45), cat, dog]
    assert spatial_score("a dog on the left of a cat", weak, (479, 479)) == pytest.approx(0.925)
    assert spatial_score("a dog on the left of a cat", [cat, det("dog", (0, 0, 9, 9), 0.4)], (479, 479)) == 0.0


# ---------------------------------------------------------------- numeracy formulas

def test_same_object_and_dedup():
    assert same_object((0, 0, 9, 9), (0, 0, 9, 8))  # 90 px fully inside a 100 px box
    assert not same_object((0, 0, 9, 9), (5, 0, 14, 9))  # iou 50/150
    dets = [det("dog", (0, 0, 9, 9), 0.8), det("dog", (0, 0, 9, 8), 0.9), det("cat", (0, 0, 9, 9), 0.7)]
    kept = dedup_detections(dets)
    assert [(d.cls, d.score) for d in kept] == [("dog", 0.9), ("cat", 0.7)]


def test_numeracy_formula():
    assert numeracy_formula([("dog", 2), ("cat", 1)], Counter(dog=2, cat=2)) == pytest.approx(0.5 + 0.25)
    assert numeracy_formula([("dog", 2)], Counter(cat=2)) == 0.0
    assert numeracy_formula([("dog", 2)], Counter(dog=1)) == 0.5
    assert numeracy_formula([], Counter(dog=1)) == 0.0


def test_numeracy_score_on_detections():
    dets = [det("dog", (0, 0, 10, 10)), det("dog", (50, 0, 60, 10)), det("dog", (0, 0, 10, 9), 0.8),
            det("cat", (100, 100, 120, 120)), det("cat", (200, 100, 220, 120), 0.3)]
    # duplicate dog dropped, low-score cat ignored: dogs 2/2, cat 1/1
    assert numeracy_score("two dogs and a cat", dets) == 1.0
    assert numeracy_score("three dogs and a cat", dets) == pytest.approx(0.25 + 0.5)
    assert numeracy_score("two dogs and a cat", dets, score_threshold=0.2) == pytest.approx(0.5 + 0.25)


# ---------------------------------------------------------------- complex

def test_three_in_one_and_attribute_stripping():
    assert three_in_one(0.3, 0.6, 0.9) == pytest.approx(0.6)
    assert three_in_one(0.3, 0.6, 0.9, "spatial") == pytest.approx(0.45)
    assert three_in_one(0.3, 0.6, 0.9, "action") == pytest.approx(0.6)
    assert strip_attributes("The fluffy red cat sat on a wooden chair.") == "the cat sat on a chair ."


class StubDetector:
    def __init__(self, dets):
        self.dets = dets

    def detect(self, images):
        return [list(self.dets) for _ in range(images.shape[0])]


class StubBlip:
    def prob_yes(self, images, questions):
        return [[0.5 if q == "the red dog?" else 0.8 for q in qs] for qs in questions]


class StubClip:
    def __init__(self):
        self.texts = []

    def __call__(self, images, texts):
        self.texts += texts
        return torch.full((len(texts),), 0.3)


def test_complex_scorer_combines_three_scores():
    prompt = "The red dog is on the left of the blue cat."
    dets = [det("dog", (10, 200, 110, 300), 0.9), det("cat", (300, 200, 400, 300), 0.8)]
    clip = StubClip()
    images = torch.zeros(1, 3, 479, 479)
    attr = 0.5 * 0.8 ** (len(noun_phrases(prompt)) - 1)
    s = T2ICompBenchScorer("complex", blip_path=StubBlip(), detector=StubDetector(dets), clip=clip)
    assert s.score(images, [prompt]) == [pytest.approx((attr + 0.925 + 0.3) / 3)]
    assert clip.texts == ["the dog is on the left of the cat ."]
    kinds = {"the red dog is on the left of the blue cat": "spatial"}
    s = T2ICompBenchScorer("complex", blip_path=StubBlip(), detector=StubDetector(dets), clip=clip,
                           complex_kinds=kinds)
    assert s.score(images, [prompt]) == [pytest.approx((attr + 0.925) / 2)]


def test_scorer_spatial_and_numeracy_with_detector():
    dets = [det("dog", (10, 200, 110, 300), 0.9), det("cat", (300, 200, 400, 300), 0.8)]
    images = torch.zeros(2, 3, 479, 479)
    s = T2ICompBenchScorer("spatial", detector=StubDetector(dets))
    assert s.score(images, ["a dog on the left of a cat", "a cat on the left of a dog"]) == [
        pytest.approx(0.925), 0.0]
    s = T2ICompBenchScorer("numeracy", detector=StubDetector(dets))
    assert s.score(images, ["one dog and one cat", "two dogs"]) == [1.0, 0.5]


def test_scorer_requirements():
    with pytest.raises(ValueError, match="--detector"):
        T2ICompBenchScorer("spatial")
    with pytest.raises(ValueError, match="--blip"):
        T2ICompBenchScorer("color", detector=StubDetector([]))
    with pytest.raises(ValueError, match="depth model"):
        T2ICompBenchScorer("3d_spatial")
    with pytest.raises(ValueError, match="unknown T2I-CompBench category"):
        T2ICompBenchScorer("colour")
    with pytest.raises(ValueError, match="--blip"):
        BlipVqa("/nonexistent/blip-folder")


def test_hub_id_refused_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        BlipVqa("Salesforce/blip-vqa-capfilt-large")


# ---------------------------------------------------------------- tiny random BLIP, end to end

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "yes", "no", "a", "red", "blue", "green", "car", "dog",
         "bench", "bowl", "and", "?", "[DEC]"]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    path = tmp_path_factory.mktemp("blip")
    (path / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tok = BertTokenizer(str(path / "vocab.txt"), bos_token="[DEC]")
    torch.manual_seed(0)
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64, bos_token_id=WORDS.index("[DEC]"),
                         pad_token_id=0, sep_token_id=3),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           image_size=32, patch_size=8))
    BlipForQuestionAnswering(cfg).save_pretrained(path)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok
                  ).save_pretrained(path)
    (path / "vocab.txt").unlink()
    return path


def test_tiny_blip_scores_color_prompts(tiny_blip):
    scorer = T2ICompBenchScorer("color", blip_path=tiny_blip)
    torch.manual_seed(1)
    images = torch.rand(2, 3, 64, 64)
    prompts = ["a red car and a blue dog", "a green bench and a blue bowl"]
    scores = scorer.score(images, prompts)
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    probs = scorer.blip.prob_yes(images, [blip_questions(p) for p in prompts])
    assert [len(p) for p in probs] == [2, 2]
    assert scores == [pytest.approx(math.prod(p)) for p in probs]
    # batching and padding do not change an image's answer
    alone = scorer.blip.prob_yes(images[1:], [["a green bench?"]])
    assert alone[0][0] == pytest.approx(probs[1][0], abs=1e-5)
