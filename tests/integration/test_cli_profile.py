"""`maskfocus profile-steps` end to end on a tiny random shapes model, plus the profile engine's maths."""

import json
import math

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from maskfocus_cli.cli import main
from maskfocus_cli.engine.critical import ClipEmbedder, CodebookEmbedder, trajectory_gain
from maskfocus_cli.engine.generate import generate, make_jobs
from maskfocus_cli.engine.profile import ProfileResult, PromptProfile, masked_mean_entropy, profile_steps
from maskfocus_cli.engine.routing import EntropyRouter
from maskfocus_cli.engine.sampling import SamplerSettings, Trajectory, sample

PROMPTS = ["a photo of a red circle", "a photo of two blue squares", "a photo of a green triangle"]


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
    from maskfocus_cli.models.shapes import new_shapes_model
    from maskfocus_cli.shapes.tokenizer import fit_default
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-shapes")
    new_shapes_model(fit_default(num_scenes=200), d_model=32, n_layers=1, n_heads=2, d_ff=64).save(folder)
    return f"shapes:{folder}"


def run(args, input=None):
    return CliRunner().invoke(main, args, input=input)


# --------------------------------------------------------------------------- the command
def test_profile_steps_end_to_end(tiny_shapes, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "OUT"
    res = run(["profile-steps", "--prompts", str(prompts), "--model", tiny_shapes, "--steps", "16",
               "--top-k", "3", "--n", "2", "--out", str(out)])
    assert res.exit_code == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 3 * 16
    assert [(r["prompt_index"], r["step"]) for r in rows] == [(i, t) for i in range(3) for t in range(16)]
    assert {r["prompt"] for r in rows} == set(PROMPTS)
    for i in range(3):
        mine = [r for r in rows if r["prompt_index"] == i]
        assert sum(r["critical"] for r in mine) == 3
        # a prompt's critical steps are the top-3 of its own gain row over steps 0-13 (ties to the earlier step)
        top = sorted(sorted(range(14), key=lambda t: (-mine[t]["gain"], t))[:3])
        assert [r["step"] for r in mine if r["critical"]] == top
        assert mine[-1]["similarity"] == pytest.approx(1.0, abs=1e-4)  # x̂0 of the last step is the final grid

    summary = json.loads((out / "summary.json").read_text())
    for key in ("model", "steps", "top_k", "embed", "critical_steps", "selection_frequency", "mean_gain",
                "mean_similarity", "mean_entropy", "mask_ratio", "gain_concentration"):
        assert key in summary
    assert (summary["model"], summary["steps"], summary["top_k"], summary["embed"]) == \
           (tiny_shapes, 16, 3, "codebook")
    freq = [sum(r["critical"] for r in rows if r["step"] == t) for t in range(16)]
    assert summary["selection_frequency"] == freq and sum(freq) == 3 * 3
    mean_gain = [sum(r["gain"] for r in rows if r["step"] == t) / 3 for t in range(16)]
    assert summary["mean_gain"] == pytest.approx(mean_gain, abs=1e-5)
    recommended = sorted(sorted(range(14), key=lambda t: (-summary["mean_gain"][t], t))[:3])
    assert summary["critical_steps"] == recommended
    conc = sum(summary["mean_gain"][t] for t in recommended) / sum(summary["mean_gain"])
    assert summary["gain_concentration"] == pytest.approx(conc, abs=1e-4)
    assert summary["mask_ratio"][0] == 1.0 and summary["mask_ratio"] == sorted(summary["mask_ratio"], reverse=True)

    with Image.open(out / "profile.png") as im:
        im.load()
        assert im.format == "PNG" and im.width > 600 and im.height > 400
    assert "step profile" in res.stderr and "★" in res.stderr
    assert "recommended critical steps (top-3 of the mean gain over steps 0..13)" in res.stderr


def test_positional_prompts_from_stdin_and_routing(tiny_shapes, tmp_path):
    res = run(["profile-steps", "--prompts", "-", "--model", tiny_shapes, "--steps", "4", "--top-k", "2",
               "--n", "2", "--routing", "--strip", "0", "--out", str(tmp_path / "o")],
              input=PROMPTS[0] + "\n")
    assert res.exit_code == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 4
    # step 0: both images see the same all-[MASK] grid and prompt -> equal entropy -> nobody is below
    # the median; afterwards their grids differ and exactly one of the two explores
    assert [r["explore_fraction"] for r in rows] == [0.0, 0.5, 0.5, 0.5]
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["routing"] is True
    assert "top-2 of the mean gain over steps 0..1)" in res.stderr  # T−2 candidates


@pytest.mark.parametrize("args, message", [
    (["--top-k", "5", "--steps", "4"], "--top-k 5 is larger than the step count"),
    (["--embed", "clip"], "--clip-weights PATH"),
    (["--embed", "clip", "--clip-weights", "/nonexistent/clip.bin"], "file not found"),
    (["--n", "0"], "--n must be at least 1"),
    (["--device", "bogus"], "device 'bogus': use auto | cpu | cuda | cuda:N"),
    (["--cfg", "nan"], "--cfg must be a finite number (got nan)"),
    (["--temperature", "nan"], "--temperature must be a finite number > 0 (got nan)"),
    (["--gumbel", "inf"], "--gumbel must be a finite number >= 0 (got inf)"),
])
def test_bad_options_one_line_exit_2(tiny_shapes, tmp_path, args, message):
    res = run(["profile-steps", PROMPTS[0], "--model", tiny_shapes, "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and res.stdout == ""


def test_unknown_clip_architecture_one_line_exit_2(tiny_shapes, tmp_path):
    weights = tmp_path / "clip.bin"
    weights.write_bytes(b"not a checkpoint")  # (an unknown architecture fails before the file is read)
    res = run(["profile-steps", PROMPTS[0], "--model", tiny_shapes, "--out", str(tmp_path / "o"),
               "--embed", "clip", "--clip-model", "ViT-X-99", "--clip-weights", str(weights)])
    assert res.exit_code == 2 and "unknown open_clip architecture 'ViT-X-99'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and len(res.stderr) < 300  # not open_clip's whole list
    res = run(["profile-steps", PROMPTS[0], "--model", tiny_shapes, "--out", str(tmp_path / "o"),
               "--embed", "clip", "--clip-model", "ViT-B-32", "--clip-weights", str(weights)])
    assert res.exit_code == 2 and "not an open_clip checkpoint of that architecture" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "weights_only" not in res.stderr


def test_empty_prompts_one_line_exit_2(tiny_shapes, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    res = run(["profile-steps", "--prompts", str(empty), "--model", tiny_shapes, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and f"--prompts {empty} holds no prompts" in " ".join(res.stderr.split())
    assert len(res.stderr.strip().splitlines()) == 1


def test_non_utf8_prompt_file_is_named(tiny_shapes, tmp_path):
    latin1 = tmp_path / "bad.txt"
    latin1.write_bytes(b"\xff\xfe")
    res = run(["profile-steps", "--prompts", str(latin1), "--model", tiny_shapes, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and f"--prompts {latin1} is not UTF-8 text" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_unknown_word_is_a_user_error(tiny_shapes, tmp_path):
    res = run(["profile-steps", "a photo of a red dragon", "--model", tiny_shapes, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "dragon" in res.stderr
    assert not (tmp_path / "o").exists()  # a failed run leaves no empty --out


def test_summary_records_what_regenerates_the_images(tiny_shapes, tmp_path):
    res = run(["profile-steps", "a photo of a circle", "--model", tiny_shapes, "--steps", "4", "--n", "2",
               "--temperature", "0.5", "--gumbel", "1.0", "--routing", "--batch-size", "2",
               "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert (summary["temperature"], summary["gumbel"], summary["routing"], summary["batch_size"]) == \
        (0.5, 1.0, True, 2)
    assert summary["dtype"] == "fp32"


def test_without_sampler_options_the_family_s_own_settings_are_profiled_and_recorded(tiny_shapes, tmp_path):
    res = run(["profile-steps", "a photo of a circle", "--model", tiny_shapes, "--n", "1", "--top-k", "2",
               "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert (summary["cfg"], summary["gumbel"], len(summary["mean_gain"])) == (3.0, 2.0, 16)  # shapes: 16 / 3 / 2
    assert "steps 0..13" in res.stderr  # candidates 0…T−3 of T = 16


# --------------------------------------------------------------------------- engine maths
def hand_profile(index, gain, sim, ent, critical):
    t = len(gain[0])
    return PromptProfile(index=index, prompt=f"p{index}", similarity=torch.tensor(sim), gain=torch.tensor(gain),
                         entropy=torch.tensor(ent), explore=None, critical=torch.tensor(critical),
                         mask_ratio=[1.0 - s / t for s in range(t)])


def test_profile_result_aggregates_by_hand():
    res = ProfileResult(steps=4, top_k=2, mask_ratio=[1.0, 0.75, 0.5, 0.25])
    # prompt 0: 2 images; prompt 1: 2 images (means per prompt first, then over prompts)
    res.prompts.append(hand_profile(0, [[0.4, 0.1, 0.2, 0.0], [0.2, 0.5, 0.0, 0.0]],
                                    [[0.5, 0.9, 0.8, 1.0], [0.7, 0.5, 1.0, 1.0]], [[2.0, 1.0, 1.0, 0.0]] * 2, [0, 1]))
    res.prompts.append(hand_profile(1, [[0.0, 0.4, 0.5, 0.0]] * 2,
                                    [[0.1, 0.1, 0.5, 1.0]] * 2, [[4.0, 3.0, 1.0, 0.0]] * 2, [1, 2]))
    # a prompt's gain is that of its images' mean similarity (official): prompt 0 [0.6, 0.7, 0.9, 1] ->
    # [0.1, 0.2, 0.1, 0] (the mean of per-image |Δ| would be [0.3, 0.3, 0.1, 0]); prompt 1 [0, 0.4, 0.5, 0]
    torch.testing.assert_close(res.prompts[0].batch_gain, torch.tensor([0.1, 0.2, 0.1, 0.0]))
    torch.testing.assert_close(res.mean_gain, torch.tensor([0.05, 0.3, 0.3, 0.0]))
    torch.testing.assert_close(res.mean_similarity, torch.tensor([0.35, 0.4, 0.7, 1.0]))
    torch.testing.assert_close(res.mean_entropy, torch.tensor([3.0, 2.0, 1.0, 0.0]))
    assert res.selection_frequency.tolist() == [1, 2, 1, 0]
    assert res.critical_steps.tolist() == [0, 1]  # steps T−2, T−1 are no candidates (official)
    assert res.gain_concentration == pytest.approx(0.35 / 0.65)
    s = res.summary(model="m", embed="codebook")
    assert s["critical_steps"] == [0, 1] and s["selection_frequency"] == [1, 2, 1, 0]
    assert s["model"] == "m" and s["num_prompts"] == 2


def test_gain_concentration_is_null_without_any_gain():
    res = ProfileResult(steps=2, top_k=1, mask_ratio=[1.0, 0.5])
    res.prompts.append(hand_profile(0, [[0.0, 0.0]], [[1.0, 1.0]], [[0.0, 0.0]], [0]))
    assert res.gain_concentration is None and res.summary()["gain_concentration"] is None


def test_masked_mean_entropy_divides_by_the_masked_count():
    ent = torch.tensor([[[1.0, 2.0, 3.0, 2.0]], [[0.0, 3.0, 0.0, 0.0]]])  # T=2, B=1, N=4; counts 4 then 1
    z = torch.zeros(2, 1, 4)
    traj = Trajectory(states=z.long(), x0=z.long(), newly=z.bool(), entropy=ent, logprob=z,
                      threshold=torch.zeros(2, 1), explore=torch.zeros(2, 1, dtype=torch.bool),
                      final=torch.zeros(1, 4, dtype=torch.long), counts=[4, 1, 0])
    torch.testing.assert_close(masked_mean_entropy(traj), torch.tensor([[2.0, 3.0]]))


def test_profile_adds_no_forward_and_profiles_the_sampled_images(toy):
    """Exactly the forwards sampling needs, and the gains of the very trajectories `sample` makes."""
    calls = []
    hook = toy.transformer.register_forward_hook(lambda *a: calls.append(1))
    settings = SamplerSettings(steps=4, guidance_scale=2.0)
    streamed = []
    res = profile_steps(toy, ["a", "b", "c"], settings, CodebookEmbedder(toy), top_k=2, n=2, seed=7,
                        batch_size=4, on_prompt=lambda p: streamed.append(p.index))
    profile_calls = len(calls)
    calls.clear()
    for _ in generate(toy, make_jobs(["a", "b", "c"], 2, 7), settings, batch_size=4):
        pass
    hook.remove()
    assert profile_calls == len(calls) == 2 * 4  # two batches (4 + 2 images) × 4 steps, CFG in one forward
    assert streamed == [0, 1, 2] and [p.index for p in res.prompts] == [0, 1, 2]
    for i, p in enumerate(res.prompts):
        assert p.gain.shape == (2, 4) and len(p.critical) == 2
        assert p.critical.tolist() == sorted(p.critical.tolist())
        # reference: sample this prompt's images alone (seeds 7, 8) and compute the gain directly
        prompt = "abc"[i]
        ref = sample(toy, toy.encode_prompts([prompt] * 2), toy.encode_prompts([""] * 2), [7, 8], settings,
                     record=True).trajectory
        s_ref, g_ref = trajectory_gain(ref, CodebookEmbedder(toy))
        torch.testing.assert_close(p.similarity, s_ref)
        torch.testing.assert_close(p.gain, g_ref)
        torch.testing.assert_close(p.entropy, masked_mean_entropy(ref))
    assert res.prompts[0].strip.shape == (4, 3, 8, 8)  # toy decodes 2x2 grids to 8x8 pixels
    assert res.prompts[1].strip is not None and res.prompts[2].strip is not None


def test_strip_only_for_the_first_prompts(toy):
    res = profile_steps(toy, ["a", "b", "c"], SamplerSettings(steps=3), CodebookEmbedder(toy), top_k=1, n=1,
                        strip_prompts=2)
    assert [p.strip is not None for p in res.prompts] == [True, True, False]


def test_profile_with_tiny_clip_and_routing(toy):
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg
    torch.manual_seed(0)
    clip = open_clip.CLIP(embed_dim=8, vision_cfg=CLIPVisionCfg(layers=1, width=16, head_width=8, patch_size=8,
                                                                image_size=16),
                          text_cfg=CLIPTextCfg(context_length=8, vocab_size=64, width=16, heads=2, layers=1))
    res = profile_steps(toy, ["a", "b"], SamplerSettings(steps=4), ClipEmbedder(toy, clip_model=clip), top_k=2,
                        n=4, router=EntropyRouter())
    # routing splits the whole batch (8 images of 2 prompts) at its median: 4 explore at every step
    assert sum(p.explore.sum(0) for p in res.prompts).tolist() == [4, 4, 4, 4]
    for p in res.prompts:
        torch.testing.assert_close(p.similarity[:, -1], torch.ones(4), atol=1e-5, rtol=0)
        rows = p.rows()
        assert [r["explore_fraction"] for r in rows] == p.explore.float().mean(0).tolist()
        assert all(math.isfinite(r["gain"]) for r in rows)
    assert res.selection_frequency.sum() == 2 * 2


def test_engine_rejects_k_larger_than_steps(toy):
    with pytest.raises(ValueError, match="--top-k 6 is larger than the step count --steps 5"):
        profile_steps(toy, ["a"], SamplerSettings(steps=5), CodebookEmbedder(toy), top_k=6)
