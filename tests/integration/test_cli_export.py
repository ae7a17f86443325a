"""`maskfocus export`: checkpoint → model folder that samples bit-identically."""

import json

from click.testing import CliRunner

from maskfocus_cli.cli import main


def test_export_round_trip(tmp_path, tiny_shapes_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
model: {{spec: "shapes:{tiny_shapes_dir}"}}
sampler: {{steps: 4}}
critical: {{k: 2}}
rewards: [brightness]
train: {{iterations: 1, prompts_per_iter: 2, group_size: 2, lr: 1.0e-3}}
output: {{dir: "{tmp_path / 'run'}"}}
data: {{num_eval_prompts: 0}}
""")
    runner = CliRunner()
    assert runner.invoke(main, ["train", str(recipe)]).exit_code == 0
    ckpt = tmp_path / "run" / "checkpoints" / "step-1"
    res = runner.invoke(main, ["export", str(ckpt), "--to", str(tmp_path / "model")])
    assert res.exit_code == 0, res.output
    facts = json.loads(res.stdout)
    assert facts["algorithm"] == "maskfocus" and facts["iteration"] == 1
    card = (tmp_path / "model" / "README.md").read_text()
    assert card.startswith("# shapes model post-trained with MaskFocus (maskfocus)")
    assert f"* base model: `shapes:{tiny_shapes_dir}`\n" in card
    # one iteration ran: the card counts it as 1 and names its metrics row, numbered from 0
    assert "* iterations completed: 1" in card and "metrics.jsonl row `iteration: 0`" in card
    # the headline reward says what it is: one iteration's 4 rollouts, not a benchmark score
    assert "* rollout reward at the last iteration: " in card and "(4 images of one iteration" in card
    assert "validation reward" not in card  # no validation ran
    # the command on the card samples the model as its grids did during training (4 steps here)
    assert f"`maskfocus sample --model shapes:THIS_FOLDER --steps 4 \"a prompt\"` (the settings" in card

    def sample(model, out, *extra):
        r = runner.invoke(main, ["sample", "a photo of a blue cross", "--n", 2, "--steps", 4, "--model", model,
                                 "--out", str(tmp_path / out), *extra])
        assert r.exit_code == 0, r.output
        return [open(json.loads(l)["path"], "rb").read() for l in r.stdout.splitlines()]

    exported = sample(f"shapes:{tmp_path / 'model'}", "a")
    from_ckpt = sample(f"shapes:{tiny_shapes_dir}", "b", "--checkpoint", str(ckpt))
    base = sample(f"shapes:{tiny_shapes_dir}", "c")
    assert exported == from_ckpt
    assert exported != base

    res = runner.invoke(main, ["export", str(tmp_path / "run"), "--to", str(tmp_path / "x")])
    assert res.exit_code == 2 and "trainer.json" in res.output
    res = runner.invoke(main, ["export", str(tmp_path / "nope"), "--to", str(tmp_path / "x")])
    assert res.exit_code == 2 and "no such checkpoint folder" in res.output
    assert not (tmp_path / "x").exists()  # a failed export leaves no empty --to
    res = runner.invoke(main, ["export", str(ckpt), "--to", str(tmp_path / "model")])
    assert res.exit_code == 2 and "not empty" in res.output


def _fake_checkpoint(folder, spec: str, model_dir=None):
    """A checkpoint folder as export reads it: trainer.json (+ the weights of a shapes model)."""
    import shutil
    if model_dir is not None:
        shutil.copytree(model_dir, folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trainer.json").write_text(json.dumps({"iteration": 1, "algorithm": "maskfocus", "model": spec,
                                                     "recipe": {"model": {"spec": spec}}}))
    return folder


def test_unwritable_to_and_moved_base_model_are_one_line_errors(tmp_path, tiny_shapes_dir):
    runner = CliRunner()
    ckpt = _fake_checkpoint(tmp_path / "step-1", f"shapes:{tiny_shapes_dir}", tiny_shapes_dir)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for to, reason in ((blocker, "it is a file, not a folder"), (blocker / "sub", "")):
        res = runner.invoke(main, ["export", str(ckpt), "--to", str(to)])
        assert res.exit_code == 2, res.output
        assert f"error: cannot write to --to {to}: {reason}" in res.stderr
        assert "(choose a writable folder)" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "Errno" not in res.stderr
    assert runner.invoke(main, ["export", str(ckpt), "--to", str(tmp_path / "ok")]).exit_code == 0

    gone = tmp_path / "amused-256"
    ckpt = _fake_checkpoint(tmp_path / "amused-step-1", f"amused:{gone}")
    res = runner.invoke(main, ["export", str(ckpt), "--to", str(tmp_path / "m")])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1
    assert f"base model amused:{gone} (model.spec in its recipe) is missing" in err
    assert "name where it is now with --model amused:DIR" in err


def test_model_card_leads_with_the_validation_reward_when_the_run_measured_one():
    from maskfocus_cli.io.export import model_card
    card = {"base_model": "shapes", "algorithm": "maskfocus", "iteration": 50, "dtype": "fp32",
            "source_checkpoint": "run/checkpoints/step-50",
            "recipe": {"train": {"prompts_per_iter": 8, "group_size": 8}},
            "final_metrics": {"iteration": 49, "reward": {"mean": 0.25, "std": 0.4},
                              "validation": {"reward": {"mean": 0.75, "std": 0.3}}}}
    text = model_card(card, "shapes")
    val = text.index("* validation reward at the last iteration: 0.7500")
    roll = text.index("* rollout reward at the last iteration: 0.2500 (64 images of one iteration")
    assert val < roll


def test_the_card_says_how_the_weights_were_made():
    """Pretraining starts from random weights and a run may start from another checkpoint: the card's title and
    base line say so (every card read "fine-tuned with maskfocus, base model `shapes`")."""
    from maskfocus_cli.io.export import model_card
    card = {"base_model": "shapes", "iteration": 3, "dtype": "fp32", "source_checkpoint": "c"}
    pre = model_card({**card, "algorithm": "pretrain", "recipe": {"model": {"checkpoint": None}}}, "shapes")
    assert pre.startswith("# shapes model pretrained with maskfocus")
    assert "* base model: none (random weights of the `shapes` architecture)" in pre
    grpo = model_card({**card, "algorithm": "mask-grpo", "recipe": {"model": {"checkpoint": "runs/a/step-5"}}},
                      "shapes")
    assert grpo.startswith("# shapes model post-trained with Mask-GRPO")
    assert "* base model: `shapes`, training started from the checkpoint `runs/a/step-5`" in grpo
