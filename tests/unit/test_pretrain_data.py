"""The pretraining data's caption noise (engine/pretrain.py): what the base model is taught."""

import random

from maskfocus_cli.engine.pretrain import CAPTION_FIDELITY, noisy_scene_meta
from maskfocus_cli.shapes import world

COUNT = {"tag": "counting", "include": [{"class": "circle", "count": 3}],
         "exclude": [{"class": "circle", "count": 4}], "prompt": "a photo of three circles"}
POS = {"tag": "position", "include": [{"class": "square", "count": 1},
                                      {"class": "circle", "count": 1, "position": ["left of", 0]}],
       "prompt": "a photo of a circle left of a square"}


def test_full_fidelity_keeps_the_caption_scene():
    rng = random.Random(0)
    for meta in (COUNT, POS):
        assert noisy_scene_meta(meta, rng, {"counting": 1.0, "position": 1.0}) is meta


def test_zero_fidelity_always_shows_another_count_or_relation():
    rng = random.Random(0)
    counts, rels = set(), set()
    for _ in range(200):
        c = noisy_scene_meta(COUNT, rng, {"counting": 0.0})
        assert c["prompt"] == COUNT["prompt"] and c["include"][0]["class"] == "circle"
        counts.add(c["include"][0]["count"])
        p = noisy_scene_meta(POS, rng, {"position": 0.0})
        assert p["include"][0] == POS["include"][0] and p["include"][1]["position"][1] == 0
        rels.add(p["include"][1]["position"][0])
    assert counts == {1, 2, 4}
    assert rels == set(world.RELATIONS) - {"left of"}
    assert COUNT["include"][0]["count"] == 3 and POS["include"][1]["position"][0] == "left of"  # inputs untouched


def test_other_tags_are_never_perturbed_and_the_share_matches():
    rng = random.Random(1)
    row = world.all_prompts("train", ["color_attr"])[0]
    assert all(noisy_scene_meta(row, rng) is row for _ in range(50))
    kept = sum(noisy_scene_meta(COUNT, rng) is COUNT for _ in range(4000)) / 4000
    assert abs(kept - CAPTION_FIDELITY["counting"]) < 0.03
    for _ in range(50):  # every perturbed row still renders
        world.scene_for(noisy_scene_meta(POS, rng, {"position": 0.0}), rng)
        world.scene_for(noisy_scene_meta(COUNT, rng, {"counting": 0.0}), rng)


def test_check_fidelity_fills_defaults_and_rejects_bad_entries():
    import pytest

    from maskfocus_cli.engine.pretrain import check_fidelity
    assert check_fidelity({}) == CAPTION_FIDELITY
    assert check_fidelity({"counting": 1}) == {**CAPTION_FIDELITY, "counting": 1.0}
    for bad, match in (({"colors": 0.5}, "only counting, position"), ({"position": 1.5}, "between 0 and 1"),
                       ({"counting": "high"}, "between 0 and 1"), ({"counting": True}, "between 0 and 1")):
        with pytest.raises(ValueError, match=match):
            check_fidelity(bad)


def test_recipe_caption_fidelity_reaches_the_scene_stream(tmp_path):
    from maskfocus_cli.config import load_recipe
    from maskfocus_cli.engine.trainer import Trainer
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {spec: shapes}\ntrain: {algorithm: pretrain, iterations: 1, batch_size: 4}\n"
                      f"output: {{dir: {tmp_path / 'out'}}}\ndata: {{caption_fidelity: {{position: 1.0}}}}\n")
    trainer = Trainer(load_recipe(recipe))
    assert trainer.stream.fidelity == {**CAPTION_FIDELITY, "position": 1.0}


def test_pretrain_mix_scales_the_default_shares_and_rejects_bad_tags():
    import pytest

    from maskfocus_cli.engine.pretrain import TAG_MIX, pretrain_mix
    assert pretrain_mix(None) == TAG_MIX and pretrain_mix({}) == TAG_MIX
    mix = pretrain_mix({"position": 4, "colors": 0})
    assert mix == {**TAG_MIX, "position": TAG_MIX["position"] * 4, "colors": 0.0}
    with pytest.raises(ValueError, match="spatial"):
        pretrain_mix({"spatial": 2})
    with pytest.raises(ValueError, match="finite number"):
        pretrain_mix({"position": -1})


def test_recipe_tag_weights_reach_the_pretraining_stream(tmp_path):
    from maskfocus_cli.config import load_recipe
    from maskfocus_cli.engine.pretrain import TAG_MIX
    from maskfocus_cli.engine.trainer import Trainer
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {spec: shapes}\ntrain: {algorithm: pretrain, iterations: 1, batch_size: 4}\n"
                      f"output: {{dir: {tmp_path / 'out'}}}\ndata: {{tag_weights: {{position: 4}}}}\n")
    stream = Trainer(load_recipe(recipe)).stream
    assert dict(zip(stream.tags, stream.weights)) == {**TAG_MIX, "position": TAG_MIX["position"] * 4}
