"""Two gloo ranks on the CPU through `accelerate launch`: gradients are all-reduced through the wrapped model."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent

RECIPE = """
model: {{spec: "shapes:{model}"}}
sampler: {{steps: 5, guidance_scale: 2.0}}
critical: {{selector: info-gain, k: 2, reduction: {reduction}}}
rewards: [{{name: brightness}}]
train: {{algorithm: maskfocus, iterations: 2, prompts_per_iter: 2, group_size: 4, micro_batch: 2, lr: 1.0e-3,
        kl_beta: 0.05}}
output: {{dir: "{out}", checkpoint_every: 1, validate_every: 2}}
data: {{num_eval_prompts: 0, num_validation_prompts: 3}}
"""


def launch(nproc: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MASKFOCUS_TEST_THREADS="1")
    # torchrun-based launch; without GPUs the Accelerator runs the ranks on the CPU with gloo
    # (accelerate's --cpu flag launches several CPU processes only through mpirun)
    multi = ["--multi_gpu"] if nproc > 1 else []
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *multi, "--num_processes", str(nproc),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("reduction", ["batch", "sample"])
def test_two_ranks_stay_identical_and_match_one_process(tmp_path, tiny_shapes_dir, reduction):
    results = {}
    for n in (2, 1):
        out = tmp_path / f"w{n}"
        out.mkdir()
        recipe = tmp_path / f"r{n}.yaml"
        recipe.write_text(RECIPE.format(model=tiny_shapes_dir, out=out / "run", reduction=reduction))
        proc = launch(n, str(HERE / "ddp_worker.py"), str(recipe), str(out), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[n] = [torch.load(out / f"rank{r}.pt") for r in range(n)]
    r0, r1 = results[2]
    assert r0["world"] == 2
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), f"ranks drifted apart on {k}"
    # the all-reduced gradient equals the single-process gradient of the same global batch
    # (parameters are compared through gradients: Adam's first step turns fp noise in
    # near-zero gradients into lr-sized moves, which says nothing about the reduction)
    single = results[1][0]
    assert r0["grads"].keys() == single["grads"].keys()
    for k in single["grads"]:
        assert single["grads"][k].abs().max() > 0, k
        torch.testing.assert_close(r0["grads"][k], single["grads"][k], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(r1["grads"][k], single["grads"][k], rtol=1e-4, atol=1e-7)
    # routing on the whole batch's median entropy and (batch reduction) steps from the whole batch's
    # gain: the ranks' rollouts, steps and metrics are one process's
    for h2, h1 in zip(results[2][0]["history"], single["history"]):
        assert h2["reward"] == h1["reward"] and h2["explore_fraction"] == pytest.approx(h1["explore_fraction"])
        assert h2["kept"] == h1["kept"]
        assert h2.get("validation") == h1.get("validation")  # each rank sampled half the validation images
        assert h2["loss"] == pytest.approx(h1["loss"], abs=1e-6) and h2["kl"] == pytest.approx(h1["kl"], rel=1e-4)
        if reduction == "batch":
            assert h2["steps"] == h1["steps"]
    assert single["history"][1]["kl"] > 0
    assert "validation" in single["history"][1]



@pytest.mark.slow
def test_accelerate_launch_cli(tmp_path, tiny_shapes_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(model=tiny_shapes_dir, out=tmp_path / "run", reduction="batch"))
    tracker = ["--set", "output.log_with=tensorboard"] if importlib.util.find_spec("tensorboard") else []
    proc = launch(2, "-m", "maskfocus_cli", "train", str(recipe), "--set", "train.iterations=1", *tracker,
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    assert [r["iteration"] for r in rows] == [0]  # only the main process prints
    assert (tmp_path / "run" / "checkpoints" / "step-1" / "model.safetensors").is_file()
    if tracker:  # rows and hyper-parameters, written by the main process alone (the file names end .PID.N)
        files = list((tmp_path / "run" / "trackers").rglob("events.out.tfevents.*"))
        assert len(files) >= 2 and len({f.name.split(".")[-2] for f in files}) == 1, files


PRETRAIN = """
model: {{spec: "shapes:{model}"}}
train: {{algorithm: pretrain, iterations: 1, batch_size: {batch}, lr: 1.0e-3}}
output: {{dir: "{out}", checkpoint_every: 1}}
data: {{num_eval_prompts: 0}}
"""


@pytest.mark.slow
def test_two_rank_pretraining_logs_the_whole_batch_and_refuses_an_uneven_split(tmp_path, tiny_shapes_dir):
    recipe = tmp_path / "p.yaml"
    recipe.write_text(PRETRAIN.format(model=tiny_shapes_dir, out=tmp_path / "run", batch=8))
    proc = launch(2, str(HERE / "ddp_worker.py"), str(recipe), str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    rows = [rk["history"][0] for rk in ranks]
    # each rank trained on its half; both log the mean over the whole batch (rank 0 logged only its half)
    assert rows[0]["loss"] == rows[1]["loss"] and rows[0]["token_accuracy"] == rows[1]["token_accuracy"]
    recipe.write_text(PRETRAIN.format(model=tiny_shapes_dir, out=tmp_path / "odd", batch=7))
    proc = launch(2, "-m", "maskfocus_cli", "train", str(recipe), cwd=tmp_path)
    assert proc.returncode != 0 and "train.batch_size = 7 scenes must split evenly over 2 processes" in proc.stderr
