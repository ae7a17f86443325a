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
