"""Recipe loading: strict keys, types, ranges, base inheritance, --set overrides."""

import dataclasses

import pytest

from maskfocus_cli.config import ConfigError, Recipe, explain, load_recipe


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_values(tmp_path):
    r = load_recipe(write(tmp_path, "r.yaml", "train:\n  lr: 1e-5\n  group_size: 6\nsampler:\n  steps: 32\n"))
    assert r.train.lr == 1e-5 and r.train.group_size == 6 and r.sampler.steps == 32
    assert r.critical.selector == "info-gain"
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.train.lr = 1.0


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "bad.yaml", "train:\n  lrr: 1e-5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'train\.lrr'"):
        load_recipe(p)


def test_wrong_type_and_range(tmp_path):
    with pytest.raises(ConfigError, match="train.group_size.*integer"):
        load_recipe(write(tmp_path, "a.yaml", "train:\n  group_size: two\n"))
    with pytest.raises(ConfigError, match="sampler.steps.*minimum"):
        load_recipe(write(tmp_path, "b.yaml", "sampler:\n  steps: 0\n"))
    with pytest.raises(ConfigError, match="critical.selector"):
        load_recipe(write(tmp_path, "c.yaml", "critical:\n  selector: best\n"))


def test_base_inheritance_and_overrides(tmp_path):
    write(tmp_path, "base.yaml", "train:\n  lr: 1e-4\n  iterations: 50\nsampler:\n  steps: 8\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\ntrain:\n  lr: 2e-6\n")
    r = load_recipe(child, ["train.iterations=7", "critical.k=2", "sampler.schedule=linear"])
    assert (r.train.lr, r.train.iterations, r.sampler.steps) == (2e-6, 7, 8)
    assert r.critical.k == 2 and r.sampler.schedule == "linear"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_recipe(child, ["train.lr"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_recipe(child, ["train.nope=1"])


def test_rewards_list(tmp_path):
    r = load_recipe(write(tmp_path, "r.yaml", "rewards:\n  - name: clip\n    weight: 0.5\n  - shapes-geneval\n"))
    assert [(c.name, c.weight) for c in r.rewards] == [("clip", 0.5), ("shapes-geneval", 1.0)]


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(write(tmp_path, "x.yaml", "train: [\n"))
    with pytest.raises(ConfigError, match=r"bad.yaml line 3: not valid YAML \(.*"):
        load_recipe(write(tmp_path, "bad.yaml", "train:\n  lr: 1\n lr2: 2\n"))
    child = write(tmp_path, "child.yaml", "base: shapes-maskfok.yaml\n")
    with pytest.raises(ConfigError, match=r"child.yaml: its base: recipe .*shapes-maskfok.yaml was not found"):
        load_recipe(child)


def test_every_field_has_help():
    rows = explain(Recipe)
    assert rows and all(help_ for _, _, help_ in rows)


def test_keep_last_zero_keeps_every_checkpoint(tmp_path):
    from pathlib import Path

    from maskfocus_cli.engine.run_folder import stale_checkpoints
    assert load_recipe(write(tmp_path, "k.yaml", "output:\n  keep_last: 0\n")).output.keep_last == 0
    with pytest.raises(ConfigError, match="output.keep_last.*minimum"):
        load_recipe(write(tmp_path, "n.yaml", "output:\n  keep_last: -1\n"))
    dirs = [Path(f"step-{n}") for n in (1, 2, 3, 4)]
    assert stale_checkpoints(dirs, 2) == dirs[:2]
    assert stale_checkpoints(dirs, 4) == []
    assert stale_checkpoints(dirs, 9) == []
    assert stale_checkpoints(dirs, 0) == []


def test_every_field_of_every_shipped_recipe_is_commented():
    import re
    from pathlib import Path
    recipes = sorted((Path(__file__).parents[2] / "recipes").glob("*.yaml"))
    assert len(recipes) >= 6
    bare = [f"{p.name}:{i}: {line.strip()}" for p in recipes
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.match(r"^\s*(- )?[a-z_]+:\s*[^\s#]", line) and "#" not in line]
    assert not bare, "recipe fields without a comment:\n" + "\n".join(bare)


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    p = write(tmp_path, "dup.yaml", "train:\n  lr: 1e-5\n  lr: 2e-5\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml line 3: key 'lr' is given twice"):
        load_recipe(p)


@pytest.mark.parametrize("betas, message", [("[0.9, foo]", r"train\.betas\[1\]: expected a number"),
                                            ("[1.5, 0.9]", r"train\.betas\[0\]: 1\.5 is outside 0"),
                                            ("[0.9, .nan]", r"train\.betas.*not a finite number")])
def test_betas_are_two_numbers_in_range(tmp_path, betas, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(write(tmp_path, "b.yaml", "train:\n  lr: 1e-5\n"), [f"train.betas={betas}"])
    assert load_recipe(write(tmp_path, "ok.yaml", "train:\n  betas: [0.9, 0.95]\n")).train.betas == (0.9, 0.95)


def test_a_resumed_run_may_move_its_reward_server_but_not_change_what_is_scored():
    from maskfocus_cli.engine.run_folder import recipe_changes
    http = {"name": "http", "weight": 1.0, "options": {"url": "http://a:8765/", "timeout": 60, "retries": 3}}
    saved = {"train": {"lr": 1e-4}, "rewards": [http]}
    moved = {"train": {"lr": 1e-4}, "rewards": [{**http, "options": {"url": "http://b:9000/", "timeout": 120,
                                                                      "retries": 5}}]}
    assert recipe_changes(saved, moved) == []
    reweighted = {"train": {"lr": 1e-4}, "rewards": [{**http, "weight": 2.0}]}
    assert recipe_changes(saved, reweighted) and "rewards" in recipe_changes(saved, reweighted)[0]
    other = {"train": {"lr": 1e-4}, "rewards": [{"name": "clip", "weight": 1.0, "options": {"url": "x"}}]}
    assert recipe_changes({**other}, {**other, "rewards": [{"name": "clip", "weight": 1.0, "options": {}}]})


def test_set_reaches_into_a_list_by_position(tmp_path):
    p = write(tmp_path, "r.yaml", "rewards:\n  - name: hpsv2\n    options: {weights: /path/to/x.pt, arch: ViT-H-14}\n"
                                  "  - brightness\n")
    r = load_recipe(p, ["rewards.0.options.weights=/models/hps.pt", "rewards.1.weight=0.5"])
    assert r.rewards[0].options == {"weights": "/models/hps.pt", "arch": "ViT-H-14"}  # the other option kept
    assert (r.rewards[1].name, r.rewards[1].weight) == ("brightness", 0.5)
    with pytest.raises(ConfigError, match=r"--set rewards\.2\.weight: '2' is not a position in that list \(0…1\)"):
        load_recipe(p, ["rewards.2.weight=1"])


def test_yaml_merge_keys_still_work_and_may_be_overridden(tmp_path):
    # a merged key overridden by one written beside it is not "given twice"
    p = write(tmp_path, "m.yaml", "train:\n  <<: {lr: 1.0e-5, group_size: 6}\n  lr: 2.0e-5\n")
    r = load_recipe(p)
    assert (r.train.lr, r.train.group_size) == (2e-5, 6)


def test_set_with_nothing_after_the_equals_sign_is_the_empty_string(tmp_path):
    """`--set sampler.negative_prompt=` means "none"; YAML alone would read null, which means the family default."""
    r = load_recipe(write(tmp_path, "r.yaml", "train: {lr: 1.0e-4}\n"), ["sampler.negative_prompt=",
                                                                       "eval_sampler={steps: 4}"])
    assert r.sampler.negative_prompt == ""
    nulled = load_recipe(write(tmp_path, "s.yaml", "{}\n"), ["sampler.negative_prompt=null"])
    assert nulled.sampler.negative_prompt is None


def test_a_bare_no_is_the_choice_no_not_false(tmp_path):
    """`mixed_precision: no` and `--set train.mixed_precision=no` are read by YAML 1.1 as false."""
    r = load_recipe(write(tmp_path, "r.yaml", "train: {mixed_precision: no}\n"), [])
    assert r.train.mixed_precision == "no"
    r = load_recipe(write(tmp_path, "s.yaml", "train: {mixed_precision: bf16}\n"), ["train.mixed_precision=no"])
    assert r.train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="expected a string, got False"):  # where "no" is not a choice
        load_recipe(write(tmp_path, "t.yaml", "sampler: {negative_prompt: no}\n"), [])


def test_a_run_saved_before_a_field_existed_resumes_as_if_it_held_the_default():
    from maskfocus_cli.config import Recipe, to_dict
    from maskfocus_cli.engine.run_folder import recipe_changes
    now = to_dict(Recipe())
    saved = {**now, "train": {k: v for k, v in now["train"].items() if k != "weight_decay_on"}}
    assert recipe_changes(saved, now) == []
    exempt = {**now, "train": {**now["train"], "weight_decay_on": "matrices"}}
    assert recipe_changes(saved, exempt) == ["train.weight_decay_on: 'all' → 'matrices'"]
