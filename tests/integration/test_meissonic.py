"""Meissonic adapter: tiny random instance of our re-implementation, saved in the real
folder layout, loaded with strict keys through ``--model meissonic:DIR``, sampled end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from maskfocus_cli.engine.sampling import SamplerSettings, mask_counts, sample
from maskfocus_cli.models.base import StepInfo
from maskfocus_cli.models.meissonic import MeissonicAdapter, load
from maskfocus_cli.models.meissonic_tiny import build_tiny_meissonic

pytest.importorskip("diffusers")
PROMPTS = ["a red cat", "two dogs"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return build_tiny_meissonic(tmp_path_factory.mktemp("meissonic") / "tiny")


@pytest.fixture(scope="module")
def adapter(folder) -> MeissonicAdapter:
    return load(str(folder))


def test_tiny_instance_samples_end_to_end_through_load_model(folder):
    from maskfocus_cli.models.loading import load_model
    ad = load_model(f"meissonic:{folder}", device="cpu", dtype="fp32")
    assert isinstance(ad, MeissonicAdapter)
    assert (ad.grid, ad.codebook_size, ad.mask_id, ad.image_size) == ((8, 8), 30, 31, (16, 16))
    cond, uncond = ad.encode_prompts(PROMPTS), ad.encode_prompts(["", ""])
    assert cond["encoder_hidden_states"].shape == (2, 77, 32)  # the public pipeline pads to 77 tokens
    assert cond["micro_conds"].tolist() == [[16.0, 16.0, 0.0, 0.0, 6.0]] * 2
    res = sample(ad, cond, uncond, [0, 1], SamplerSettings(steps=5, guidance_scale=4.0), record=True)
    assert res.tokens.shape == (2, 64) and int(res.tokens.max()) < 30
    assert res.trajectory.counts == mask_counts(64, 5)
    img = ad.decode(res.tokens)
    assert img.shape == (2, 3, 16, 16) and 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert ad.code_embeddings(res.tokens).shape == (2, 4, 8, 8)


def test_timestep_follows_the_public_pipeline(adapter):
    # the pipeline passes scheduler timesteps arange(T).flip(0): T-1 at the first step, 0 at the last
    assert adapter.timestep(StepInfo(index=0, total=64, mask_ratio=1.0)) == 63.0
    assert adapter.timestep(StepInfo(index=63, total=64, mask_ratio=1 / 4096)) == 0.0
    tokens = torch.full((1, 64), adapter.mask_id)
    cond = adapter.encode_prompts(PROMPTS[:1])
    a = adapter.logits(tokens, cond, StepInfo(0, 8, 1.0))
    b = adapter.logits(tokens, cond, StepInfo(5, 8, 1.0))
    assert not torch.allclose(a, b), "the timestep must reach the network"


def test_training_timestep_convention_passes_the_mask_ratio_times_1000(folder):
    """viiika/Meissonic's training script feeds mask_prob * 1000 into the forward that multiplies by 1000 again."""
    ad = load(str(folder), timestep_mode="mask_ratio")
    assert ad.timestep(StepInfo(index=3, total=8, mask_ratio=0.25)) == 250.0


def test_image_rope_ids_are_row_col_on_the_downsampled_grid(adapter):
    # public _prepare_latent_image_ids(B, 2h', 2w'): ids[..., 1] = row, ids[..., 2] = col over h' x w'
    ids = adapter._img_ids
    assert ids.shape == (16, 3)
    assert ids[:, 0].eq(0).all()
    assert ids[:, 1].tolist() == [r for r in range(4) for _ in range(4)]
    assert ids[:, 2].tolist() == [c for _ in range(4) for c in range(4)]


def test_conditioning_changes_logits(adapter):
    tokens = torch.full((2, 64), adapter.mask_id)
    a = adapter.logits(tokens, adapter.encode_prompts(PROMPTS), StepInfo(0, 8, 1.0))
    assert not torch.allclose(a[0], a[1])


def test_save_round_trip_keeps_tuned_weights(adapter, folder, tmp_path):
    tuned = load(str(folder))
    with torch.no_grad():
        tuned.transformer.mlm_layer.conv2.weight.mul_(2.0)
    tuned.save(tmp_path / "export")
    cfg = json.loads((tmp_path / "export" / "transformer" / "config.json").read_text())
    assert cfg["_class_name"] == "Transformer2DModel"
    back = load(str(tmp_path / "export"))
    assert torch.equal(back.transformer.mlm_layer.conv2.weight, tuned.transformer.mlm_layer.conv2.weight)
    assert (tmp_path / "export" / "vqvae" / "config.json").read_bytes() == (folder / "vqvae" / "config.json").read_bytes()


def test_an_amused_folder_is_refused(tmp_path):
    from maskfocus_cli.models.amused_tiny import build_tiny_amused
    other = build_tiny_amused(tmp_path / "amused")
    with pytest.raises(ValueError, match="UVit2DModel, not the Transformer2DModel.*another architecture"):
        load(str(other))


def test_weights_of_another_size_fail_strictly(folder, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    cfg_path = other / "transformer" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_single_layers"] = 2
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"missing \d+ keys \(e.g. single_transformer_blocks.1"):
        load(str(other))


def test_missing_component_and_cpu_fp16_errors(folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "text_encoder")
    with pytest.raises(ValueError, match="not a meissonic model folder: missing text_encoder/config.json"):
        load(str(broken))
    with pytest.raises(ValueError, match="float16 is not supported on the CPU"):
        load(str(folder), dtype=torch.float16)


def test_variant_only_weights_load_and_broken_components_are_named(folder, adapter, tmp_path):
    """Hub snapshots of `--variant fp16` hold only STEM.fp16.safetensors; a half-copied folder misses files."""
    variant = tmp_path / "variant"
    shutil.copytree(folder, variant)
    for f in variant.rglob("*.safetensors"):
        f.rename(f.with_name(f.name.replace(".safetensors", ".fp16.safetensors")))
    v = load(str(variant))
    torch.testing.assert_close(v.vqvae.decoder.conv_in.weight, adapter.vqvae.decoder.conv_in.weight)
    no_text = tmp_path / "no-text-weights"
    shutil.copytree(folder, no_text)
    for f in (no_text / "text_encoder").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ValueError, match=r"cannot load the text encoder \(text_encoder/\).*download that component"):
        load(str(no_text))
    no_vocab = tmp_path / "no-vocab"
    shutil.copytree(folder, no_vocab)
    for f in (no_vocab / "tokenizer").iterdir():
        f.write_text("{}" if f.suffix == ".json" else "")
    with pytest.raises(ValueError, match=r"tokenizer"):
        load(str(no_vocab))
