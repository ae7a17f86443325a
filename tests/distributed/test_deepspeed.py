"""DeepSpeed ZeRO-2 on two gloo CPU ranks through `accelerate launch --use_deepspeed`: one optimiser step per
iteration however many backward passes it takes, the same update as one process, and per-rank optimiser shards
that resume bit for bit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from maskfocus_cli.cli import main

pytest.importorskip("deepspeed")

HERE = Path(__file__).resolve().parent

# micro_batch 2 with 4 images per rank and k = 2 steps: 4 backward passes per rank per optimiser step
RECIPE = """
model: {{spec: "shapes:{model}"}}
sampler: {{steps: 5, guidance_scale: 2.0}}
critical: {{selector: info-gain, k: 2}}
rewards: [{{name: brightness}}]
train: {{algorithm: maskfocus, iterations: 2, prompts_per_iter: 2, group_size: 4, micro_batch: 2, lr: 1.0e-3,
        kl_beta: 0.05, warmup: 1, grad_clip: 1.0}}
output: {{dir: "{out}", checkpoint_every: 1, keep_last: 0}}
data: {{num_eval_prompts: 0}}
"""


SHIPPED_CONFIG = Path(__file__).parents[2] / "recipes" / "accelerate" / "deepspeed-zero2.yaml"


def launch(how: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``how``: "flags" (--use_deepspeed, ZeRO-2), "zero1" (ZeRO-1), "config" (the shipped accelerate config) or
    "one" (one process, no DeepSpeed)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MASKFOCUS_TEST_THREADS="1", DS_ACCELERATOR="cpu")
    flags = ["--use_deepspeed", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    given = {"flags": [*flags, "--zero_stage", "2"], "zero1": [*flags, "--zero_stage", "1"],
             "config": ["--config_file", str(SHIPPED_CONFIG), "--dynamo_backend", "no"],
             "one": ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]}[how]
    n = ["--num_processes", "1" if how == "one" else "2"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *given, *n, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


@pytest.mark.slow
def test_zero2_matches_one_process_and_resumes_bit_for_bit(tmp_path, tiny_shapes_dir):
    runs = {}
    for name, how in (("ds", "flags"), ("one", "one")):
        out = tmp_path / name
        out.mkdir()
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(RECIPE.format(model=tiny_shapes_dir, out=out / "run"))
        proc = launch(how, str(HERE / "ddp_worker.py"), str(recipe), str(out), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = [torch.load(out / f"rank{r}.pt") for r in range(2 if how == "flags" else 1)]
    r0, r1 = runs["ds"]
    single = runs["one"][0]
    assert r0["world"] == 2 and not r0["grads"]  # ZeRO-2: gradients live in partitions, not on .grad
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), f"ranks drifted apart on {k}"
    # same rollouts, rewards, losses; the gradient DeepSpeed all-reduced has the single process's norm
    for h2, h1 in zip(r0["history"], single["history"]):
        assert h2["reward"] == h1["reward"] and h2["kept"] == h1["kept"] and h2["steps"] == h1["steps"]
        assert h2["loss"] == pytest.approx(h1["loss"], abs=1e-6)
    assert r0["history"][0]["grad_norm"] == pytest.approx(single["history"][0]["grad_norm"], rel=1e-4)
    # the learning-rate schedule (warm-up: lr / 2, then lr) reaches the optimiser DeepSpeed steps
    assert r0["lr"] == r0["scheduler_lr"] == single["lr"] == [1e-3]
    # one optimiser step per iteration (not one per backward): after the first, every weight whose gradient
    # is clearly non-zero moved by Adam's first step, lr · sign(g), exactly as in the single process
    ds1, one1 = weights(tmp_path / "ds/run/checkpoints/step-1"), weights(tmp_path / "one/run/checkpoints/step-1")
    base = weights(tiny_shapes_dir)
    for k, g in single["grads"].items():
        clear = g.abs() > 1e-3 * g.abs().max()
        assert clear.any()
        torch.testing.assert_close(ds1[k][clear], one1[k][clear], rtol=0, atol=1e-6)
        assert (ds1[k][clear] - base[k][clear]).abs().min() > 0.5e-3 * 0.5  # it moved (warm-up: lr / 2)
    # and the second step, at the full lr, lands where the single process's does (a step at the warm-up's lr / 2
    # would be ~5e-4 away; the weights Adam moved on noise in step 1 perturb step 2 by far less)
    ds2, one2 = weights(tmp_path / "ds/run/checkpoints/step-2"), weights(tmp_path / "one/run/checkpoints/step-2")
    for k, g in single["grads"].items():
        clear = g.abs() > 1e-3 * g.abs().max()
        torch.testing.assert_close(ds2[k][clear], one2[k][clear], rtol=0, atol=5e-5)
    # each rank's optimiser shard is in the checkpoint; resuming from step 1 (launched with the shipped accelerate
    # config this time) repeats step 2 bit for bit
    ckpt1 = tmp_path / "ds/run/checkpoints/step-1"
    assert sorted(p.name for p in (ckpt1 / "deepspeed" / "optimizer").glob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    proc = launch("config", "-m", "maskfocus_cli", "train", str(tmp_path / "ds.yaml"), "--resume", str(ckpt1),
                  "--out", str(tmp_path / "resumed"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = weights(tmp_path / "resumed/checkpoints/step-2"), weights(tmp_path / "ds/run/checkpoints/step-2")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(l) for l in (tmp_path / "resumed/metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1]  # a branch: the earlier row stays in the first run's folder
    assert rows[0]["loss"] == r0["history"][1]["loss"] and rows[0]["grad_norm"] == r0["history"][1]["grad_norm"]
    # a DeepSpeed checkpoint resumed without DeepSpeed: a clear error, not a KeyError
    res = CliRunner().invoke(main, ["train", str(tmp_path / "ds.yaml"), "--resume", str(ckpt1),
                                    "--out", str(tmp_path / "plain")])
    assert res.exit_code == 2 and "saved by a DeepSpeed run" in res.output and "--use_deepspeed" in res.output, \
        res.output


@pytest.mark.slow
@pytest.mark.parametrize("algorithm, how, extra", [("maskfocus", "flags", ["train.inner_epochs=2",
                                                                            "train.ema_decay=0.5"]),
                                                   ("mask-grpo", "zero1", [])])
def test_bf16_under_deepspeed_is_autocast_as_under_ddp(tmp_path, tiny_shapes_dir, algorithm, how, extra):
    """DeepSpeed's own bf16 would keep the weights in bf16; ours is autocast, as under DDP. MaskFocus: the reference
    runs under the policy's autocast, or their precision gap reads as KL at iteration 0 (weights equal); two
    inner epochs (two DeepSpeed steps in one iteration; the logged norm is the second's) and a weight average.
    Mask-GRPO (on ZeRO-1, whose non-final backward passes skip the all-reduce): its loss has no autocast of its
    own, so the engine's forward must carry it, or the gradient differs from the bf16 single process's."""
    rows = {}
    for launcher in (how, "one"):
        recipe = tmp_path / f"{launcher}.yaml"
        recipe.write_text(RECIPE.format(model=tiny_shapes_dir, out=tmp_path / launcher).replace(
            "algorithm: maskfocus", f"algorithm: {algorithm}"))
        sets = [a for kv in ["train.iterations=1", "train.mixed_precision=bf16", *extra] for a in ("--set", kv)]
        proc = launch(launcher, "-m", "maskfocus_cli", "train", str(recipe), *sets, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows[launcher] = [json.loads(l) for l in proc.stdout.splitlines()]  # stdout: JSON rows and nothing else
    ds, one = rows[how][0], rows["one"][0]
    if algorithm == "maskfocus":
        assert ds["kl"] == 0.0 and one["kl"] == 0.0
    assert ds["loss"] == pytest.approx(one["loss"], abs=1e-6)
    assert ds["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-3)
    weights_ds = weights(tmp_path / how / "checkpoints/step-1")
    assert all(v.dtype == torch.float32 for v in weights_ds.values())  # the trained weights stay fp32
    if extra:  # the checkpoint hands out the weight average, and keeps the raw policy for --resume
        policy = load_file(str(tmp_path / how / "checkpoints/step-1/policy.safetensors"))
        assert any(not torch.equal(weights_ds[k], policy[k]) for k in weights_ds)


@pytest.mark.slow
def test_lora_under_zero2_resumes_bit_for_bit(tmp_path, tiny_shapes_dir):
    """Under LoRA the base weights are frozen: DeepSpeed's checkpoint leaves them out and its resume must not
    require them."""
    recipe = tmp_path / "lora.yaml"
    recipe.write_text(RECIPE.format(model=tiny_shapes_dir, out=tmp_path / "run").replace(
        "kl_beta: 0.05", "kl_beta: 0.05, lora_rank: 4"))
    proc = launch("flags", "-m", "maskfocus_cli", "train", str(recipe), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = launch("flags", "-m", "maskfocus_cli", "train", str(recipe), "--resume",
                  str(tmp_path / "run/checkpoints/step-1"), "--out", str(tmp_path / "resumed"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (load_file(str(tmp_path / run / "checkpoints/step-2/lora.safetensors")) for run in ("run", "resumed"))
    first = load_file(str(tmp_path / "run/checkpoints/step-1/lora.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], first[k]) for k in a)  # the second iteration trained the adapter
