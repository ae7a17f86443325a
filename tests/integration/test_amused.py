"""aMUSEd adapter: tiny random real-architecture instance, loading, and parity with diffusers.

Parity with ``AmusedPipeline`` is checked three ways:

* the mask schedule: our ``mask_counts`` equals the number of tokens diffusers'
  ``AmusedScheduler`` leaves masked after each step, for many (N, T);
* deterministic: both sides take the argmax token (diffusers' ``torch.multinomial``
  and our inverse-CDF draw both replaced by argmax) with Gumbel temperature 0; the
  per-step guided logits, every intermediate token grid and the images must agree;
* stochastic (Gumbel temperature linspace(2, 0)): the two implementations draw
  their randomness differently -- diffusers draws tokens with ``torch.multinomial``
  and Gumbel uniforms from ONE generator shared by the batch; we draw two uniforms
  per token from a per-image generator and sample by inverse CDF -- so the same
  integer seed gives different (equally distributed) images. When the draws are
  aligned (diffusers' draws recorded and fed to our sampler as the uniforms that
  produce them) the token grids and images are identical.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import maskfocus_cli.engine.sampling as sampling
from maskfocus_cli.engine.sampling import SamplerSettings, mask_counts, sample
from maskfocus_cli.models.amused import AmusedAdapter, load
from maskfocus_cli.models.folders import ModelFolderError
from maskfocus_cli.models.amused_tiny import build_tiny_amused

diffusers = pytest.importorskip("diffusers")
PROMPTS = ["a red cat on a mat", "two dogs."]
STEPS = 7  # not a multiple of 3: see test_mask_counts_match_amused_scheduler
GUIDANCE = 3.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return build_tiny_amused(tmp_path_factory.mktemp("amused") / "tiny")


@pytest.fixture(scope="module")
def adapter(folder) -> AmusedAdapter:
    return load(str(folder), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def pipe(folder):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = diffusers.AmusedPipeline.from_pretrained(folder)
    p.set_progress_bar_config(disable=True)
    return p


def _conds(adapter):
    return adapter.encode_prompts(PROMPTS), adapter.encode_prompts([""] * len(PROMPTS))


def _run_pipeline(pipe, temperature, generator=None):
    """Run the real pipeline; return per-step token grids, per-step guided logits, images."""
    states, logits = [], []
    real_step = pipe.scheduler.step

    def spy_step(model_output, timestep, sample, **kw):
        logits.append(model_output.detach().clone())
        return real_step(model_output, timestep, sample, **kw)

    pipe.scheduler.step = spy_step
    try:
        images = pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=GUIDANCE, temperature=temperature,
                      generator=generator, output_type="pt",
                      callback=lambda i, t, lat: states.append(lat.reshape(lat.shape[0], -1).clone()),
                      callback_steps=1).images
    finally:
        del pipe.scheduler.step
    return states, logits, images


# ------------------------------------------------------------------------- loading / sampling
def test_tiny_instance_loads_and_samples_end_to_end(folder, adapter):
    assert (adapter.grid, adapter.codebook_size, adapter.mask_id) == ((4, 4), 30, 31)
    assert adapter.image_size == (8, 8)
    cond, uncond = _conds(adapter)
    assert cond["encoder_hidden_states"].shape == (2, 16, 32)
    assert cond["pooled_text_emb"].shape == (2, 32)
    # micro-conds as AmusedPipeline builds them: [width, height, crop_top, crop_left, aesthetic]
    assert cond["micro_conds"].tolist() == [[8.0, 8.0, 0.0, 0.0, 6.0]] * 2
    res = sample(adapter, cond, uncond, [0, 1], SamplerSettings(steps=STEPS, guidance_scale=GUIDANCE), record=True)
    assert res.tokens.shape == (2, 16) and int(res.tokens.max()) < 30
    assert res.trajectory.counts == mask_counts(16, STEPS)
    img = adapter.decode(res.tokens)
    assert img.shape == (2, 3, 8, 8) and 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert adapter.code_embeddings(res.tokens).shape == (2, 4, 4, 4)
    again = sample(adapter, cond, uncond, [0, 1], SamplerSettings(steps=STEPS, guidance_scale=GUIDANCE))
    assert torch.equal(res.tokens, again.tokens)


def test_load_model_spec_goes_through_adapter(folder):
    from maskfocus_cli.models.loading import load_model
    ad = load_model(f"amused:{folder}", device="cpu", dtype="bf16")
    assert isinstance(ad, AmusedAdapter)
    assert next(ad.transformer.parameters()).dtype == torch.bfloat16
    cond, uncond = _conds(ad)
    res = sample(ad, cond, uncond, [3, 4], SamplerSettings(steps=3))
    assert ad.decode(res.tokens).shape == (2, 3, 8, 8)


def test_save_writes_pipeline_layout_with_new_transformer_weights(folder, adapter, tmp_path):
    from diffusers import UVit2DModel
    tuned = load(str(folder))
    with torch.no_grad():
        tuned.transformer.mlm_layer.conv2.weight.add_(1.0)
    out = tmp_path / "export"
    tuned.save(out)
    for comp in ("vqvae", "text_encoder", "tokenizer", "scheduler"):
        for f in (folder / comp).iterdir():
            assert (out / comp / f.name).read_bytes() == f.read_bytes()
    re = load(str(out))
    assert torch.equal(re.transformer.mlm_layer.conv2.weight, tuned.transformer.mlm_layer.conv2.weight)
    assert not torch.equal(re.transformer.mlm_layer.conv2.weight, adapter.transformer.mlm_layer.conv2.weight)
    assert isinstance(UVit2DModel.from_pretrained(out / "transformer"), UVit2DModel)
    with pytest.raises(ValueError, match="not empty"):
        tuned.save(out)


# ------------------------------------------------------------------------- parity with diffusers
def _scheduler_counts(n: int, total: int, schedule: str) -> list[int]:
    """Masked-token counts after each step of diffusers' AmusedScheduler (random logits: no ties)."""
    from diffusers import AmusedScheduler
    k, mask = 5, 5
    gen = torch.Generator().manual_seed(n + total)
    sched = AmusedScheduler(mask_token_id=mask, masking_schedule=schedule)
    sched.set_timesteps(total, temperature=(2, 0))
    tokens = torch.full((1, n), mask)
    counts = [n]
    for t in sched.timesteps:
        tokens = sched.step(torch.randn(1, n, k, generator=gen), t, tokens, generator=gen).prev_sample
        counts.append(int((tokens == mask).sum()))
    return counts


@pytest.mark.parametrize("schedule,total", [
    # 3 and 12: (t+1)/T = 2/3 where float32 and float64 floors differ; we follow diffusers' float32
    *[("cosine", t) for t in (1, 2, 3, 4, 5, 7, 8, 12, 16, 20)],
    *[("linear", t) for t in (1, 2, 3, 4, 12, 16)],
])
def test_mask_counts_match_amused_scheduler(schedule, total):
    for n in (16, 256, 1024):
        if total > n:  # more steps than tokens: refused by us (diffusers would repeat 1-token steps)
            continue
        assert mask_counts(n, total, schedule) == _scheduler_counts(n, total, schedule), (n, total)


def test_deterministic_parity_with_amused_pipeline(adapter, pipe, monkeypatch):
    monkeypatch.setattr(torch, "multinomial", lambda p, n, *a, generator=None, **k: p.argmax(-1, keepdim=True))
    monkeypatch.setattr(sampling, "sample_categorical", lambda log_p, u: log_p.argmax(-1))
    states, their_logits, images = _run_pipeline(pipe, temperature=(0, 0))

    cond, uncond = _conds(adapter)
    ours: list[torch.Tensor] = []
    res = sample(adapter, cond, uncond, [0, 1],
                 SamplerSettings(steps=STEPS, guidance_scale=GUIDANCE, gumbel_temperature=0.0),
                 on_step=lambda t, out: ours.append(out.tokens.clone()))
    counts = mask_counts(16, STEPS)
    for t in range(STEPS):
        state = torch.full_like(states[0], adapter.mask_id) if t == 0 else states[t - 1]
        info = sampling.step_info(t, STEPS, 16, counts)
        mine = adapter.logits(state, cond, info, uncond, GUIDANCE)
        theirs = their_logits[t].reshape(2, 30, 16).transpose(1, 2)
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
        assert torch.equal(ours[t], states[t]), f"token grids differ after step {t}"
        assert int((ours[t] == adapter.mask_id).sum(1)[0]) == counts[t + 1]
    torch.testing.assert_close(adapter.decode(res.tokens), images.float(), rtol=1e-5, atol=1e-5)


def _aligned_uniforms(their_logits, picks, gumbels, n_tokens):
    """Uniforms that make our sampler reproduce diffusers' recorded draws, one (2, B, N) per step.

    Token: the midpoint of the chosen token's CDF interval under diffusers' probabilities.
    Gumbel: u = exp(-exp(-g)) inverts g = -log(-log(u)).
    """
    out = []
    for t, lg in enumerate(their_logits):
        b = lg.shape[0]
        probs = lg.reshape(b, lg.shape[1], -1).transpose(1, 2).float().softmax(-1)
        cdf = probs.cumsum(-1)
        c = picks[t].reshape(b, n_tokens)
        hi = cdf.gather(-1, c[..., None])[..., 0]
        lo = torch.where(c > 0, cdf.gather(-1, (c - 1).clamp(min=0)[..., None])[..., 0], torch.zeros_like(hi))
        u_tok = (lo + hi) / 2 / cdf[..., -1]
        u_gum = torch.exp(-torch.exp(-gumbels[t])) if t < len(gumbels) else torch.full_like(u_tok, 0.5)
        out.append(torch.stack([u_tok, u_gum.reshape(b, n_tokens)]))
    return out


def test_stochastic_parity_with_aligned_random_draws(adapter, pipe, monkeypatch):
    import diffusers.schedulers.scheduling_amused as sched_mod
    picks, gumbels = [], []
    real_multinomial, real_gumbel = torch.multinomial, sched_mod.gumbel_noise

    def spy_multinomial(*a, **k):
        picks.append(real_multinomial(*a, **k))
        return picks[-1]

    def spy_gumbel(*a, **k):
        gumbels.append(real_gumbel(*a, **k))
        return gumbels[-1]

    monkeypatch.setattr(torch, "multinomial", spy_multinomial)
    monkeypatch.setattr(sched_mod, "gumbel_noise", spy_gumbel)
    states, their_logits, images = _run_pipeline(pipe, temperature=(2, 0),
                                                 generator=torch.Generator().manual_seed(0))
    monkeypatch.undo()
    assert len(picks) == STEPS and len(gumbels) == STEPS - 1  # no Gumbel draw at the last step

    feed = iter(_aligned_uniforms(their_logits, picks, gumbels, 16))
    monkeypatch.setattr(sampling, "draw_noise", lambda gens, n: next(feed))
    cond, uncond = _conds(adapter)
    ours: list[torch.Tensor] = []
    res = sample(adapter, cond, uncond, [0, 1], SamplerSettings(steps=STEPS, guidance_scale=GUIDANCE),
                 on_step=lambda t, out: ours.append(out.tokens.clone()))
    for t in range(STEPS):
        assert torch.equal(ours[t], states[t]), f"token grids differ after step {t}"
    torch.testing.assert_close(adapter.decode(res.tokens), images.float(), rtol=1e-5, atol=1e-5)
    # the Gumbel temperatures the pipeline used are our adapter's linspace(2, 0, T)
    taus = [adapter.gumbel_temperature(t, STEPS, 2.0) for t in range(STEPS)]
    assert taus == pytest.approx(torch.linspace(2, 0, STEPS).tolist())


# ------------------------------------------------------------------------- bad input
def test_missing_folder_lists_expected_layout(tmp_path):
    with pytest.raises(ValueError, match="no such folder.*transformer/config.json"):
        load(str(tmp_path / "nope"))


def test_incomplete_folder_names_missing_components(folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "vqvae")
    with pytest.raises(ValueError, match=r"not a amused model folder: missing vqvae/config.json"):
        load(str(broken))


def test_hub_id_without_network_asks_for_a_folder(monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ValueError, match="amused/amused-256.*could not be fetched.*pass the folder"):
        load("amused/amused-256")


def test_checkpoint_of_another_architecture_is_refused(folder, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    cfg_path = other / "transformer" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["_class_name"] = "Transformer2DModel"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="Transformer2DModel, not the UVit2DModel.*another architecture"):
        load(str(other))


def test_weights_that_do_not_fit_the_config_fail_strictly(folder, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    cfg_path = other / "transformer" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_hidden_layers"] = 2  # the weights have one layer
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"missing \d+ keys \(e.g. transformer_layers.1"):
        load(str(other))


def test_fp16_on_cpu_is_refused_before_loading(folder):
    with pytest.raises(ValueError, match="float16 is not supported on the CPU"):
        load(str(folder), device="cpu", dtype=torch.float16)
