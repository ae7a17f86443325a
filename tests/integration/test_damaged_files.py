"""Damaged files a user points at (trainer.json, config.json, recipes, --set, a reward that raises): each is
one line naming the file and the field, exit code 2, never a traceback, and never a run from nonsense."""

import json
import shutil

import pytest
from click.testing import CliRunner

from maskfocus_cli.cli import main

from test_train import recipe_file


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_shapes_dir):
    tmp = tmp_path_factory.mktemp("damaged")
    p = recipe_file(tmp, tiny_shapes_dir, out="run")
    res = CliRunner().invoke(main, ["train", str(p), "--set", "train.iterations=1", "--set", "data.num_eval_prompts=0"])
    assert res.exit_code == 0, res.output
    return tmp / "run" / "checkpoints" / "step-1", p, tiny_shapes_dir


def one_line_error(res, *needles):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()[-1:]) == 1
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(n in last for n in needles), last


@pytest.mark.parametrize("change, needles", [
    (lambda info: [1, 2], ("trainer.json holds a JSON list, not an object",)),
    (lambda info: None, ("trainer.json holds a JSON null",)),
    (lambda info: {k: v for k, v in info.items() if k != "iteration"}, ("has no 'iteration'",)),
    (lambda info: {**info, "iteration": "abc"}, ("'iteration' is 'abc', not a whole number",)),
    (lambda info: {**info, "iteration": -5}, ("'iteration' is -5, below 0",)),
    (lambda info: {**info, "algorithm": "nope"}, ("unknown algorithm 'nope'",)),
    (lambda info: {**info, "model": 5}, ("'model' is 5, not a string",)),
    (lambda info: {**info, "recipe": [1]}, ("'recipe' is [1], not a JSON object",)),
    (lambda info: {**info, "recipe": {**info["recipe"], "model": "shapes"}}, ("recipe's 'model' is 'shapes'",)),
])
def test_a_damaged_trainer_json_is_refused_by_resume_and_export(checkpoint, tmp_path, change, needles):
    ckpt, recipe, model = checkpoint
    bad = tmp_path / "ckpt"
    shutil.copytree(ckpt, bad)
    info = json.loads((ckpt / "trainer.json").read_text())
    (bad / "trainer.json").write_text(json.dumps(change(info)))
    one_line_error(CliRunner().invoke(main, ["export", str(bad), "--to", str(tmp_path / "out")]), *needles)
    one_line_error(CliRunner().invoke(main, ["train", str(recipe), "--out", str(tmp_path / "run"), "--resume",
                                             str(bad), "--set", "train.iterations=2"]), *needles)
    assert not (tmp_path / "out").exists() and not (tmp_path / "run" / "checkpoints").exists()
    # sampling needs only the weights: a damaged record costs the note about its sampler, nothing else
    res = CliRunner().invoke(main, ["sample", "a red circle", "--model", f"shapes:{model}", "--checkpoint", str(bad),
                                    "--steps", "2",
                                    "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("config, needles", [
    ([1], ("config.json holds a JSON list, not an object",)),
    ("d_model", ("d_model is 'big', not a positive whole number",)),
    ("grid", ("grid is [8], not two positive whole numbers",)),
])
def test_a_damaged_config_json_is_one_line(checkpoint, tmp_path, config, needles):
    ckpt, _, model = checkpoint
    bad = tmp_path / "ckpt"
    shutil.copytree(ckpt, bad)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg = config if isinstance(config, list) else {**cfg, config: "big" if config == "d_model" else [8]}
    (bad / "config.json").write_text(json.dumps(cfg))
    one_line_error(CliRunner().invoke(main, ["sample", "a red circle", "--model", f"shapes:{model}", "--checkpoint", str(bad),
                                    "--steps", "2",
                                             "--out", str(tmp_path / "s")]), *needles)
    one_line_error(CliRunner().invoke(main, ["export", str(bad), "--to", str(tmp_path / "out")]), *needles)


def test_recipe_and_set_mistakes_name_where_they_are(checkpoint, tmp_path):
    _, recipe, _ = checkpoint
    one_line_error(CliRunner().invoke(main, ["train", str(recipe), "--set", "train.iteratons=3"]),
                   "--set train.iteratons: unknown key 'train.iteratons'")
    one_line_error(CliRunner().invoke(main, ["train", str(recipe), "--set", "train.lr=abc"]),
                   "--set train.lr: expected a number")
    one_line_error(CliRunner().invoke(main, ["train", str(recipe), "--set", "=3"]), "the key is empty")
    (tmp_path / "b.yaml").write_text("base: 5\n")
    one_line_error(CliRunner().invoke(main, ["train", str(tmp_path / "b.yaml")]), "base: expected the file name")
    (tmp_path / "e.yaml").write_text("train:\n")
    one_line_error(CliRunner().invoke(main, ["train", str(tmp_path / "e.yaml")]), "train: the section is empty")


def test_a_reward_that_raises_is_named_in_one_line(checkpoint, tmp_path):
    _, recipe, _ = checkpoint
    res = CliRunner().invoke(main, ["train", str(recipe), "--out", str(tmp_path / "r"),
                                    "--set", 'rewards=[{name: "os.path:join"}]'])
    one_line_error(res, "reward 'os.path:join' failed with TypeError", "fix the reward function")


@pytest.mark.parametrize("args, needles", [
    (["sample", "x", "--dtype", "int8"], ("'int8' is not one of", "(see 'maskfocus sample --help')")),
    (["evaluate"], ("Missing option '--bench'. Choose from: geneval, t2i-compbench, shapes",)),
    (["smaple"], ("No such command 'smaple'. Did you mean 'sample'?", "(see 'maskfocus --help')")),
    (["train", "a.yaml", "b.yaml"], ("unexpected extra argument", "(see 'maskfocus train --help')")),
])
def test_usage_mistakes_are_one_line_too(args, needles):
    res = CliRunner().invoke(main, args, prog_name="maskfocus")
    one_line_error(res, *needles)
    assert len(res.output.strip().splitlines()) == 1 and "Usage:" not in res.output
