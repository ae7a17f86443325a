"""bench/report.py: the papers' columns, summary I/O, run-vs-run deltas (hand-computed values)."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from maskfocus_cli.bench.report import (compare_table, deltas, metric_columns, pass_line, read_summary,
                                        sample_differences, summary_table, write_summary)


def geneval_summary(overall: float, **tags: float) -> dict:
    return {"bench": "geneval", "overall": overall, **tags, "counts": {t: {"correct": 1, "total": 2} for t in tags},
            "images": 8, "model": "shapes"}


def render(table) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(table)
    return console.export_text()


def test_geneval_columns_follow_the_paper_order_and_mark_missing_tags():
    s = geneval_summary(0.625, single_object=1.0, counting=0.25)
    cols = metric_columns(s)
    assert [c[1] for c in cols] == ["Overall", "Single", "Two", "Counting", "Colors", "Position", "Color attr."]
    assert [c[2] for c in cols] == [0.625, 1.0, None, 0.25, None, None, None]
    text = render(summary_table(s))
    assert "0.62" in text or "0.63" in text  # two decimals
    assert "1.00" in text and "0.25" in text and "-" in text


def test_t2i_columns_are_the_scored_categories_in_paper_order_with_four_decimals():
    s = {"bench": "t2i-compbench", "complex": 0.5, "color": 0.123456, "images": 20, "counts": {}}
    cols = metric_columns(s)
    assert [(c[0], c[1]) for c in cols] == [("color", "Color"), ("complex", "Complex")]
    text = render(summary_table(s))
    assert "0.1235" in text and "0.5000" in text
    other = {"bench": "t2i-compbench", "non_spatial": 0.3, "color": 0.1}
    assert [c[0] for c in metric_columns(s, also=("non_spatial",))] == ["color", "non_spatial", "complex"]
    d = deltas(s, other)
    assert d["color"] == pytest.approx(0.023456) and d["non_spatial"] is None and d["complex"] is None
    assert "Non-Spatial" in render(compare_table(s, other))


def test_deltas_are_current_minus_other_and_none_where_unscored():
    a = geneval_summary(0.5, single_object=0.75, position=0.25)
    b = geneval_summary(0.375, single_object=0.5, counting=0.25)
    d = deltas(a, b)
    assert d["overall"] == pytest.approx(0.125)
    assert d["single_object"] == pytest.approx(0.25)
    assert d["position"] is None and d["counting"] is None
    text = render(compare_table(a, b, ("trained", "base")))
    lines = [ln for ln in text.splitlines() if ln.strip()]
    row = {ln.split("│")[1].strip(): ln for ln in lines if ln.count("│") > 2}
    assert "+0.12" in row["Δ"] or "+0.13" in row["Δ"]
    assert "+0.25" in row["Δ"]
    assert "0.50" in row["trained"] and "0.38" in row["base"]


def test_compare_refuses_different_benches():
    with pytest.raises(ValueError, match="same --bench"):
        compare_table(geneval_summary(0.5), {"bench": "t2i-compbench", "color": 0.3})


def test_summary_round_trip_and_errors(tmp_path):
    s = geneval_summary(0.5, single_object=0.5)
    write_summary(tmp_path / "run" / "summary.json", s)
    assert read_summary(tmp_path / "run" / "summary.json") == s
    assert read_summary(tmp_path / "run") == s  # a run folder works too
    with pytest.raises(ValueError, match="not found"):
        read_summary(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match="not a JSON summary"):
        read_summary(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"overall": 1.0}))
    with pytest.raises(ValueError, match="no 'bench'"):
        read_summary(tmp_path / "other.json")


def test_unknown_bench_is_an_error():
    with pytest.raises(ValueError, match="unknown bench"):
        metric_columns({"bench": "coco"})


def test_markdown_table_with_deltas():
    from maskfocus_cli.bench.report import markdown_table
    tags = {"single_object": 1.0, "two_object": 0.5, "counting": 0.25, "colors": 0.75, "position": 0.0,
            "color_attr": 0.5}
    a = {"bench": "shapes", "overall": 0.5, "model": "after", **tags}
    b = {"bench": "shapes", "overall": 0.25, "model": "before", **{k: v / 2 for k, v in tags.items()}}
    md = markdown_table(a, "maskfocus evaluate --bench shapes", b)
    lines = md.splitlines()
    assert lines[2].startswith("| Run | Overall | Single | Two | Counting | Colors | Position | Color attr.")
    assert lines[4] == "| after | 0.50 | 1.00 | 0.50 | 0.25 | 0.75 | 0.00 | 0.50 |"
    assert lines[6] == "| Δ | +0.25 | +0.50 | +0.25 | +0.12 | +0.38 | +0.00 | +0.25 |"
    assert md.rstrip().endswith("`maskfocus evaluate --bench shapes`")


def test_markdown_rows_are_named_as_in_the_compare_table():
    from maskfocus_cli.bench.report import markdown_table
    a = {"bench": "shapes", "overall": 0.5, "images_dir": "EV1"}
    b = {"bench": "shapes", "overall": 0.25, "model": "shapes"}

    def names(md: str) -> list[str]:
        return [ln.split("|")[1].strip() for ln in md.splitlines() if ln.startswith("| ") and "Run" not in ln]

    def terminal(table) -> list[str]:
        return [ln.split("│")[1].strip() for ln in render(table).splitlines() if ln.count("│") > 2]

    for labels in (("RS1", "EV1"), None):
        assert names(markdown_table(a, None, b, labels)) == terminal(compare_table(a, b, labels))
    assert names(markdown_table(a, None, b, ("RS1", "EV1"))) == ["RS1", "EV1", "Δ"]
    assert names(markdown_table(a, None, b)) == ["EV1", "shapes", "Δ"]


def test_pass_line_names_n_and_every_tag_and_is_absent_for_one_image_per_prompt():
    s = geneval_summary(0.4, single_object=0.75, counting=0.05)
    s["pass_at_n"] = {"single_object": 1.0, "counting": 0.25, "overall": 0.625}
    s["images_per_row"] = 4
    assert pass_line(s) == ("pass@4 (a prompt passes if any of its 4 images is correct): "
                            "Overall 0.62 · Single 1.00 · Counting 0.25")
    s["images_per_row"] = None
    assert pass_line(s).startswith("pass@n (a prompt passes if any of its n images")
    s["images_per_row"] = 1
    assert pass_line(s) is None
    assert pass_line({"bench": "t2i-compbench", "color": 0.5}) is None


def test_sample_differences_name_what_the_delta_row_would_mix_in():
    sampler = {"steps": 16, "guidance_scale": 3.0}
    base = {"bench": "shapes", "images": 768, "prompts": 66, "images_per_row": 4, "seed": 0, "sampler": sampler}
    assert sample_differences({**base, "checkpoint": "step-500"}, base) == []  # another model, same samples
    assert sample_differences({**base, "seed": 1, "routing": True}, base) == ["seed 1 vs 0", "routing True vs False"]
    scored = {"bench": "shapes", "images": 768, "prompts": 66, "images_per_row": 4}  # --images: no sampler, seed
    assert sample_differences(scored, base) == []
    assert sample_differences({**scored, "images": 24}, base) == ["images 24 vs 768"]
