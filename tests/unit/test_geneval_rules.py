"""GenEval decision rules on constructed detections (hand-computed geometry), plus the real metadata file."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from maskfocus_cli.bench.detection import Detection
from maskfocus_cli.bench.geneval import (TAG_TITLES, GenEvalThresholds, ImageResult, evaluate_batch,
                                         evaluate_image, fill_colors, kept_detections, relative_position,
                                         summarize, validate_metadata)

GENEVAL_FILE = Path(__file__).parents[2] / "../shared/data/geneval/evaluation_metadata.jsonl"


def det(cls: str, x0: float = 0, y0: float = 0, size: float = 10, score: float = 1.0,
        color: str | None = "red") -> Detection:
    return Detection(cls=cls, box=(x0, y0, x0 + size, y0 + size), score=score, color=color)


def meta(tag: str, include: list[dict], exclude: list[dict] | None = None) -> dict:
    m = {"tag": tag, "include": include, "prompt": f"p-{tag}"}
    if exclude:
        m["exclude"] = exclude
    return m


# ------------------------------------------------------------------ relative position
def test_relative_position_four_relations_hand_computed():
    b = (20.0, 20.0, 30.0, 30.0)
    # offset (-20, 0), sizes 10+10 -> shrink 2 -> dx = -18/20 = -0.9
    assert relative_position((0, 20, 10, 30), b) == {"left of"}
    assert relative_position((40, 20, 50, 30), b) == {"right of"}
    assert relative_position((20, 0, 30, 10), b) == {"above"}
    assert relative_position((20, 40, 30, 50), b) == {"below"}
    # diagonal: offset (-20, -20) -> each component -18 / 28.28 = -0.636
    assert relative_position((0, 0, 10, 10), b) == {"left of", "above"}
    # offset (-20, -15): dx = -18/25 = -0.72, dy = -13/25 = -0.52 -> both; (-20, -14): dy = -12/24.4 = -0.49
    assert relative_position((0, 5, 10, 15), b) == {"left of", "above"}
    assert relative_position((0, 6, 10, 16), b) == {"left of"}


def test_position_shrink_makes_near_touching_objects_ambiguous():
    a, b = (0, 0, 40, 40), (5, 0, 45, 40)  # offset -5 < 0.1 * (40 + 40) = 8
    assert relative_position(a, b, thr=0.0) == {"left of"}
    assert relative_position(a, b) == set()
    # shrink 0.1*(10+10)=2 of an offset of 4 -> 2/4 = 0.5, not > 0.5
    assert relative_position((0, 0, 10, 10), (4, 0, 14, 10)) == set()
    assert relative_position((0, 0, 10, 10), (4.2, 0, 14.2, 10)) == {"left of"}


# ----------------------------------------------------------------------- clauses
def test_single_object_and_fewer_boxes_than_count():
    m = meta("single_object", [{"class": "circle", "count": 1}])
    assert evaluate_image([det("circle")], m).correct
    r = evaluate_image([det("square")], m)
    assert not r.correct and r.reason == "expected circle>=1, found 0"
    r = evaluate_image([det("circle")], meta("two_object", [{"class": "circle", "count": 1},
                                                             {"class": "cross", "count": 1}]))
    assert not r.correct and r.reason == "expected cross>=1, found 0"


def test_counting_with_exclude():
    m = meta("counting", [{"class": "circle", "count": 2}], [{"class": "circle", "count": 3}])
    two = [det("circle", 0), det("circle", 20)]
    assert evaluate_image(two, m).correct
    r = evaluate_image(two + [det("circle", 40)], m)
    assert not r.correct and r.reason == "expected circle<3, found 3"
    r = evaluate_image(two[:1], m)
    assert not r.correct and r.reason == "expected circle>=2, found 1"
    assert evaluate_image(two + [det("square", 40)], m).correct  # other classes don't count


def test_colour_mismatch_and_colour_of_top_scored_boxes_only():
    m = meta("colors", [{"class": "circle", "count": 1, "color": "red"}])
    assert evaluate_image([det("circle", color="red")], m).correct
    r = evaluate_image([det("circle", color="blue")], m)
    assert not r.correct and r.reason == "expected red circle>=1, found 0 red; and 1 blue"
    # colour is checked on the top-`count` boxes only: the best circle is blue
    r = evaluate_image([det("circle", score=0.5, color="red"), det("circle", 20, score=0.95, color="blue")], m)
    assert not r.correct
    m2 = meta("color_attr", [{"class": "circle", "count": 1, "color": "red"},
                             {"class": "square", "count": 1, "color": "white"}])
    assert evaluate_image([det("circle", color="red"), det("square", 20, color="white")], m2).correct
    assert not evaluate_image([det("circle", color="white"), det("square", 20, color="red")], m2).correct


def test_missing_colour_raises_and_fill_colors_asks_detector():
    m = meta("colors", [{"class": "circle", "count": 1, "color": "red"}])
    with pytest.raises(ValueError, match="classify_colors"):
        evaluate_image([det("circle", color=None)], m)

    class Fake:
        calls = 0

        def detect(self, images):
            return [[det("circle", color=None)] for _ in range(images.shape[0])]

        def classify_colors(self, images, detections, colors):
            Fake.calls += 1
            assert "red" in colors and len(colors) == 10
            return [[Detection(d.cls, d.box, d.score, "red") for d in ds] for ds in detections]

    (res,) = evaluate_batch(Fake(), torch.zeros(1, 3, 8, 8), [m])
    assert res.correct and Fake.calls == 1
    coloured = [[det("circle")]]
    assert fill_colors(Fake(), torch.zeros(1, 3, 8, 8), coloured) is coloured and Fake.calls == 1


@pytest.mark.parametrize("rel,x0,y0", [("left of", 0, 20), ("right of", 40, 20), ("above", 20, 0),
                                       ("below", 20, 40)])
def test_each_relation_passes_only_when_it_holds(rel, x0, y0):
    m = meta("position", [{"class": "square", "count": 1},
                          {"class": "circle", "count": 1, "position": [rel, 0]}])
    target = det("square", 20, 20)
    assert evaluate_image([target, det("circle", x0, y0)], m).correct
    mirrored = det("circle", 40 - x0, 40 - y0)  # reflect through the target's centre
    r = evaluate_image([target, mirrored], m)
    assert not r.correct and r.reason.startswith(f"expected circle {rel} target, found")


def test_position_needs_a_matched_target_group():
    m = meta("position", [{"class": "square", "count": 1, "color": "blue"},
                          {"class": "circle", "count": 1, "position": ["left of", 0]}])
    r = evaluate_image([det("square", 20, 20, color="red"), det("circle", 0, 20)], m)
    assert not r.correct and "no target for circle to be left of" in r.reason.splitlines()


def test_score_threshold_is_strict_and_counting_uses_09():
    single = meta("single_object", [{"class": "circle", "count": 1}])
    assert not evaluate_image([det("circle", score=0.3)], single).correct
    assert evaluate_image([det("circle", score=0.31)], single).correct
    counting = meta("counting", [{"class": "circle", "count": 2}], [{"class": "circle", "count": 3}])
    two_hi = [det("circle", 0, score=0.95), det("circle", 20, score=0.91)]
    assert evaluate_image(two_hi, counting).correct
    assert not evaluate_image([det("circle", 0, score=0.95), det("circle", 20, score=0.85)], counting).correct
    # a 0.85 third circle is below the counting threshold, so the exclude clause ignores it
    assert evaluate_image(two_hi + [det("circle", 40, score=0.85)], counting).correct
    # ...but it is kept for other tags
    assert len(kept_detections(two_hi + [det("circle", 40, score=0.85)], "two_object")["circle"]) == 3
    loose = GenEvalThresholds(counting_score=0.8)
    assert not evaluate_image(two_hi + [det("circle", 40, score=0.85)], counting, loose).correct


def test_max_objects_cap():
    m = meta("counting", [{"class": "circle", "count": 2}], [{"class": "circle", "count": 17}])
    many = [det("circle", 12 * i, score=1.0 - i * 0.001) for i in range(17)]
    assert evaluate_image(many, m).correct  # capped at 16 < 17
    r = evaluate_image(many, m, GenEvalThresholds(max_objects=20))
    assert not r.correct and r.reason == "expected circle<17, found 17"
    kept = kept_detections(many, "counting")["circle"]
    assert len(kept) == 16 and [d.score for d in kept] == sorted((d.score for d in many), reverse=True)[:16]


def test_result_carries_tag_prompt_and_json_detections():
    m = meta("single_object", [{"class": "circle", "count": 1}])
    r = evaluate_image([det("circle", 3, 4, score=0.5)], m)
    assert (r.tag, r.prompt, r.correct, r.reason) == ("single_object", "p-single_object", True, "")
    assert r.detections == {"circle": [{"class": "circle", "box": [3.0, 4.0, 13.0, 14.0], "score": 0.5,
                                        "color": "red"}]}
    json.dumps(r.to_json())


@pytest.mark.parametrize("bad", [
    {"include": [{"class": "circle", "count": 1}]},
    {"tag": "position", "include": [{"class": "circle", "count": 1, "position": ["left of", 0]}]},
    {"tag": "position", "include": [{"class": "a", "count": 1},
                                    {"class": "b", "count": 1, "position": ["near", 0]}]},
    {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "teal"}]},
    {"tag": "single_object", "include": [{"class": "circle"}]},
])
def test_malformed_metadata_is_rejected(bad):
    with pytest.raises(ValueError):
        evaluate_image([], bad)


# ----------------------------------------------------------------------- summary
def test_summary_is_unweighted_mean_of_tag_accuracies():
    res = [ImageResult(True, "", "single_object", "a"), ImageResult(True, "", "single_object", "a"),
           ImageResult(True, "", "counting", "b"), ImageResult(False, "x", "counting", "b"),
           ImageResult(False, "x", "counting", "c"), ImageResult(False, "x", "counting", "c")]
    s = summarize(res)
    assert s["single_object"] == 1.0 and s["counting"] == 0.25
    assert s["overall"] == pytest.approx(0.625)  # not the image accuracy 3/6
    assert s["image_accuracy"] == pytest.approx(0.5)
    assert s["counts"] == {"single_object": {"correct": 2, "total": 2}, "counting": {"correct": 1, "total": 4}}
    assert (s["prompts"], s["prompt_accuracy"]) == (3, pytest.approx(2 / 3))
    assert "position" not in s
    # pass@n: a prompt passes if any of its images is correct (b: one of two; c: none)
    assert s["pass_at_n"] == {"single_object": 1.0, "counting": 0.5, "overall": pytest.approx(0.75)}
    assert s["images_per_row"] == 2
    assert list(TAG_TITLES.values()) == ["Single", "Two", "Counting", "Colors", "Position", "Color attr."]


# ------------------------------------------------------------ real GenEval metadata
def _satisfying(m: dict) -> list[Detection]:
    """Detections that satisfy a metadata row: reference in the middle, subject placed by relation."""
    spots = {"left of": (0, 40), "right of": (80, 40), "above": (40, 0), "below": (40, 80)}
    out = []
    for i, c in enumerate(m["include"]):
        for k in range(c["count"]):
            if "position" in c:
                x, y = spots[c["position"][0]]
            else:
                x, y = (40, 40) if i == 0 and k == 0 else (200 + 30 * (i * 5 + k), 200)
            out.append(det(c["class"], x, y, size=20, color=c.get("color", "red")))
    return out


def test_real_geneval_metadata_is_understood():
    if not GENEVAL_FILE.is_file():
        pytest.skip("GenEval metadata not available")
    rows = [json.loads(line) for line in GENEVAL_FILE.read_text().splitlines() if line.strip()]
    assert len(rows) == 553
    assert Counter(r["tag"] for r in rows) == {"single_object": 80, "two_object": 99, "counting": 80,
                                               "colors": 94, "position": 100, "color_attr": 100}
    results = []
    for r in rows:
        validate_metadata(r)
        ok = evaluate_image(_satisfying(r), r)
        assert ok.correct, (r["prompt"], ok.reason)
        empty = evaluate_image([], r)
        assert not empty.correct and empty.reason.startswith(f"expected {r['include'][0]['class']}>=")
        results += [ok, empty]
    s = summarize(results)
    assert s["overall"] == pytest.approx(0.5) and s["prompts"] == len({(r["tag"], r["prompt"]) for r in rows})


def test_pass_at_n_counts_each_metadata_row_once_even_when_prompt_texts_repeat():
    # two rows of the same prompt (GenEval repeats rows; each has its own images): one passes, one does not
    res = [ImageResult(False, "x", "counting", "two cats", prompt_index=0),
           ImageResult(True, "", "counting", "two cats", prompt_index=0),
           ImageResult(False, "x", "counting", "two cats", prompt_index=1),
           ImageResult(False, "x", "counting", "two cats", prompt_index=1),
           ImageResult(True, "", "colors", "a red cat", prompt_index=2)]
    s = summarize(res)
    assert s["pass_at_n"] == {"counting": 0.5, "colors": 1.0, "overall": 0.75}
    assert s["images_per_row"] is None  # rows of 2, 2 and 1 images
    assert s["prompt_accuracy"] == 1.0  # GenEval's prompt accuracy still groups by text
