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
    assert "maskfocus" in card and "base model" in card

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
    res = runner.invoke(main, ["export", str(ckpt), "--to", str(tmp_path / "model")])
    assert res.exit_code == 2 and "not empty" in res.output
