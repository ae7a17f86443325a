"""shapes-geneval reward: exact detector + GenEval rules, binary and partial credit."""

import random

import pytest
import torch

from maskfocus_cli.rewards import CompositeReward, RewardSpec, make_reward
from maskfocus_cli.rewards.shapes_geneval import _with_targets
from maskfocus_cli.shapes import world
from maskfocus_cli.shapes.render import render_batch
from maskfocus_cli.shapes.world import Scene, ShapeObject


def scene(*objs):
    """objs: (shape, colour, row, col[, size]) in token units."""
    return Scene(tuple(ShapeObject(o[0], o[1], o[2], o[3], o[4] if len(o) > 4 else 2) for o in objs))


def score(reward, scenes, prompts, metadata=None):
    return reward(render_batch(scenes), prompts, metadata or [None] * len(prompts)).tolist()


@pytest.fixture(scope="module")
def binary():
    return make_reward("shapes-geneval")


@pytest.fixture(scope="module")
def partial():
    return make_reward("shapes-geneval", partial=True)


def test_scenes_made_for_the_prompt_score_one(binary, partial):
    metas = world.make_metadata(12, seed=0)  # two rows of each of the six tags
    rng = random.Random(0)
    images = render_batch([world.scene_for(m, rng) for m in metas])
    prompts = [m["prompt"] for m in metas]
    assert binary(images, prompts, metas).tolist() == [1.0] * 12
    assert partial(images, prompts, metas).tolist() == [1.0] * 12
    # metadata parsed from the prompt when absent
    assert binary(images, prompts, [None] * 12).tolist() == [1.0] * 12


def test_wrong_attribute_binding(binary, partial):
    p = "a photo of a red circle and a blue square"
    s = scene(("circle", "red", 0, 0), ("square", "green", 4, 4))
    assert score(binary, [s], [p]) == [0.0]
    assert score(partial, [s], [p]) == [0.5]  # red circle ok, blue square missing


def test_counting_penalises_too_many_and_too_few(binary, partial):
    p = "a photo of three circles"  # include circle>=3, exclude circle>=4
    four = scene(*[("circle", c, r, k) for c, (r, k) in zip(["red", "blue", "green", "black"],
                                                             [(0, 0), (0, 3), (3, 0), (3, 3)])])
    two = scene(("circle", "red", 0, 0), ("circle", "blue", 5, 5))
    three = scene(("circle", "red", 0, 0), ("circle", "blue", 5, 5), ("circle", "pink", 0, 5))
    assert score(binary, [four, two, three], [p] * 3) == [0.0, 0.0, 1.0]
    assert score(partial, [four, two, three], [p] * 3) == [0.5, 0.5, 1.0]


def test_count_credit_grades_plain_count_clauses():
    graded = make_reward("shapes-geneval", partial=True, count_credit=True)
    p = "a photo of three circles"  # include circle>=3 (graded), exclude circle>=4
    one = scene(("circle", "red", 0, 0))
    two = scene(("circle", "red", 0, 0), ("circle", "blue", 5, 5))
    three = scene(("circle", "red", 0, 0), ("circle", "blue", 5, 5), ("circle", "pink", 0, 5))
    four = scene(*[("circle", c, r, k) for c, (r, k) in zip(["red", "blue", "green", "black"],
                                                             [(0, 0), (0, 3), (3, 0), (3, 3)])])
    got = score(graded, [scene(), one, two, three, four], [p] * 5)
    # (min(found, 3)/3 + [found < 4]) / 2
    assert got == pytest.approx([0.5, (1 / 3 + 1) / 2, (2 / 3 + 1) / 2, 1.0, 0.5])
    # count-1, colour and position clauses stay 0/1: same as plain partial credit
    s = scene(("circle", "red", 0, 0), ("square", "green", 4, 4))
    assert score(graded, [s], ["a photo of a red circle and a blue square"]) == [0.5]
    with pytest.raises(ValueError, match="partial: true"):
        make_reward("shapes-geneval", count_credit=True)


def test_position_clause_needs_relation_and_target(binary, partial):
    p = "a photo of a circle left of a square"  # include [square, circle left of #0]
    right = scene(("circle", "red", 3, 5), ("square", "blue", 3, 0))
    no_square = scene(("circle", "red", 3, 0))
    left = scene(("circle", "red", 3, 0), ("square", "blue", 3, 5))
    assert score(binary, [right, no_square, left], [p] * 3) == [0.0, 0.0, 1.0]
    # right: square ok, circle-left-of fails -> 1/2; no square: both fail ("no target") -> 0
    assert score(partial, [right, no_square, left], [p] * 3) == [0.5, 0.0, 1.0]


def test_empty_canvas_scores_zero(binary, partial):
    p = ["a photo of a triangle", "a photo of a cross and a diamond"]
    assert score(binary, [scene(), scene()], p) == [0.0, 0.0]
    assert score(partial, [scene(), scene()], p) == [0.0, 0.0]


def test_with_targets_reindexes_position_chain():
    inc = [{"class": "a", "count": 1}, {"class": "b", "count": 1, "position": ["above", 0]},
           {"class": "c", "count": 1, "position": ["left of", 1]}, {"class": "d", "count": 1}]
    assert _with_targets(inc, 3) == [inc[3]]
    assert _with_targets(inc, 2) == [inc[0], inc[1], {"class": "c", "count": 1, "position": ["left of", 1]}]
    chain = [{"class": "a", "count": 1}, {"class": "x", "count": 1},
             {"class": "c", "count": 1, "position": ["below", 0]}]
    assert _with_targets(chain, 2) == [chain[0], {"class": "c", "count": 1, "position": ["below", 0]}]
    assert inc[2]["position"] == ["left of", 1]  # input untouched


def test_composite_and_errors(binary):
    comp = CompositeReward([RewardSpec("shapes-geneval", 2.0)])
    out = comp(render_batch([scene(("square", "red", 0, 0))]), ["a photo of a square"], None)
    assert out.total.tolist() == [2.0] and out.components["shapes-geneval"].tolist() == [1.0]
    with pytest.raises(ValueError, match="unknown word"):
        binary(render_batch([scene()]), ["a photo of a dog"], [None])
    with pytest.raises(ValueError, match="unknown GenEval threshold"):
        make_reward("shapes-geneval", thresholds={"scroe": 0.5})
    with pytest.raises(ValueError, match="tag"):
        binary(render_batch([scene()]), ["x"], [{"include": []}])


def test_a_prompt_without_the_geneval_wording_names_the_reward_and_the_fix(binary):
    with pytest.raises(ValueError, match=r"shapes-geneval reward scores a prompt by its GenEval clauses: .*"
                                         r"'a red circle'.*include/exclude clauses"):
        score(binary, [scene(("circle", "red", 2, 2))], ["a red circle"])
