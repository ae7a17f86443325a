"""The word-order probe (shapes/probes.py): captions altered by hand, and a bag-of-words model scores 0."""

import pytest
import torch

from maskfocus_cli.shapes import world
from maskfocus_cli.shapes.probes import altered_caption, word_order_probe


def test_altered_captions_by_hand():
    pos = world.parse_prompt("a photo of a circle left of a square")
    assert altered_caption({**pos, "tag": "position"}) == "a photo of a circle right of a square"
    col = world.parse_prompt("a photo of a red circle and a blue square")
    assert altered_caption({**col, "tag": "color_attr"}) == "a photo of a blue circle and a red square"
    with pytest.raises(ValueError, match="position, color_attr"):
        altered_caption(world.parse_prompt("a photo of three circles"))


def test_a_model_blind_to_word_order_scores_zero_and_one_that_reads_it_does_not(tiny_shapes_dir):
    from maskfocus_cli.models.loading import load_model
    adapter = load_model(f"shapes:{tiny_shapes_dir}", device="cpu")
    with torch.no_grad():  # distinct text positions: the swapped-colour caption reads differently
        adapter.transformer.text_pos.copy_(torch.randn_like(adapter.transformer.text_pos))
    reads = word_order_probe(adapter, "color_attr", n_prompts=6, scenes_per_prompt=1)
    assert reads["scenes"] == 6 and abs(reads["gap_nats"]) > 1e-4
    with torch.no_grad():  # no text positions: the prompt is a bag of words to the model
        adapter.transformer.text_pos.zero_()
    blind = word_order_probe(adapter, "color_attr", n_prompts=6, scenes_per_prompt=1)
    assert blind["gap_nats"] == pytest.approx(0.0, abs=1e-4)
