"""Training end to end on a tiny built-in-architecture model: learning signal, checkpoints, exact resume."""

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from maskfocus_cli.cli import main
from maskfocus_cli.config import load_recipe
from maskfocus_cli.engine.trainer import Trainer
from maskfocus_cli.io.checkpoint import read_weights

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

RECIPE = """
model: {{spec: "shapes:{model}"}}
sampler: {{steps: 6, guidance_scale: 2.0}}
critical: {{selector: info-gain, k: 2}}
rewards: [{{name: brightness}}]
train:
  algorithm: {algorithm}
  iterations: 3
  prompts_per_iter: 2
  group_size: 4
  micro_batch: 3
  lr: 1.0e-3
  kl_beta: 0.05
output: {{dir: "{out}", checkpoint_every: 1, keep_last: 5}}
data: {{num_eval_prompts: 2}}
"""


def recipe_file(tmp_path, model, algorithm="maskfocus", out="run", **extra):
    text = RECIPE.format(model=model, algorithm=algorithm, out=tmp_path / out)
    p = tmp_path / f"{out}.yaml"
    p.write_text(text)
    return p


def strip_times(rows):
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


@pytest.mark.parametrize("algorithm", ["maskfocus", "mask-grpo"])
def test_every_parameter_changes_and_loss_is_finite(tmp_path, tiny_shapes_dir, algorithm):
    recipe = load_recipe(recipe_file(tmp_path, tiny_shapes_dir, algorithm))
    trainer = Trainer(recipe)
    before = {k: v.detach().clone() for k, v in trainer.policy.named_parameters()}
    rows = trainer.run()
    assert len(rows) == 3
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert any(r["kept"] > 0 for r in rows)
    tags = {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert all(r["reward_by_tag"] and set(r["reward_by_tag"]) <= tags for r in rows)
    unchanged = [k for k, v in trainer.policy.named_parameters() if torch.equal(v, before[k])]
    assert unchanged == []
    run = tmp_path / "run"
    assert (run / "checkpoints" / "step-3" / "model.safetensors").is_file()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["iteration"] for l in lines] == [0, 1, 2]
    if algorithm == "maskfocus":
        assert all(len(r["steps"]) <= 2 for r in rows)
    else:
        assert all(r["steps"] == list(range(6)) for r in rows if r["kept"])


def test_resume_is_bit_identical(tmp_path, tiny_shapes_dir):
    full = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, out="full")))
    rows_full = full.run()

    part = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, out="part")))
    part.run(stop_after=2)  # "killed" after iteration 2
    assert (tmp_path / "part" / "checkpoints" / "step-2").is_dir()
    resumed = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, out="part")))
    rows_resumed = resumed.run(resume="latest")

    assert strip_times(rows_full) == strip_times(rows_resumed)
    a = read_weights(tmp_path / "full" / "checkpoints" / "step-3" / "model.safetensors")
    b = read_weights(tmp_path / "part" / "checkpoints" / "step-3" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads(l) for l in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert strip_times(metrics) == strip_times(rows_full)


def test_bf16_rollouts_track_the_policy_and_resume_exactly(tmp_path, tiny_shapes_dir):
    bf16 = ["train.rollout_dtype=bf16"]
    full = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, out="full"), bf16))
    assert full.rollout_net is not full.policy
    rows_full = full.run()
    assert all(math.isfinite(r["loss"]) for r in rows_full)
    for (name, p), q in zip(full.policy.named_parameters(), full.rollout_net.parameters()):
        assert q.dtype == torch.bfloat16 and torch.equal(q, p.detach().to(torch.bfloat16)), name

    part = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, out="part"), bf16))
    part.run(stop_after=2)
    resumed = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, out="part"), bf16))
    assert strip_times(resumed.run(resume="latest")) == strip_times(rows_full)

    fp32 = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, out="fp32")))
    assert fp32.rollout_net is fp32.policy


def test_weight_average_is_what_checkpoints_hand_out_and_resumes_exactly(tmp_path, tiny_shapes_dir):
    """train.ema_decay: model.safetensors = the average, by hand from the saved policy iterates
    (decay min(0.5, (1+i)/(10+i)) = 0.1, 2/11, 0.25 at iterations 0-2); policy.safetensors = the raw
    policy; a resumed run's average and policy are bit-identical to the uninterrupted run's."""
    ema = ["train.ema_decay=0.5"]
    full = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, out="full"), ema))
    base = {k: v.detach().clone() for k, v in full.policy.state_dict().items()}
    full.run()
    ck = tmp_path / "full" / "checkpoints"
    avg = dict(base)
    for i, decay in enumerate([0.1, 2 / 11, 0.25]):
        live = read_weights(ck / f"step-{i + 1}" / "policy.safetensors")
        avg = {k: torch.lerp(avg[k], live[k], 1 - decay) for k in avg}
    got = read_weights(ck / "step-3" / "model.safetensors")
    assert got.keys() == avg.keys()
    assert all(torch.allclose(got[k], avg[k], rtol=0, atol=1e-6) for k in avg)
    raw = read_weights(ck / "step-3" / "policy.safetensors")
    assert all(torch.equal(raw[k], v.detach()) for k, v in full.policy.state_dict().items())
    assert not all(torch.equal(got[k], raw[k]) for k in raw)  # the average lags the policy

    part = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, out="part"), ema))
    part.run(stop_after=2)
    Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, out="part"), ema)).run(resume="latest")
    for name in ("model.safetensors", "policy.safetensors"):
        a, b = read_weights(ck / "step-3" / name), read_weights(tmp_path / "part" / "checkpoints" / "step-3" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    res = CliRunner().invoke(main, ["export", str(ck / "step-3"), "--to", str(tmp_path / "model")])
    assert res.exit_code == 0, res.output
    assert "moving average of the policy (train.ema_decay 0.5)" in (tmp_path / "model" / "README.md").read_text()
    with pytest.raises(ValueError, match="ema_decay needs full fine-tuning"):
        Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, out="lora"), ema + ["train.lora_rank=2"]))


def test_validation_reward_is_logged_and_resume_stays_exact(tmp_path, tiny_shapes_dir):
    sets = ["output.validate_every=2", "data.num_validation_prompts=3"]
    full = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, out="full"), sets))
    before = full.validation_reward()
    assert before == full.validation_reward()  # fixed prompts and seeds: a deterministic measurement
    rows = full.run()
    assert [("validation" in r) for r in rows] == [False, True, False]
    v = rows[1]["validation"]
    assert math.isfinite(v["reward"]["mean"]) and set(v["by_tag"]) <= {"single_object", "two_object", "counting",
                                                                        "colors", "position", "color_attr"}
    part = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, out="part"), sets))
    part.run(stop_after=2)
    resumed = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, out="part"), sets))
    assert strip_times(resumed.run(resume="latest")) == strip_times(rows)


def test_nan_rewards_are_skipped_and_counted(tmp_path, tiny_shapes_dir, monkeypatch):
    import maskfocus_cli.rewards.registry as registry

    def factory():
        def reward(images, prompts, metadata):
            r = images.mean(dim=(1, 2, 3))
            r[0] = float("nan")
            return r
        return reward

    registry.register("nan-first", overwrite=True)(factory)
    p = recipe_file(tmp_path, tiny_shapes_dir)
    p.write_text(p.read_text().replace("brightness", "nan-first"))
    trainer = Trainer(load_recipe(p, ["train.iterations=1"]))
    before = {k: v.detach().clone() for k, v in trainer.policy.named_parameters()}
    with pytest.warns(UserWarning):
        rows = trainer.run()
    assert rows[0]["invalid_rewards"] == 1
    assert math.isfinite(rows[0]["loss"])
    assert all(torch.isfinite(v).all() for v in trainer.policy.parameters())
    assert any(not torch.equal(v, before[k]) for k, v in trainer.policy.named_parameters())


def test_a_log_only_component_with_nan_and_an_all_invalid_batch_log_strict_json(tmp_path, tiny_shapes_dir):
    import maskfocus_cli.rewards.registry as registry

    def half_nan():
        def reward(images, prompts, metadata):
            r = images.mean(dim=(1, 2, 3))
            r[::2] = float("nan")
            return r
        return reward

    def all_nan():
        return lambda images, prompts, metadata: torch.full((images.shape[0],), float("nan"))

    registry.register("half-nan", overwrite=True)(half_nan)
    registry.register("all-nan", overwrite=True)(all_nan)
    p = recipe_file(tmp_path, tiny_shapes_dir, out="nan")
    rows = Trainer(load_recipe(p, ["train.iterations=1", "rewards=[{name: brightness}, {name: half-nan, weight: 0}]"])
                   ).run()
    # the weight-0 component is logged over its finite values, not NaN because half of it is
    assert math.isfinite(rows[0]["components"]["half-nan"]["mean"]) and math.isfinite(rows[0]["reward"]["mean"])
    with pytest.warns(UserWarning):
        rows = Trainer(load_recipe(p, ["train.iterations=1", "rewards=[{name: all-nan}]",
                                       "output.dir=" + str(tmp_path / "nan2")])).run()
    assert rows[0]["reward"] == {"mean": None, "std": None}

    def no_bare_nan(name):
        raise AssertionError(f"metrics.jsonl holds a bare {name}, which is not JSON")
    for line in (tmp_path / "nan2" / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=no_bare_nan)


@pytest.mark.parametrize("flags, dtype", [({"avx2"}, torch.float32), ({"avx2", "avx512_bf16"}, torch.bfloat16)])
def test_rollout_dtype_auto_follows_the_cpu_and_says_so(tmp_path, tiny_shapes_dir, monkeypatch, flags, dtype):
    from maskfocus_cli.engine import weight_copies
    monkeypatch.setattr(weight_copies, "cpu_flags", lambda: flags)
    said = []
    trainer = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir), ["train.rollout_dtype=auto",
                                                                         "model.device=cpu"]), log=said.append)
    assert next(trainer.rollout_net.parameters()).dtype == dtype
    assert (trainer.rollout_net is trainer.policy) == (dtype == torch.float32)
    assert any(f"rollouts sample with {str(dtype)[6:].replace('float32', 'fp32').replace('bfloat16', 'bf16')}"
               in m for m in said), said


def test_a_non_finite_gradient_skips_the_optimiser_step_and_the_run_goes_on(tmp_path, tiny_shapes_dir):
    """A NaN loss at iteration 1 (an overflow, a bad input): that step is skipped with a warning and counted, the
    weights, their average and the rollout copy stay as they were, the row stays strict JSON, iteration 2 trains."""
    trainer = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, out="nan-grad"), ["train.ema_decay=0.5"]))
    said = []
    trainer.log = said.append
    estimate = trainer.estimator.unit_loss

    def poisoned(*args, **kwargs):
        res = estimate(*args, **kwargs)
        if trainer.state.iteration == 1:
            res.loss_sum = res.loss_sum * float("nan")
        return res
    trainer.estimator.unit_loss = poisoned
    rows = trainer.run()
    assert [r["skipped_steps"] for r in rows] == [0, 1, 0]
    assert rows[1]["grad_norm"] is None and rows[1]["loss"] is None
    assert all(isinstance(r["grad_norm"], float) for r in (rows[0], rows[2]))
    assert any("iteration 1: the gradient is not finite" in m and "skipped" in m for m in said)
    ckpt = tmp_path / "nan-grad" / "checkpoints"
    for name in ("model.safetensors", "policy.safetensors"):
        w1, w2, w3 = (read_weights(ckpt / f"step-{i}" / name) for i in (1, 2, 3))
        assert all(torch.equal(w1[k], w2[k]) for k in w1), name  # the skipped step changed nothing
        assert all(torch.isfinite(v).all() for v in w3.values()) and any(not torch.equal(w2[k], w3[k]) for k in w2)
    for line in (tmp_path / "nan-grad" / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"bare {name} in metrics.jsonl"))


def test_train_cli_end_to_end(tmp_path, tiny_shapes_dir):
    p = recipe_file(tmp_path, tiny_shapes_dir, out="cli")
    res = CliRunner().invoke(main, ["train", str(p), "--set", "train.iterations=2"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(l) for l in res.stdout.splitlines() if l.startswith("{")]
    assert [r["iteration"] for r in rows] == [0, 1]
    assert (tmp_path / "cli" / "reward.png").is_file()
    assert (tmp_path / "cli" / "samples" / "final.png").is_file()
    grid = json.loads((tmp_path / "cli" / "samples" / "final.json").read_text())
    assert len(grid["rows"]) == 2 and all(isinstance(p, str) and p for p in grid["rows"])  # num_eval_prompts: 2
    assert all(isinstance(r["grad_norm"], float) for r in rows)
    # grids show distinct prompts (shapes:heldout repeats some), and the final grid of weights already drawn at
    # their last periodic grid is that grid, not a second sampling of it
    res = CliRunner().invoke(main, ["train", str(p), "--set", "train.iterations=2", "--set", "output.sample_every=2",
                                    "--set", "data.num_eval_prompts=12", "--out", str(tmp_path / "grids")])
    assert res.exit_code == 0, res.output
    samples = tmp_path / "grids" / "samples"
    shown = json.loads((samples / "final.json").read_text())["rows"]
    assert len(shown) == 12 and len(set(shown)) == 12
    assert (samples / "final.png").read_bytes() == (samples / "iter-00002.png").read_bytes()
    # resuming a finished run does nothing more and keeps its metrics
    res = CliRunner().invoke(main, ["train", str(p), "--set", "train.iterations=2", "--resume", "latest"])
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()) == 2

    # a checkpoint whose config names another attention variant is refused, not loaded silently
    ckpt = sorted((tmp_path / "cli" / "checkpoints").iterdir())[-1]
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "text_attends_image": True}))
    res = CliRunner().invoke(main, ["train", str(p), "--set", "train.iterations=3", "--resume", "latest"])
    assert res.exit_code == 2 and "another shapes architecture" in res.output, res.output


def test_progress_shortens_runs_of_trained_steps():
    from maskfocus_cli.cli.train import steps_text
    assert steps_text(list(range(16))) == "0-15"  # Mask-GRPO: every step
    assert steps_text([13, 3, 4, 5]) == "3-5,13"
    assert steps_text([0, 2, 4]) == "0,2,4" and steps_text([7]) == "7" and steps_text([]) == "-"


@pytest.mark.parametrize("override, message", [
    ("train.group_size=1", "group_size"),
    ("model.spec=meissonic", "meissonic:PATH"),
    ("critical.k=9", "critical.k"),
    ("train.nope=1", "unknown key"),
    ("train.rollout_dtype=fp16", "not one of fp32, bf16"),
    ("train.lora_rank=2 train.rollout_dtype=bf16", "needs full fine-tuning"),
    ("train.kl_estimator=full train.kl_max=10", "set kl_max to 0"),
    ("train.kl_estimator=k2", "not one of k3, full"),
    ('data.caption_fidelity={"colors":0.5} train.algorithm=pretrain', "only counting, position"),
    ("train.lr=.nan", "train.lr: nan is not a finite number"),
    ("sampler.guidance_scale=.inf", "sampler.guidance_scale: inf is not a finite number"),
    ("train.betas=[0.9,0.99,0.9]", "train.betas: expected 2 values"),
    ("train.clip_low=1.5", "above the maximum"),
    ("model.device=bogus", "bogus"),
    ("sampler.steps=100", "use at most 64 steps"),
])
def test_train_bad_input(tmp_path, tiny_shapes_dir, override, message):
    p = recipe_file(tmp_path, tiny_shapes_dir)
    sets = [a for o in override.split() for a in ("--set", o)]
    res = CliRunner().invoke(main, ["train", str(p), *sets])
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_pretrain_algorithm_runs(tmp_path):
    p = tmp_path / "pre.yaml"
    p.write_text(f"""
model: {{spec: shapes}}
train: {{algorithm: pretrain, iterations: 2, batch_size: 8, lr: 1.0e-3}}
output: {{dir: "{tmp_path / 'pre'}", checkpoint_every: 2}}
data: {{num_eval_prompts: 0}}
""")
    trainer = Trainer(load_recipe(p))
    before = {k: v.detach().clone() for k, v in trainer.policy.named_parameters()}
    rows = trainer.run()
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert sum(not torch.equal(v, before[k]) for k, v in trainer.policy.named_parameters()) > 0
    ck = tmp_path / "pre" / "checkpoints" / "step-2"
    assert {"config.json", "model.safetensors", "tokenizer.safetensors"} <= {f.name for f in ck.iterdir()}


def test_lora_trains_adapters_and_resumes_exactly(tmp_path, tiny_shapes_dir):
    full = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, out="lfull"), ["train.lora_rank=4"]))
    lora_params = {k: v.detach().clone() for k, v in full.policy.named_parameters() if v.requires_grad}
    assert lora_params and all("lora_" in k for k in lora_params)
    rows_full = full.run()
    unchanged = [k for k, v in full.policy.named_parameters() if v.requires_grad and torch.equal(v, lora_params[k])]
    assert unchanged == []
    part = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, out="lpart"), ["train.lora_rank=4"]))
    part.run(stop_after=2)
    resumed = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, out="lpart"), ["train.lora_rank=4"]))
    assert strip_times(resumed.run(resume="latest")) == strip_times(rows_full)
    # the checkpoint holds merged weights a plain model loads
    a = read_weights(tmp_path / "lfull" / "checkpoints" / "step-3" / "model.safetensors")
    b = read_weights(tmp_path / "lpart" / "checkpoints" / "step-3" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a) and not any("lora" in k for k in a)


def test_time_budget_stops_and_checkpoints(tmp_path, tiny_shapes_dir):
    trainer = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, out="tb"),
                                  ["train.iterations=50", "train.time_budget_minutes=1e-9",
                                   "output.checkpoint_every=100"]))
    rows = trainer.run()
    assert len(rows) == 0  # the budget is spent before the first iteration
    assert (tmp_path / "tb" / "checkpoints" / "step-0" / "model.safetensors").is_file()


def test_time_budget_counts_the_whole_run_across_resumes(tmp_path, tiny_shapes_dir):
    p = recipe_file(tmp_path, tiny_shapes_dir, out="tb2")
    Trainer(load_recipe(p, ["train.iterations=2"])).run()
    spent = json.loads((tmp_path / "tb2" / "checkpoints" / "step-2" / "trainer.json").read_text())["elapsed_seconds"]
    assert spent > 0
    # a budget the first two iterations already used up: the resumed run trains nothing more (it used to
    # start a fresh budget on every resume, so a pre-empted 20-minute run got 20 more)
    spent_budget = [f"train.time_budget_minutes={spent / 60 * 0.9}", "train.iterations=10"]
    again = Trainer(load_recipe(p, spent_budget))
    assert again.run(resume="latest")[-1]["iteration"] == 1 and again.state.iteration == 2
    assert again.elapsed() >= spent
    # room left in the budget: the run goes on, and its clock continues from the checkpoint's
    more = Trainer(load_recipe(p, ["train.time_budget_minutes=60", "train.iterations=3"]))
    assert more.run(resume="latest")[-1]["iteration"] == 2
    total = json.loads((tmp_path / "tb2" / "checkpoints" / "step-3" / "trainer.json").read_text())["elapsed_seconds"]
    assert total > spent


def test_resuming_a_finished_run_says_there_is_nothing_to_train(tmp_path, tiny_shapes_dir):
    p = recipe_file(tmp_path, tiny_shapes_dir, out="done")
    Trainer(load_recipe(p, ["train.iterations=2"])).run()
    said = []
    Trainer(load_recipe(p, ["train.iterations=1"]), log=said.append).run(resume="latest")
    assert any("nothing to train: the run is at iteration 2 of train.iterations = 1" in m for m in said)


def test_reward_server_down_keeps_last_checkpoint(tmp_path, tiny_shapes_dir):
    """A run scored by a reward server; the server goes away: retries, then a one-line error naming it, the
    last checkpoint intact. The server may come back elsewhere: the resumed run takes the new url."""
    import threading
    from maskfocus_cli.rewards import make_reward
    from maskfocus_cli.rewards.serve import make_server

    def start_server():
        server = make_server(make_reward("brightness"), "127.0.0.1", 0, name="brightness")
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_address[1]}/"

    def with_url(url):
        return ["--set", f"rewards=[{{name: http, options: {{url: '{url}', timeout: 0.5, retries: 1, "
                         "backoff: 0.01}}]"]

    p = recipe_file(tmp_path, tiny_shapes_dir, out="srv")
    runner = CliRunner()
    server, url = start_server()
    assert runner.invoke(main, ["train", str(p), "--set", "train.iterations=1", *with_url(url)]).exit_code == 0
    server.shutdown()
    server.server_close()
    ckpt = tmp_path / "srv" / "checkpoints" / "step-1" / "model.safetensors"
    before = ckpt.read_bytes()
    res = runner.invoke(main, ["train", str(p), "--set", "train.iterations=2", "--resume", "latest", *with_url(url)])
    assert res.exit_code == 2, res.output
    assert url.rstrip("/") in res.stderr and "recipe differs" not in res.stderr and "Traceback" not in res.output
    assert ckpt.read_bytes() == before
    # back on another port: only where to ask changed, so the run resumes
    server, moved = start_server()
    try:
        res = runner.invoke(main, ["train", str(p), "--set", "train.iterations=2", "--resume", "latest",
                                   *with_url(moved)])
        assert res.exit_code == 0, res.output
    finally:
        server.shutdown()
        server.server_close()
    assert (tmp_path / "srv" / "checkpoints" / "step-2").is_dir()


def test_tag_weights_steer_the_prompt_draw(tmp_path, tiny_shapes_dir):
    p = recipe_file(tmp_path, tiny_shapes_dir)
    zero = {t: 0 for t in ("single_object", "two_object", "colors", "position", "color_attr")}
    uniform = Trainer(load_recipe(p))
    weighted = Trainer(load_recipe(p, overrides=[f"data.tag_weights={json.dumps(zero)}"]))
    drawn = [m["tag"] for it in range(20) for _, m in weighted._iteration_prompts(it)]
    assert set(drawn) == {"counting"}
    assert len({m["tag"] for it in range(20) for _, m in uniform._iteration_prompts(it)}) > 1
    res = CliRunner().invoke(main, ["train", str(p), "--set", "data.tag_weights={countin: 2}"])
    assert res.exit_code == 2 and "does not have" in res.output and "Traceback" not in res.output, res.output


def test_explain_shows_what_a_recipe_resolves_to(tmp_path, tiny_shapes_dir):
    p = recipe_file(tmp_path, tiny_shapes_dir)
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {p.name}\ntrain: {{lr: 2.5e-4}}\n")
    res = CliRunner().invoke(main, ["train", str(child), "--explain", "--set", "train.kl_beta=0.125"],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    row = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
           for line in res.output.splitlines() if line.count("│") >= 4}
    assert res.stdout == res.output  # the table is the answer: on stdout, for grep
    assert row["train.lr"][:2] == ["0.00025", "0.0001"]  # this recipe's value, then the default
    assert row["train.kl_beta"][0] == "0.125" and row["train.group_size"][0] == "4"  # --set and base:
    assert row["eval_sampler"][0] == "None" and row["eval_sampler.steps"][:2] == ["", "None"]  # unset section
    res = CliRunner().invoke(main, ["train", str(child), "--explain", "--set", "eval_sampler={steps: 4}"],
                             env={"COLUMNS": "200"})
    row = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
           for line in res.output.splitlines() if line.count("│") >= 4}
    assert row["eval_sampler.steps"][:2] == ["4", "None"]  # None: the model family's own
    assert row["eval_sampler.guidance_scale"][0] == "None"
    res = CliRunner().invoke(main, ["train", "--explain"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "train.lr" in res.output and "eval_sampler.steps" in res.output


def test_low_precision_weights_train_in_fp32_and_the_reference_shares_autocast(tmp_path, tiny_shapes_dir):
    """model.dtype bf16 with full fine-tuning: weights are upcast (bf16 would drop small updates), and
    under mixed precision the reference runs autocast like the policy, so iteration 0's KL is exactly 0.
    A subprocess: accelerate's mixed-precision state is per process."""
    import subprocess
    import sys
    recipe = recipe_file(tmp_path, tiny_shapes_dir, out="mp")
    proc = subprocess.run([sys.executable, "-m", "maskfocus_cli", "train", str(recipe), "--set", "model.dtype=bf16",
                           "--set", "train.mixed_precision=bf16", "--set", "train.iterations=2",
                           "--set", "train.lr=1e-5"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "upcast to fp32" in proc.stderr
    rows = [json.loads(l) for l in (tmp_path / "mp" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["kl"] == 0.0 and all(math.isfinite(r["loss"]) for r in rows)
    after = read_weights(tmp_path / "mp" / "checkpoints" / "step-2" / "model.safetensors")
    base = read_weights(tiny_shapes_dir / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in after.values())
    # at lr 1e-5 a bf16 weight would keep ~all of its values; fp32 weights move nearly everywhere
    moved = sum(int((after[k] != base[k]).sum()) for k in base) / sum(v.numel() for v in base.values())
    assert moved > 0.5


@pytest.mark.parametrize("algorithm", ["maskfocus", "mask-grpo"])
def test_inner_epochs_reuse_the_rollouts_against_cached_old_logprobs(tmp_path, tiny_shapes_dir, algorithm):
    """Epoch 2 compares the moved policy with epoch 0's cached log-probs on the *same* re-masked grids:
    with lr 0 every ratio is exactly 1 (nothing clipped), with a large lr the clip bites."""
    frozen = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, algorithm, out="lr0"),
                                 ["train.inner_epochs=2", "train.lr=0", "train.iterations=2"])).run()
    assert all(r["clip_fraction"] == 0.0 for r in frozen)
    moving = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, algorithm, out="lr"),
                                 ["train.inner_epochs=2", "train.lr=0.05", "train.iterations=2",
                                  "train.grad_clip=0"])).run()
    assert any(r["clip_fraction"] > 0 for r in moving)
    assert all(math.isfinite(r["loss"]) for r in moving)


def test_a_run_folder_is_never_overwritten_or_resumed_with_another_recipe(tmp_path, tiny_shapes_dir):
    p = recipe_file(tmp_path, tiny_shapes_dir, out="r")
    res = CliRunner().invoke(main, ["train", str(p), "--set", "train.iterations=2"])
    assert res.exit_code == 0, res.output
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    weights = (tmp_path / "r" / "checkpoints" / "step-2" / "model.safetensors").read_bytes()

    def refused(*args: str, message: str) -> None:
        res = CliRunner().invoke(main, ["train", str(p), *args])
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
        assert (tmp_path / "r" / "metrics.jsonl").read_text() == before
        assert (tmp_path / "r" / "checkpoints" / "step-2" / "model.safetensors").read_bytes() == weights

    refused("--set", "train.iterations=1", message="already holds a run")  # a fresh run into it
    refused("--set", "train.group_size=2", "--resume", "latest", message="train.group_size: 4 → 2")
    # the refusal's hint is a command that works (recipe.json is a recipe), and a refused branch makes no folder
    ckpt2 = tmp_path / "r" / "checkpoints" / "step-2"
    res = CliRunner().invoke(main, ["train", str(p), "--set", "train.group_size=2", "--resume", str(ckpt2),
                                    "--out", str(tmp_path / "branch")])
    hint = "".join(res.output.split())
    assert res.exit_code == 2 and "".join(f"maskfocus train {tmp_path / 'r' / 'recipe.json'} --resume {ckpt2} "
                                          f"--out {tmp_path / 'branch'}".split()) in hint, res.output
    assert not (tmp_path / "branch").exists()
    res = CliRunner().invoke(main, ["train", str(tmp_path / "r" / "recipe.json"), "--resume", str(ckpt2),
                                    "--out", str(tmp_path / "r")])
    assert res.exit_code == 0 and "nothing to train" in res.output, res.output
    refused("--set", "train.algorithm=mask-grpo", "--resume", "latest", message="train.algorithm")
    # a checkpoint of another run is never grafted into this one
    other = recipe_file(tmp_path, tiny_shapes_dir, out="other")
    assert CliRunner().invoke(main, ["train", str(other), "--set", "train.iterations=1"]).exit_code == 0
    refused("--set", "train.iterations=3", "--resume", str(tmp_path / "other" / "checkpoints" / "step-1"),
            message="already holds another run")
    # how long it runs may change on resume
    res = CliRunner().invoke(main, ["train", str(p), "--set", "train.iterations=3", "--resume", "latest"])
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 3
    # --resume latest where there is nothing to resume (a mistyped --out) refuses instead of starting afresh
    q = recipe_file(tmp_path, tiny_shapes_dir, out="new")
    res = CliRunner().invoke(main, ["train", str(q), "--set", "train.iterations=1", "--resume", "latest"])
    assert res.exit_code == 2 and "no checkpoint in" in res.output and "drop --resume" in res.output, res.output
    assert not (tmp_path / "new").exists()  # not even an empty run folder
    # a checkpoint of another run may start a new folder (a branch), which says where its first rows are and
    # how to continue the other run instead
    res = CliRunner().invoke(main, ["train", str(q), "--set", "train.iterations=2", "--resume",
                                    str(tmp_path / "other" / "checkpoints" / "step-1")])
    said = "".join(res.stderr.split())  # rich wraps long paths anywhere: compare without whitespace

    def says(text: str) -> bool:
        return "".join(text.split()) in said
    assert res.exit_code == 0 and says(f"branches off {tmp_path / 'other'} at iteration 1"), res.output
    assert says(f"resume with --out {tmp_path / 'other'}")
    assert [json.loads(l)["iteration"] for l in (tmp_path / "new" / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not (tmp_path / "other" / "abandoned").exists()  # the other run is untouched
    res = CliRunner().invoke(main, ["train", str(p), "--set", "train.iterations=3", "--resume",
                                    str(tmp_path / "r" / "checkpoints" / "step-2")])
    assert res.exit_code == 0, res.output


def test_run_folder_and_reward_option_mistakes_are_one_line_errors(tmp_path, tiny_shapes_dir):
    p = recipe_file(tmp_path, tiny_shapes_dir)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "dragons.txt").write_text("a photo of a red circle\na photo of a purple dragon\n")
    for args, message in [(["--out", str(tmp_path / "afile")], "cannot write to the run folder"),
                          (["--set", "rewards=[{name: shapes-geneval, options: {partal: true}}]"],
                           "unknown option 'partal' (valid: partial"),
                          (["--set", "rewards=[{name: brightness, weight: 0}]"], "every reward has weight 0"),
                          # a space for the '=': click's "unexpected extra argument" would not say which --set
                          (["--set", "train.lr", "1e-5"], "--set 'train.lr': expected KEY=VALUE"),
                          # the grid's prompts are read before the first iteration, not at the first grid
                          (["--set", "data.eval_prompts=/no/such/prompts.jsonl"],
                           "data.eval_prompts: prompt file not found: /no/such/prompts.jsonl"),
                          (["--set", f"data.eval_prompts={tmp_path / 'empty.txt'}"], "holds no prompts"),
                          # the built-in model's closed vocabulary: checked before the run folder is touched
                          (["--set", f"data.prompts={tmp_path / 'dragons.txt'}"],
                           "data.prompts: the shapes model does not know the word 'dragon'"),
                          (["--set", f"data.eval_prompts={tmp_path / 'dragons.txt'}"],
                           "data.eval_prompts: the shapes model does not know the word 'dragon'")]:
        res = CliRunner().invoke(main, ["train", str(p), *args])
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
        assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "recipe.json").exists()
    # no grids and no validation: the eval prompts are never read, so a placeholder path is fine
    res = CliRunner().invoke(main, ["train", str(p), "--set", "train.iterations=1", "--set",
                                    "data.num_eval_prompts=0", "--set", "data.eval_prompts=/path/to/later.jsonl"])
    assert res.exit_code == 0, res.output
    assert "done: 1 iteration →" in res.stderr


@pytest.mark.parametrize("signame, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_sigterm_finishes_the_iteration_checkpoints_and_the_run_resumes(tmp_path, tiny_shapes_dir, signame, code):
    """Slurm pre-emption / `kill` / a first Ctrl-C: the run stops after the current iteration with a checkpoint
    (Ctrl-C used to lose everything since the last periodic checkpoint)."""
    import os
    import signal
    import subprocess
    import sys
    p = recipe_file(tmp_path, tiny_shapes_dir, out="t")
    cmd = [sys.executable, "-m", "maskfocus_cli", "train", str(p), "--set", "train.iterations=50",
           "--set", "output.checkpoint_every=100", "--set", "data.num_eval_prompts=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first = json.loads(proc.stdout.readline())  # iteration 0 is done: the loop is running
    proc.send_signal(getattr(signal, signame))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    n = 1 + len(out.splitlines())  # iterations completed before the stop
    assert first["iteration"] == 0 and n < 50
    assert [c.name for c in (tmp_path / "t" / "checkpoints").iterdir()] == [f"step-{n}"]
    assert "--resume latest" in err and "Traceback" not in err
    res = CliRunner().invoke(main, ["train", str(p), "--set", f"train.iterations={n + 1}", "--set",
                                    "output.checkpoint_every=100", "--set", "data.num_eval_prompts=0",
                                    "--resume", "latest"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(l) for l in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(n + 1))
    assert (tmp_path / "t" / "reward.png").is_file()


def test_a_run_that_died_before_its_first_checkpoint_can_be_started_again(tmp_path, tiny_shapes_dir):
    """Metrics but no checkpoint (kill -9, a crash): `--resume latest` has nothing to resume and a fresh start
    used to be refused as "already holds a run" — the two messages sent the user back and forth."""
    p = recipe_file(tmp_path, tiny_shapes_dir, out="died")
    run = tmp_path / "died"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"iteration": 0, "loss": 0.1}) + "\n")
    res = CliRunner().invoke(main, ["train", str(p), "--set", "train.iterations=1"])
    assert res.exit_code == 0, res.output
    assert "stopped before its first checkpoint" in res.stderr
    assert json.loads((run / "abandoned" / "metrics.jsonl").read_text())["loss"] == 0.1  # kept, set aside
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0] and rows[0]["loss"] != 0.1


def test_maskfocus_loss_is_beta_times_the_logged_kl_per_sample_and_step(tmp_path, tiny_shapes_dir):
    """On-policy (ratio 1) the surrogate sums to −Σ A = 0 within each group, so what is left of the loss is
    β · KL — both averaged over kept samples *and* critical steps. A trainer that forgot to divide by k
    (or by the sample count) would log k× (or n×) the value."""
    rows = Trainer(load_recipe(recipe_file(tmp_path, tiny_shapes_dir, out="kl"), ["train.iterations=3"])).run()
    moved = [r for r in rows if r["kl"] > 0 and r["kept"]]
    assert moved and all(len(r["steps"]) >= 1 for r in moved)
    for r in moved:
        assert r["loss"] == pytest.approx(0.05 * r["kl"], rel=1e-3, abs=1e-7), r


def test_a_closed_stdout_does_not_stop_training(tmp_path, tiny_shapes_dir):
    """`maskfocus train R | head -1`: the reader goes away after one row; the run trains to the end."""
    import os
    import subprocess
    import sys
    p = recipe_file(tmp_path, tiny_shapes_dir, out="pipe")
    cmd = [sys.executable, "-m", "maskfocus_cli", "train", str(p), "--set", "train.iterations=4",
           "--set", "data.num_eval_prompts=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert json.loads(proc.stdout.readline())["iteration"] == 0
    proc.stdout.close()  # as `head -1` exits
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert "stdout was closed" in err and "Traceback" not in err
    assert (tmp_path / "pipe" / "checkpoints" / "step-4").is_dir()
    assert len((tmp_path / "pipe" / "metrics.jsonl").read_text().splitlines()) == 4


def test_fp16_autocast_on_cpu_is_refused_not_silently_fp32(tmp_path, tiny_shapes_dir):
    p = recipe_file(tmp_path, tiny_shapes_dir, out="fp16")
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        Trainer(load_recipe(p, ["train.mixed_precision=fp16"]))


def test_rewinding_a_run_sets_its_later_checkpoints_aside(tmp_path, tiny_shapes_dir):
    """Resuming from an earlier step-N of the same run, then `--resume latest`, must continue the new branch
    (it jumped back to the abandoned step-4 and mixed the branches' metrics rows)."""
    p = recipe_file(tmp_path, tiny_shapes_dir, out="rw")
    run = tmp_path / "rw"
    Trainer(load_recipe(p, ["train.iterations=4"])).run()
    said = []
    Trainer(load_recipe(p, ["train.iterations=3"]), log=said.append).run(resume=str(run / "checkpoints" / "step-2"))
    assert sorted(d.name for d in (run / "abandoned").iterdir()) == ["step-3", "step-4"]  # kept, not deleted
    assert any("moved to" in m and "step-4" in m for m in said)
    rows = Trainer(load_recipe(p, ["train.iterations=4"])).run(resume="latest")
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
    assert [json.loads(l)["iteration"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3]
    assert sorted(d.name for d in (run / "checkpoints").iterdir()) == ["step-1", "step-2", "step-3", "step-4"]


def test_a_failing_reward_checkpoints_the_last_completed_iteration_and_the_run_resumes_exactly(
        tmp_path, tiny_shapes_dir):
    import maskfocus_cli.rewards.registry as registry
    calls = {"n": 0, "fail_at": 2}

    def flaky():
        def reward(images, prompts, metadata):
            calls["n"] += 1
            if calls["n"] == calls["fail_at"] + 1:
                raise ValueError("reward server at http://127.0.0.1:9/ did not answer")
            return images.mean(dim=(1, 2, 3))
        return reward

    registry.register("flaky", overwrite=True)(flaky)
    p = recipe_file(tmp_path, tiny_shapes_dir, out="flaky")
    p.write_text(p.read_text().replace("brightness", "flaky"))
    over = ["train.iterations=3", "output.checkpoint_every=100"]
    said = []
    with pytest.raises(ValueError, match="did not answer"):
        Trainer(load_recipe(p, over), log=said.append).run()
    # iterations 0 and 1 completed; the periodic checkpoint was not due until 100
    assert [d.name for d in (tmp_path / "flaky" / "checkpoints").iterdir()] == ["step-2"]
    assert any("reward failed at iteration 2" in m for m in said)
    calls.update(n=0, fail_at=10**9)
    resumed = Trainer(load_recipe(p, over))
    resumed.run(resume="latest")
    calls.update(n=0)
    straight = Trainer(load_recipe(p, over + ["output.dir=" + str(tmp_path / "straight")]))
    straight.run()
    assert strip_times(resumed.state.history) == strip_times(straight.state.history)
    for (k, a), (_, b) in zip(resumed.policy.named_parameters(), straight.policy.named_parameters()):
        assert torch.equal(a, b), k


def test_a_reward_that_scores_by_metadata_refuses_plain_prompt_files_up_front(tmp_path, tiny_shapes_dir):
    import maskfocus_cli.rewards.registry as registry

    class ByMetadata:
        needs_metadata = True  # as the geneval reward

        def __call__(self, images, prompts, metadata):
            return images.mean(dim=(1, 2, 3))

    registry.register("by-metadata", overwrite=True)(ByMetadata)
    plain = tmp_path / "plain.txt"
    plain.write_text("a photo of a red circle\n")
    p = recipe_file(tmp_path, tiny_shapes_dir, out="meta")
    p.write_text(p.read_text().replace("brightness", "by-metadata"))
    with pytest.raises(ValueError, match=r"data\.prompts: .*plain\.txt has prompts without GenEval metadata"):
        Trainer(load_recipe(p, [f"data.prompts={plain}"]))
    with pytest.raises(ValueError, match=r"data\.eval_prompts: .*plain\.txt has prompts without GenEval metadata"):
        Trainer(load_recipe(p, [f"data.eval_prompts={plain}", "output.validate_every=50"]))
    Trainer(load_recipe(p, [f"data.eval_prompts={plain}"]))  # grids only: plain prompts are fine


def test_training_on_the_bench_s_held_out_prompts_is_said(tmp_path, tiny_shapes_dir):
    p = recipe_file(tmp_path, tiny_shapes_dir, out="ho")
    said = []
    Trainer(load_recipe(p, ["data.prompts=shapes:heldout"]), log=said.append)
    assert any(m.startswith("warning: data.prompts (shapes:heldout) holds") and "not be held-out" in m for m in said)
    said.clear()
    Trainer(load_recipe(p, ["data.prompts=shapes:train"]), log=said.append)
    assert not any("held-out" in m for m in said)


def test_a_negative_prompt_the_model_cannot_read_fails_before_the_run(tmp_path, tiny_shapes_dir):
    p = recipe_file(tmp_path, tiny_shapes_dir, out="neg")
    res = CliRunner().invoke(main, ["train", str(p), "--set", "sampler.negative_prompt=a purple dragon"])
    assert res.exit_code == 2 and "sampler.negative_prompt" in res.output and "dragon" in res.output, res.output
    assert not (tmp_path / "neg").exists()
    rows = Trainer(load_recipe(p, ["sampler.negative_prompt=a photo of a red circle", "train.iterations=1"])).run()
    assert math.isfinite(rows[0]["loss"])


def test_pretraining_checks_the_grids_negative_prompt_before_it_trains(tmp_path):
    res = CliRunner().invoke(main, [str(x) for x in ["train", RECIPES / "shapes-pretrain.yaml", "--set",
                                                     "sampler.negative_prompt=blorp", "--out", tmp_path / "pre"]])
    assert res.exit_code == 2 and "sampler.negative_prompt" in res.output and "blorp" in res.output, res.output
    assert not (tmp_path / "pre").exists()


def test_every_placeholder_of_a_real_model_recipe_is_named_at_once_before_anything_loads(tmp_path):
    res = CliRunner().invoke(main, ["train", str(RECIPES / "geneval.yaml"), "--out", str(tmp_path / "g")])
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "placeholders to fill in: model.spec, " in said, res.output
    for key in ("data.prompts", "data.eval_prompts", "rewards.0.options.detector", "rewards.0.options.clip"):
        assert key in said
    res = CliRunner().invoke(main, ["train", str(RECIPES / "hps.yaml"), "--set", "model.spec=meissonic:/m",
                                    "--out", str(tmp_path / "h")])
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "model.spec" not in said and "rewards.0.options.weights" in said, res.output
    assert not (tmp_path / "g").exists() and not (tmp_path / "h").exists()


def test_fsdp_launches_are_refused_not_run_wrong():
    from maskfocus_cli.engine.recipe_checks import check_distributed_type
    with pytest.raises(ValueError, match="FSDP, which maskfocus train does not support yet: launch with DeepSpeed"):
        check_distributed_type("DistributedType.FSDP")
    for kind in ("DistributedType.NO", "DistributedType.MULTI_GPU", "DistributedType.MULTI_CPU",
                 "DistributedType.DEEPSPEED"):
        check_distributed_type(kind)


def test_the_deepspeed_config_comes_from_the_recipe_and_unsupported_settings_are_refused():
    from types import SimpleNamespace

    from maskfocus_cli.engine.deepspeed_zero import configure

    def acc(ds: dict, stage: int = 2):
        return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=ds,
                                                                                        zero_stage=stage)))
    ds = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto", "gradient_clipping": 1.0,
          "gradient_accumulation_steps": 4, "train_batch_size": "auto", "bf16": {"enabled": False}}
    configure(acc(ds), micro_batch=6, grad_clip=0.5, mixed_precision="no")
    assert ds["train_micro_batch_size_per_gpu"] == 6 and ds["gradient_accumulation_steps"] == 1
    assert ds["gradient_clipping"] == 0.5 and "train_batch_size" not in ds
    with pytest.raises(ValueError, match="ZeRO stage 3 is not supported.*stage 3 shards the weights"):
        configure(acc({"zero_optimization": {"stage": 3}}), 2, 1.0, "no")
    configure(acc({"zero_optimization": {"stage": 1}}), 2, 1.0, "bf16")  # bf16 autocast around fp32 weights
    with pytest.raises(ValueError, match="fp16 has no loss scaling"):
        configure(acc({"zero_optimization": {"stage": 2}}), 2, 1.0, "fp16")
    for ds in ({"fp16": {"enabled": True}}, {"bf16": {"enabled": "True"}}, {"torch_autocast": {"enabled": 1}}):
        with pytest.raises(ValueError, match="DeepSpeed config enables bf16/fp16"):
            configure(acc({"zero_optimization": {"stage": 1}, **ds}), 2, 1.0, "no")
    with pytest.raises(ValueError, match="ZeRO stage 0 is not supported"):
        configure(acc({"zero_optimization": {"stage": 0}}, stage=0), 2, 1.0, "no")
    # what would take the optimiser or the learning-rate schedule out of the recipe's hands
    for extra, key in (({"scheduler": {"type": "WarmupLR"}}, "scheduler"), ({"optimizer": {"type": "Adam"}},
                                                                             "optimizer"),
                       ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}},
                        "zero_optimization.offload_optimizer"),
                       ({"zero_optimization": {"stage": 2, "elastic_checkpoint": True}},
                        "zero_optimization.elastic_checkpoint")):
        with pytest.raises(ValueError, match=f"remove {key} from the DeepSpeed config"):
            configure(acc({"zero_optimization": {"stage": 2}, **extra}), 2, 1.0, "no")
    configure(acc({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "none"}}}), 2, 1.0, "no")


def test_deepspeed_shards_are_counted_before_a_save_lands_or_a_resume_loads(tmp_path):
    from maskfocus_cli.engine.deepspeed_zero import check_shards, stale_shards
    from maskfocus_cli.io.checkpoint import CheckpointError
    shards = tmp_path / "checkpoints" / ".step-4.deepspeed"
    (shards / "optimizer").mkdir(parents=True)
    for r in range(2):
        (shards / "optimizer" / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"")
    check_shards(shards, 2, "save")
    with pytest.raises(CheckpointError, match="rank 0 sees 2 of 4 DeepSpeed optimiser shards .* a filesystem "
                                              "shared by all nodes"):
        check_shards(shards, 4, "save")
    with pytest.raises(CheckpointError, match="optimiser shards of 2 DeepSpeed ranks, this launch has 4: resume "
                                              "with --num_processes 2"):
        check_shards(shards, 4, "resume")
    assert stale_shards(tmp_path / "checkpoints") == [shards]


def test_checkpoints_record_the_resolved_sampler_and_a_resume_must_match_it(tmp_path, tiny_shapes_dir):
    """Null sampler fields resolve to the family's defaults of the version that runs: if those changed between
    a run and its resume, the resume would sample differently with an identical recipe."""
    p = recipe_file(tmp_path, tiny_shapes_dir, out="rs")
    Trainer(load_recipe(p, ["train.iterations=1"])).run()
    info_path = tmp_path / "rs" / "checkpoints" / "step-1" / "trainer.json"
    info = json.loads(info_path.read_text())
    import dataclasses

    from maskfocus_cli.engine.settings import sampler_settings
    r = load_recipe(p)
    assert info["sampler"] == dataclasses.asdict(sampler_settings(r.sampler, r.model.spec))
    assert set(info["eval_sampler"]) >= {"steps", "guidance_scale", "negative_prompt"}
    info["sampler"]["gumbel_temperature"] = 1.5  # as if the defaults had been 1.5 when the run started
    info_path.write_text(json.dumps(info))
    res = CliRunner().invoke(main, ["train", str(p), "--set", "train.iterations=2", "--resume", "latest"])
    assert res.exit_code == 2 and "sampler.gumbel_temperature (resolved): 1.5" in " ".join(res.output.split())


def test_training_a_real_model_on_geneval_s_evaluation_prompts_is_said(tmp_path, monkeypatch):
    """Checked against the cached official metadata (here the project's shared copy), never downloaded."""
    from types import SimpleNamespace

    from maskfocus_cli.engine.recipe_checks import warn_heldout_training
    official = Path(__file__).parents[3] / "shared" / "data" / "geneval" / "evaluation_metadata.jsonl"
    if not official.is_file():
        pytest.skip("../shared/data/geneval is absent")
    recipe = SimpleNamespace(data=SimpleNamespace(prompts="train.jsonl"))
    meissonic = SimpleNamespace(family="meissonic")
    rows = [json.loads(l) for l in official.read_text().splitlines()[:3]]
    prompts = [(r["prompt"].upper(), r) for r in rows] + [("a photo of a purple giraffe on the moon", None)]
    monkeypatch.setenv("MASKFOCUS_CACHE", str(tmp_path))
    said = []
    warn_heldout_training(recipe, meissonic, prompts, said.append)
    assert said == []  # no cached file: nothing to compare with, and nothing is fetched
    (tmp_path / "benchmarks" / "geneval").mkdir(parents=True)
    (tmp_path / "benchmarks" / "geneval" / "evaluation_metadata.jsonl").write_bytes(official.read_bytes())
    warn_heldout_training(recipe, meissonic, prompts, said.append)
    assert len(said) == 1 and "holds 3 of GenEval's evaluation prompts" in said[0]
    said.clear()
    warn_heldout_training(recipe, meissonic, prompts[3:], said.append)
    assert said == []
