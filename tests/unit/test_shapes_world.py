"""Shapes world: vocabulary, GenEval-format prompts, splits and scenes that satisfy them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from maskfocus_cli.bench.geneval import evaluate_image, relative_position
from maskfocus_cli.shapes import world
from maskfocus_cli.shapes.detector import ShapesDetector
from maskfocus_cli.shapes.render import render, render_batch

GENEVAL_FILE = Path(__file__).parents[2] / "../shared/data/geneval/evaluation_metadata.jsonl"


def test_world_constants_are_geneval_compatible():
    geneval_colors = {"red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"}
    assert len(world.SHAPES) >= 5 and len(set(world.SHAPES)) == len(world.SHAPES)
    assert len(world.COLORS) >= 6 and set(world.COLORS) <= geneval_colors
    assert set(world.COLOR_RGB) == set(world.COLORS)
    assert world.BACKGROUND_RGB not in world.COLOR_RGB.values()
    assert world.RELATIONS == ("left of", "right of", "above", "below")
    assert world.GENEVAL_TAGS == ("single_object", "two_object", "counting", "colors", "position", "color_attr")
    palette = list(world.COLOR_RGB.values()) + [world.BACKGROUND_RGB]
    dists = [sum((a - b) ** 2 for a, b in zip(p, q)) ** 0.5 for i, p in enumerate(palette) for q in palette[i + 1:]]
    assert min(dists) > 100


def test_vocabulary_covers_every_prompt_form():
    vocab = world.vocabulary()
    assert len(vocab) == len(set(vocab)) and all(w == w.lower() for w in vocab)
    for w in ["a", "an", "photo", "of", "and", "two", "three", "four", "left", "right", "above", "below",
              "crosses", "circles"]:
        assert w in vocab
    rows = world.all_prompts("train") + world.all_prompts("heldout")
    for r in rows:
        assert set(r["prompt"].split()) <= set(vocab)


def test_tokenize_prompt_lowercases_and_strips_punctuation():
    assert world.tokenize_prompt("A photo of an Orange circle.") == ["a", "photo", "of", "an", "orange", "circle"]


def test_tokenize_prompt_rejects_unknown_word_naming_it():
    with pytest.raises(ValueError, match="'dog'") as e:
        world.tokenize_prompt("a photo of a dog")
    assert "circle" in str(e.value)  # lists valid words


def test_geneval_templates_by_hand():
    rows = {r["prompt"]: r for r in world.all_prompts("train") + world.all_prompts("heldout")}
    assert rows["a photo of three crosses"] == {
        "tag": "counting", "include": [{"class": "cross", "count": 3}],
        "exclude": [{"class": "cross", "count": 4}], "prompt": "a photo of three crosses"}
    assert rows["a photo of a cross above a diamond"] == {
        "tag": "position", "include": [{"class": "diamond", "count": 1},
                                       {"class": "cross", "count": 1, "position": ["above", 0]}],
        "prompt": "a photo of a cross above a diamond"}
    assert rows["a photo of an orange circle and a white square"]["include"] == [
        {"class": "circle", "count": 1, "color": "orange"}, {"class": "square", "count": 1, "color": "white"}]
    assert "a photo of a circle and a circle" not in rows  # two_object uses distinct classes
    assert "a photo of a red circle and a red square" not in rows  # color_attr uses distinct colours


def test_prompt_for_reproduces_real_geneval_prompts():
    if not GENEVAL_FILE.is_file():
        pytest.skip("GenEval metadata not available")
    rows = [json.loads(line) for line in GENEVAL_FILE.read_text().splitlines() if line.strip()]
    assert [r["prompt"] for r in rows] == [world.prompt_for(r) for r in rows]


def test_parse_prompt_inverts_the_generator():
    rows = world.all_prompts("train") + world.all_prompts("heldout")
    for r in rows:
        assert world.parse_prompt(r["prompt"]) == r
        assert world.prompt_for(r) == r["prompt"]


def test_parse_colour_position_and_colour_counting_forms():
    m = world.parse_prompt("a photo of a red circle left of a blue square")
    assert m == {"tag": "position",
                 "include": [{"class": "square", "count": 1, "color": "blue"},
                             {"class": "circle", "count": 1, "color": "red", "position": ["left of", 0]}],
                 "prompt": "a photo of a red circle left of a blue square"}
    m = world.parse_prompt("a photo of two green triangles")
    assert m == {"tag": "counting", "include": [{"class": "triangle", "count": 2, "color": "green"}],
                 "exclude": [{"class": "triangle", "count": 3}], "prompt": "a photo of two green triangles"}


@pytest.mark.parametrize("bad", ["photo of a circle", "a photo of circle", "a photo of a circles",
                                 "a photo of two circle", "a photo of a circle a square",
                                 "a photo of a circle and a square and", "a photo of a", ""])
def test_parse_prompt_rejects_malformed(bad):
    with pytest.raises(ValueError, match="prompt"):
        world.parse_prompt(bad)


def test_splits_partition_the_prompt_space_per_tag():
    train, held = world.all_prompts("train"), world.all_prompts("heldout")
    tp, hp = {r["prompt"] for r in train}, {r["prompt"] for r in held}
    assert not tp & hp and len(tp) == len(train) and len(hp) == len(held)
    for tag in world.GENEVAL_TAGS:
        n_t = len(world.all_prompts("train", [tag]))
        n_h = len(world.all_prompts("heldout", [tag]))
        assert n_h >= 1 and n_t >= 1
        assert abs(n_h / (n_t + n_h) - world.HELDOUT_FRACTION) < 0.11
    assert all(world.prompt_split(p) == "heldout" for p in hp)
    assert all(world.prompt_split(p) == "train" for p in tp)


def test_make_metadata_round_robin_deterministic_and_split_pure():
    rows = world.make_metadata(24, seed=3)
    assert [r["tag"] for r in rows] == list(world.GENEVAL_TAGS) * 4
    assert rows == world.make_metadata(24, seed=3)
    assert rows != world.make_metadata(24, seed=4)
    held = world.make_metadata(60, seed=0, split="heldout")
    assert all(world.prompt_split(r["prompt"]) == "heldout" for r in held)
    assert all(world.prompt_split(r["prompt"]) == "train" for r in world.make_metadata(60, seed=0))
    only = world.make_metadata(5, seed=0, tags=["position", "counting"])
    assert [r["tag"] for r in only] == ["position", "counting", "position", "counting", "position"]
    rows[0]["include"][0]["class"] = "mutated"  # callers own their copies
    assert world.make_metadata(24, seed=3)[0]["include"][0]["class"] != "mutated"


def test_make_metadata_uses_every_prompt_of_a_tag_before_repeating():
    held = world.all_prompts("heldout", ["counting"])  # 3 prompts
    rows = world.make_metadata(3 * len(held) + 1, seed=5, tags=["counting"], split="heldout")
    counts = {}
    for r in rows:
        counts[r["prompt"]] = counts.get(r["prompt"], 0) + 1
    # three full decks and one card of the fourth: each prompt 3 times, one of them 4 times
    assert sorted(counts.values()) == [3] * (len(held) - 1) + [4]
    firsts = [r["prompt"] for r in rows[:len(held)]]
    assert sorted(firsts) == sorted(r["prompt"] for r in held)


@pytest.mark.parametrize("kwargs", [{"split": "test"}, {"tags": ["spatial"]}])
def test_make_metadata_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        world.make_metadata(3, seed=0, **kwargs)


def _assert_valid_layout(scene: world.Scene) -> None:
    objs = scene.objects
    for o in objs:
        assert o.size in world.SIZES and 0 <= o.row <= world.GRID - o.size and 0 <= o.col <= world.GRID - o.size
    for i, a in enumerate(objs):
        for b in objs[i + 1:]:  # at least one empty token between any two objects
            apart = (a.row + a.size < b.row or b.row + b.size < a.row
                     or a.col + a.size < b.col or b.col + b.size < a.col)
            assert apart, (a, b)


def test_scene_for_satisfies_its_metadata_under_geneval_rules():
    rng = random.Random(0)
    metas = world.make_metadata(90, seed=0) + world.make_metadata(30, seed=1, split="heldout")
    extra = ["a photo of a red circle left of a blue square", "a photo of two green triangles",
             "a photo of four crosses", "a photo of two pink diamonds below a square"]
    metas += [world.parse_prompt(p) for p in extra]
    scenes = [world.scene_for(m, rng) for m in metas]
    dets = ShapesDetector().detect(render_batch(scenes))
    for m, s, d in zip(metas, scenes, dets):
        _assert_valid_layout(s)
        assert len(s.objects) == sum(c["count"] for c in m["include"])  # nothing extra
        res = evaluate_image(d, m)
        assert res.correct, (m["prompt"], res.reason)


def test_scene_for_positions_hold_with_margin():
    rng = random.Random(1)
    for rel in world.RELATIONS:
        m = world.parse_prompt(f"a photo of a circle {rel} a square")
        for _ in range(20):
            s = world.scene_for(m, rng)
            circle = next(o for o in s.objects if o.shape == "circle")
            square = next(o for o in s.objects if o.shape == "square")
            assert rel in relative_position(circle.box, square.box, thr=world.POSITION_MARGIN)


def test_scene_for_rejects_impossible_metadata():
    rng = random.Random(0)
    with pytest.raises(ValueError, match="dog"):
        world.scene_for({"tag": "single_object", "include": [{"class": "dog", "count": 1}]}, rng)
    with pytest.raises(ValueError, match="at most"):
        world.scene_for({"tag": "counting", "include": [{"class": "circle", "count": 5}]}, rng)


def test_random_scene_layouts_are_valid_and_varied():
    rng = random.Random(2)
    scenes = [world.random_scene(rng) for _ in range(200)]
    for s in scenes:
        _assert_valid_layout(s)
    assert {len(s.objects) for s in scenes} == {1, 2, 3, 4}
    assert {o.size for s in scenes for o in s.objects} == set(world.SIZES)


def test_render_paints_object_colour_inside_box_only():
    obj = world.ShapeObject("square", "red", row=1, col=2, size=2)
    img = render(world.Scene((obj,)))
    assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 64, 64)
    x0, y0, x1, y1 = obj.box
    assert (x0, y0, x1, y1) == (16, 8, 32, 24)
    red = list(world.COLOR_RGB["red"])
    assert img[:, y0:y1, x0:x1].permute(1, 2, 0).reshape(-1, 3).tolist() == [red] * 256
    outside = img.clone()
    outside[:, y0:y1, x0:x1] = 0
    bg = torch.tensor(world.BACKGROUND_RGB, dtype=torch.uint8)
    assert int((outside.permute(1, 2, 0) == bg).all(-1).sum()) == 64 * 64 - 256

