"""Exact shapes detector: components by colour, shape by template, on renders and hand-made images."""

from __future__ import annotations

import random

import pytest
import torch

from maskfocus_cli.bench.detection import Detection
from maskfocus_cli.bench.geneval import relative_position
from maskfocus_cli.shapes import world
from maskfocus_cli.shapes.detector import ShapesDetector, label_components
from maskfocus_cli.shapes.render import render_batch, shape_mask

BG = torch.tensor(world.BACKGROUND_RGB, dtype=torch.float32).view(3, 1, 1) / 255


def _canvas(b: int = 1) -> torch.Tensor:
    return BG.expand(b, 3, 64, 64).clone()


def _paint(img: torch.Tensor, color: str, y0: int, y1: int, x0: int, x1: int) -> None:
    img[:, y0:y1, x0:x1] = torch.tensor(world.COLOR_RGB[color], dtype=torch.float32).view(3, 1, 1) / 255


def _expected(scene: world.Scene) -> list[tuple]:
    return sorted((o.shape, o.color, tuple(float(v) for v in o.box)) for o in scene.objects)


def _got(dets: list[Detection]) -> list[tuple]:
    return sorted((d.cls, d.color, d.box) for d in dets)


def test_exact_on_many_random_scenes():
    rng = random.Random(0)
    scenes = [world.random_scene(rng) for _ in range(300)]
    dets = ShapesDetector().detect(render_batch(scenes))
    for s, d in zip(scenes, dets):
        assert _got(d) == _expected(s)
        assert all(x.score == 1.0 for x in d)
        # relations between detected boxes are those between the scene's boxes
        for a, b in zip(s.objects, s.objects[1:]):
            da = next(x for x in d if x.box == tuple(float(v) for v in a.box))
            db = next(x for x in d if x.box == tuple(float(v) for v in b.box))
            assert relative_position(da.box, db.box) == relative_position(a.box, b.box)


def test_every_shape_colour_and_size_is_recognised():
    scenes = [world.Scene((world.ShapeObject(s, c, 2, 3, z),))
              for s in world.SHAPES for c in world.COLORS for z in world.SIZES]
    dets = ShapesDetector().detect(render_batch(scenes))
    assert [_got(d) for d in dets] == [_expected(s) for s in scenes]


def test_templates_are_distinct_and_touch_their_box():
    for size in (16, 24):
        masks = [shape_mask(s, size, size) for s in world.SHAPES]
        for m in masks:
            assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()
        for i in range(len(masks)):
            for j in range(i + 1, len(masks)):
                assert not torch.equal(masks[i], masks[j])


def test_label_components_hand_computed():
    c = torch.tensor([[[0, 0, -1, 1],
                       [-1, -1, 0, 1],
                       [2, -1, -1, -1],
                       [2, 0, -1, 0]]])
    lab = label_components(c)
    groups = {}
    for (y, x) in [(0, 0), (0, 1), (1, 2), (0, 3), (1, 3), (2, 0), (3, 0), (3, 1), (3, 3)]:
        groups.setdefault(int(lab[0, y, x]), []).append((y, x))
    # (0,0),(0,1),(1,2) join diagonally; class 1 column; class 2 column; two single zeros
    assert sorted(groups.values()) == [[(0, 0), (0, 1), (1, 2)], [(0, 3), (1, 3)], [(2, 0), (3, 0)],
                                       [(3, 1)], [(3, 3)]]
    assert (lab[c < 0] == 0).all() and (lab[c >= 0] > 0).all()


def test_label_components_long_snake_converges():
    c = torch.full((1, 32, 32), -1)
    c[0, ::2, :] = 0  # horizontal bars...
    c[0, 1::4, -1] = 0  # ...joined alternately at the right
    c[0, 3::4, 0] = 0  # ...and at the left: one long snake
    lab = label_components(c)
    assert lab[c >= 0].unique().numel() == 1


def test_malformed_square_scores_below_one():
    img = _canvas()
    _paint(img[0], "green", 8, 32, 8, 32)  # 3x3-patch square...
    img[0, :, 24:32, 24:32] = BG  # ...missing its bottom-right patch
    (d,) = ShapesDetector().detect(img)
    assert len(d) == 1 and d[0].cls == "square" and d[0].box == (8.0, 8.0, 32.0, 32.0)
    assert d[0].score == pytest.approx(512 / 576)


def test_rectangle_is_a_square_scaled_by_its_aspect():
    img = _canvas()
    _paint(img[0], "blue", 0, 16, 0, 24)
    (d,) = ShapesDetector().detect(img)
    assert [(x.cls, x.color, x.box) for x in d] == [("square", "blue", (0.0, 0.0, 24.0, 16.0))]
    assert d[0].score == pytest.approx(16 / 24)


def test_noise_and_specks_are_ignored():
    img = _canvas()
    _paint(img[0], "red", 40, 43, 40, 43)  # 9-pixel speck of a palette colour
    img[0, :, 0:16, 0:16] = torch.tensor([0.5, 0.9, 0.9]).view(3, 1, 1)  # far from every palette colour
    _paint(img[0], "yellow", 16, 32, 16, 32)
    (d,) = ShapesDetector().detect(img)
    assert [(x.cls, x.color, x.box) for x in d] == [("square", "yellow", (16.0, 16.0, 32.0, 32.0))]


def test_touching_objects_split_by_colour_merge_within_colour():
    img = _canvas(2)
    _paint(img[0], "red", 0, 16, 0, 16)
    _paint(img[0], "white", 0, 16, 16, 32)
    _paint(img[1], "red", 0, 16, 0, 16)
    _paint(img[1], "red", 0, 16, 16, 32)
    d0, d1 = ShapesDetector().detect(img)
    assert _got(d0) == [("square", "red", (0.0, 0.0, 16.0, 16.0)), ("square", "white", (16.0, 0.0, 32.0, 16.0))]
    assert _got(d1) == [("square", "red", (0.0, 0.0, 32.0, 16.0))]
    assert d1[0].score == pytest.approx(0.5)


def test_empty_image_and_bad_input():
    assert ShapesDetector().detect(_canvas(3)) == [[], [], []]
    with pytest.raises(ValueError, match="shape"):
        ShapesDetector().detect(torch.zeros(3, 64, 64))


def test_classify_colors_returns_detections_unchanged():
    dets = ShapesDetector().detect(render_batch([world.random_scene(random.Random(5))]))
    assert ShapesDetector().classify_colors(torch.zeros(1, 3, 64, 64), dets, list(world.COLORS)) is dets
