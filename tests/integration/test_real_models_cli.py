"""Every subcommand on tiny random instances of the real architectures (aMUSEd, Meissonic, Show-o).

Each family's tiny pipeline folder is built once, saved in the real layout, and
loaded through our adapter (strict keys) by the CLI itself: ``sample``,
``profile-steps``, a 1-iteration ``train`` (full and LoRA), ``export``; then the
export round trip: the exported folder samples bit-identically to ``--checkpoint``,
is loadable by our adapter, and (aMUSEd) by diffusers' ``AmusedPipeline``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import load_file

from maskfocus_cli.cli import main

FAMILIES = ("amused", "meissonic")
PROMPTS = ["a red circle", "two blue squares"]


def build(family: str, folder: Path) -> Path:
    if family == "amused":
        from maskfocus_cli.models.amused_tiny import build_tiny_amused
        return build_tiny_amused(folder)
    from maskfocus_cli.models.meissonic_tiny import build_tiny_meissonic
    return build_tiny_meissonic(folder)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest single-threaded; 2 threads on a busy 2-core box are ~20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-real")
    return {f: build(f, root / f) for f in FAMILIES}


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text("\n".join(PROMPTS) + "\n")
    return p


def invoke(args: list) -> Result:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, (res.output, res.exception)
    return res


def json_rows(res) -> list[dict]:
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def recipe(tmp: Path, spec: str, prompts: Path, out: Path, lora_rank: int = 0) -> Path:
    p = tmp / f"{out.name}.yaml"
    p.write_text(f"""
model: {{spec: "{spec}", device: cpu}}
sampler: {{steps: 4, guidance_scale: 2.0}}
critical: {{selector: info-gain, k: 2}}
rewards: [{{name: brightness}}]
train: {{iterations: 1, prompts_per_iter: 2, group_size: 2, micro_batch: 4, lr: 1.0e-2, lora_rank: {lora_rank}}}
output: {{dir: "{out}", checkpoint_every: 1}}
data: {{prompts: "{prompts}", eval_prompts: "{prompts}", num_eval_prompts: 2}}
""")
    return p


def sample_bytes(spec: str, out: Path, *extra) -> list[bytes]:
    res = invoke(["sample", *PROMPTS[:1], "--model", spec, "--n", 2, "--steps", 4, "--cfg", 2.0, "--seed", 7,
                  "--device", "cpu", "--out", out, *extra])
    rows = json_rows(res)
    assert len(rows) == 2
    return [Path(r["path"]).read_bytes() for r in rows]


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_and_profile(family, tiny_folders, prompt_file, tmp_path):
    spec = f"{family}:{tiny_folders[family]}"
    images = sample_bytes(spec, tmp_path / "s")
    assert images[0] != images[1]  # seeds 7 and 8 differ
    assert sample_bytes(spec, tmp_path / "s2") == images  # and are reproducible

    res = invoke(["profile-steps", "--prompts", prompt_file, "--model", spec, "--steps", 4, "--top-k", 2,
                  "--n", 2, "--device", "cpu", "--out", tmp_path / "p"])
    rows = json_rows(res)
    assert [(r["prompt_index"], r["step"]) for r in rows] == [(i, t) for i in range(2) for t in range(4)]
    assert all(sum(r["critical"] for r in rows if r["prompt_index"] == i) == 2 for i in range(2))
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["model"] == spec and len(summary["critical_steps"]) == 2
    assert (tmp_path / "p" / "profile.png").is_file()


@pytest.mark.parametrize("lora_rank", [0, 4], ids=["full", "lora"])
@pytest.mark.parametrize("family", FAMILIES)
def test_train_export_round_trip(family, lora_rank, tiny_folders, prompt_file, tmp_path):
    from safetensors.torch import load_file
    base = tiny_folders[family]
    spec = f"{family}:{base}"
    run = tmp_path / "run"
    res = invoke(["train", recipe(tmp_path, spec, prompt_file, run, lora_rank)])
    rows = json_rows(res)
    assert [r["iteration"] for r in rows] == [0]
    ckpt = run / "checkpoints" / "step-1"
    assert (ckpt / "model.safetensors").is_file()
    assert (ckpt / "lora.safetensors").is_file() == bool(lora_rank)
    assert (run / "samples" / "final.png").is_file() and (run / "reward.png").is_file()

    # the checkpoint really is a fine-tuned transformer: same keys as the base, some values moved
    tuned = load_file(ckpt / "model.safetensors")
    orig = load_file(base / "transformer" / "diffusion_pytorch_model.safetensors")
    assert tuned.keys() == orig.keys()
    assert any(not torch.equal(tuned[k], orig[k]) for k in orig)

    out = tmp_path / "exported"
    facts = json_rows(invoke(["export", ckpt, "--to", out]))[0]
    assert facts["family"] == family and facts["iteration"] == 1 and facts["algorithm"] == "maskfocus"
    # the original layout, frozen components untouched, the tuned transformer swapped in
    for comp in ("model_index.json", "scheduler/scheduler_config.json", "vqvae/config.json",
                 "text_encoder/config.json", "transformer/config.json"):
        assert (out / comp).is_file(), comp
    for f in ("vqvae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert (out / f).read_bytes() == (base / f).read_bytes(), f
    exported = load_file(out / "transformer" / "diffusion_pytorch_model.safetensors")
    assert exported.keys() == tuned.keys() and all(torch.equal(exported[k], tuned[k]) for k in tuned)
    card = (out / "README.md").read_text()
    reward = json.loads((ckpt / "trainer.json").read_text())["last_metrics"]["reward"]["mean"]
    assert rows[0]["reward"]["mean"] == reward
    assert f"base model: `{spec}`" in card and "algorithm: `maskfocus`" in card  # base model, algorithm
    assert '"name": "brightness"' in card and f'"lora_rank": {lora_rank}' in card  # the recipe
    assert f"* reward.mean: {reward:.6g}" in card  # final metrics

    # bit-identical samples: exported folder == base + --checkpoint; differs from the untuned base
    from_export = sample_bytes(f"{family}:{out}", tmp_path / "a")
    from_ckpt = sample_bytes(spec, tmp_path / "b", "--checkpoint", ckpt)
    assert from_export == from_ckpt
    assert from_export != sample_bytes(spec, tmp_path / "c")

    if family == "amused":
        from diffusers import AmusedPipeline
        pipe = AmusedPipeline.from_pretrained(out)
        for name, p in pipe.transformer.state_dict().items():
            assert torch.equal(p, tuned[name]), name
        images = pipe(PROMPTS[0], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                      output_type="pt").images
        assert images.shape[0] == 1 and torch.isfinite(images).all()


def test_export_follows_a_relative_or_moved_base_model(tiny_folders, prompt_file, tmp_path, monkeypatch):
    """A run started with a relative model path exports from any directory, and a base model moved
    since training is named with --model (not by hand-editing trainer.json)."""
    import shutil
    base = tmp_path / "bases" / "amused"
    shutil.copytree(tiny_folders["amused"], base)
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    invoke(["train", recipe(tmp_path, "amused:bases/amused", prompt_file, run)])
    ckpt = run / "checkpoints" / "step-1"
    assert json.loads((ckpt / "trainer.json").read_text())["model"] == f"amused:{base.resolve()}"
    monkeypatch.chdir(run)  # another working directory
    invoke(["export", ckpt, "--to", tmp_path / "e1"])
    moved = tmp_path / "moved"
    base.rename(moved)
    for args, message in [([], "name where it is now with --model amused:DIR"),
                          (["--model", f"meissonic:{moved}"], "trained from a amused model")]:
        res = CliRunner().invoke(main, ["export", str(ckpt), "--to", str(tmp_path / "e2"), *args])
        assert res.exit_code == 2 and message in res.stderr, res.output
        assert len(res.stderr.strip().splitlines()) == 1
    invoke(["export", ckpt, "--to", tmp_path / "e3", "--model", f"amused:{moved}"])
    assert (tmp_path / "e3" / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes() == \
           (tmp_path / "e1" / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert f"base model: `amused:{moved}`" in (tmp_path / "e3" / "README.md").read_text()


@pytest.fixture(scope="session")
def tiny_showo(tmp_path_factory) -> Path:
    from maskfocus_cli.models.showo_tiny import build_tiny_showo
    return build_tiny_showo(tmp_path_factory.mktemp("tiny-showo") / "showo")


@pytest.mark.parametrize("lora_rank", [0, 4], ids=["full", "lora"])
def test_showo_every_subcommand(tiny_showo, prompt_file, tmp_path, lora_rank):
    spec = f"showo:{tiny_showo}"
    images = sample_bytes(spec, tmp_path / "s")
    assert images[0] != images[1]
    res = invoke(["profile-steps", "--prompts", prompt_file, "--model", spec, "--steps", 4, "--top-k", 2,
                  "--n", 2, "--device", "cpu", "--out", tmp_path / "p"])
    assert len(json_rows(res)) == 8 and (tmp_path / "p" / "profile.png").is_file()
    run = tmp_path / "run"
    invoke(["train", recipe(tmp_path, spec, prompt_file, run, lora_rank)])
    ckpt = run / "checkpoints" / "step-1"
    assert (ckpt / "lora.safetensors").is_file() == bool(lora_rank)
    out = tmp_path / "exported"
    facts = json_rows(invoke(["export", ckpt, "--to", out]))[0]
    assert facts["family"] == "showo" and (out / "README.md").is_file()
    from_export = sample_bytes(f"showo:{out}", tmp_path / "a")
    assert from_export == sample_bytes(spec, tmp_path / "b", "--checkpoint", ckpt)
    assert from_export != images


def test_a_real_model_is_sampled_with_its_family_s_own_settings_unless_given(tiny_folders, tmp_path):
    """aMUSEd at the built-in world's CFG 3 would score below its published numbers: what is not given comes from
    diffusers' AmusedPipeline defaults (CFG 10, noise 2 → 0), and what is given wins."""
    spec = f"amused:{tiny_folders['amused']}"
    args = ["evaluate", "--bench", "shapes", "--model", spec, "--steps", 4, "--num-prompts", 2, "--n", 1,
            "--device", "cpu"]
    invoke([*args, "--out", tmp_path / "a"])
    sampler = json.loads((tmp_path / "a" / "summary.json").read_text())["sampler"]
    assert (sampler["steps"], sampler["guidance_scale"], sampler["gumbel_temperature"]) == (4, 10.0, 2.0)
    invoke([*args, "--cfg", 2.5, "--gumbel", 0, "--out", tmp_path / "b"])
    sampler = json.loads((tmp_path / "b" / "summary.json").read_text())["sampler"]
    assert (sampler["guidance_scale"], sampler["gumbel_temperature"]) == (2.5, 0.0)
    row = json_rows(invoke(["sample", "a red circle", "--model", spec, "--device", "cpu", "--out", tmp_path / "s"]))[0]
    assert (row["steps"], row["cfg"], row["gumbel"]) == (12, 10.0, 2.0)  # every default: the pipeline's


def train_shipped_recipe(name: str, reward_path_key: str, spec: str, prompts: Path, tmp_path: Path,
                         shrink: list[str]) -> dict:
    """A shipped real-model recipe as a user runs it: refused with every placeholder named, then filled in (a
    cheap reward for the real one, sizes shrunk) and trained one iteration into tmp_path/run; its trainer.json."""
    recipe_path = Path(__file__).parents[2] / "recipes" / name
    res = CliRunner().invoke(main, ["train", str(recipe_path), "--out", str(tmp_path / "unfilled")])
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "placeholders to fill in: model.spec, data.prompts, data.eval_prompts, " \
        f"{reward_path_key}" in said, res.output
    sets = [f"model.spec={spec}", f"data.prompts={prompts}", f"data.eval_prompts={prompts}",
            "rewards=[{name: brightness}]", "train.iterations=1", "model.device=cpu",
            "train.mixed_precision=no",  # accelerate's precision is per process: other tests set "no"
            *shrink]
    invoke(["train", recipe_path, *[a for s in sets for a in ("--set", s)], "--out", tmp_path / "run"])
    return json.loads((tmp_path / "run" / "checkpoints" / "step-1" / "trainer.json").read_text())


def test_the_shipped_showo_mask_grpo_recipe_runs_once_its_placeholders_are_filled(tiny_showo, prompt_file,
                                                                                  tmp_path):
    """recipes/showo-mask-grpo.yaml as a user runs it (sizes shrunk, a cheap reward for the CLIP one): its rollouts
    sample without guidance and its grids with the published w = 5, as the official training code does."""
    run = tmp_path / "run"
    info = train_shipped_recipe("showo-mask-grpo.yaml", "rewards.0.options.pretrained", f"showo:{tiny_showo}",
                                prompt_file, tmp_path, ["train.prompts_per_iter=2", "train.group_size=2",
                                                        "sampler.steps=4"])
    assert info["algorithm"] == "mask-grpo" and info["last_metrics"]["steps"] == [0, 1, 2, 3]
    assert info["sampler"]["guidance_scale"] == 0.0 and info["eval_sampler"]["guidance_scale"] == 5.0
    assert info["eval_sampler"]["steps"] == 4 and info["recipe"]["train"]["kl_beta"] == 0.0
    # the official optimiser: biases and norm scales free of weight decay, every matrix at 0.02
    groups = torch.load(run / "checkpoints" / "step-1" / "training_state.pt")["optimizer"]["param_groups"]
    sizes = {g["weight_decay"]: len(g["params"]) for g in groups}
    weights = load_file(run / "checkpoints" / "step-1" / "model.safetensors")
    assert sizes == {0.02: sum(w.dim() >= 2 for w in weights.values()), 0.0: sum(w.dim() < 2 for w in weights.values())}


def test_the_shipped_amused_recipe_runs_once_its_placeholders_are_filled(tiny_folders, prompt_file, tmp_path):
    """recipes/amused-hps.yaml as a user runs it (sizes shrunk, a cheap reward for HPS): MaskFocus at aMUSEd's own
    CFG 10, two critical steps."""
    run = tmp_path / "run"
    info = train_shipped_recipe("amused-hps.yaml", "rewards.0.options.weights", f"amused:{tiny_folders['amused']}",
                                prompt_file, tmp_path, ["sampler.steps=5"])
    assert info["algorithm"] == "maskfocus" and info["sampler"]["guidance_scale"] == 10.0
    steps = info["last_metrics"]["steps"]
    assert info["last_metrics"]["kept"] == 8 and len(steps) == 2 and set(steps) <= {0, 1, 2}  # candidates 0 … T−3
    assert (run / "samples" / "final.png").is_file()
