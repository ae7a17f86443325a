"""data.tag_weights → per-prompt draw weights (hand-computed)."""

import pytest

from maskfocus_cli.engine.data import load_prompt_source, prompt_weights

ROWS = [("a", {"tag": "counting"}), ("b", {"tag": "position"}), ("c", None), ("d", {"tag": "counting"})]


def test_uniform_when_not_given():
    assert prompt_weights(ROWS, {}) is None


def test_named_tags_scale_and_the_rest_weigh_one():
    assert prompt_weights(ROWS, {"counting": 3, "position": 0.5}) == [3.0, 0.5, 1.0, 3.0]
    assert prompt_weights(ROWS, {"position": 0}) == [1.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("weights, message", [
    ({"countin": 2}, "does not have"),
    ({"counting": -1}, "finite number >= 0"),
    ({"counting": "x"}, "finite number >= 0"),
    ({"counting": float("nan")}, "finite number >= 0"),
])
def test_bad_weights_name_the_problem(weights, message):
    with pytest.raises(ValueError, match=message):
        prompt_weights(ROWS, weights, "p.jsonl")


def test_all_zero_is_refused():
    rows = [("a", {"tag": "counting"})]
    with pytest.raises(ValueError, match="weight 0"):
        prompt_weights(rows, {"counting": 0})


def test_non_utf8_prompt_source_is_named(tmp_path):
    latin1 = tmp_path / "prompts.txt"
    latin1.write_bytes("a caf\xe9 photo\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"{latin1} is not UTF-8 text"):
        load_prompt_source(str(latin1))


def test_a_byte_order_mark_is_not_part_of_the_first_prompt(tmp_path, monkeypatch):
    import io
    import json
    from maskfocus_cli.bench.prompts import load_geneval_metadata
    from maskfocus_cli.cli.common import read_prompts
    bom = "\ufeff"
    txt = tmp_path / "p.txt"
    txt.write_text(bom + "a photo of a circle\na photo of a square\n", encoding="utf-8")
    assert [p for p, _ in load_prompt_source(str(txt))] == ["a photo of a circle", "a photo of a square"]
    assert read_prompts((), str(txt))[0] == ["a photo of a circle", "a photo of a square"]
    row = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(bom + json.dumps(row) + "\n", encoding="utf-8")
    assert load_geneval_metadata(jsonl) == [row]  # was "not valid JSON (Unexpected UTF-8 BOM)"
    assert load_prompt_source(str(jsonl))[0][0] == "a photo of a dog"
    monkeypatch.setattr("sys.stdin", io.StringIO(bom + "a photo of a circle\n"))
    assert read_prompts((), "-")[0] == ["a photo of a circle"]


def test_seed_room_counts_a_repeated_prompt_s_continued_seeds():
    from maskfocus_cli.cli.common import MAX_SEED, check_seed_room
    check_seed_room(MAX_SEED - 3, ["a", "b"], 4)  # two prompts × 4 images: seeds up to --seed + 3 (exactly MAX)
    check_seed_room(MAX_SEED, ["a"], 1)
    with pytest.raises(ValueError, match=r"run up to --seed \+ 7, above .*use --seed 9223372036854775800"):
        check_seed_room(MAX_SEED - 3, ["a", "a"], 4)  # the second listing continues at --seed + 4 … + 7
