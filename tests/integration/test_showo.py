"""Show-o adapter: tiny random instance of the real architecture (Phi + omni-attention,
MAGVIT-v2), saved in the three-part folder layout, loaded with strict keys through
``--model showo:DIR``, sampled end to end; prompt layout, omni-attention mask, guidance
form and temperature annealing checked against hand-computed values."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from maskfocus_cli.engine.sampling import SamplerSettings, mask_counts, sample
from maskfocus_cli.models.base import StepInfo
from maskfocus_cli.models.showo import ShowoAdapter, load
from maskfocus_cli.models.showo_tiny import build_tiny_showo
from maskfocus_cli.models.showo_transformer import omni_attention_mask

PROMPTS = ["a red cat", "two dogs"]
# tiny tokenizer: byte-level, 'a' = 64, 'b' = 65; <|endoftext|> (bos = eos) = 256; then Show-o's additions
BOS, PAD, SOI, EOI, T2I = 256, 257, 258, 259, 262
OFFSET, CODES, MASK = 267, 16, 283  # image code c is id 267 + c; [MASK] = vocab_size - 1
STEP = StepInfo(index=0, total=4, mask_ratio=1.0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return build_tiny_showo(tmp_path_factory.mktemp("showo") / "tiny")


@pytest.fixture(scope="module")
def adapter(folder) -> ShowoAdapter:
    return load(str(folder))


def copy_of(folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(folder, out)
    return out


def edit_json(path: Path, **changes) -> None:
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


# ---------------------------------------------------------------------------- end to end
def test_tiny_instance_samples_end_to_end_through_load_model(folder):
    from maskfocus_cli.models.loading import load_model
    ad = load_model(f"showo:{folder}", device="cpu", dtype="fp32")
    assert isinstance(ad, ShowoAdapter) and ad.guidance_form == "showo"
    assert (ad.grid, ad.codebook_size, ad.mask_id, ad.image_size) == ((4, 4), CODES, MASK, (8, 8))
    cond, uncond = ad.encode_prompts(PROMPTS), ad.encode_prompts(["", ""])
    assert cond["prompt_ids"].shape == (2, 129)  # task token + max_seq_length 128
    res = sample(ad, cond, uncond, [0, 1], SamplerSettings(steps=5, guidance_scale=4.0), record=True)
    assert res.tokens.shape == (2, 16) and int(res.tokens.max()) < CODES
    assert res.trajectory.counts == mask_counts(16, 5)
    img = ad.decode(res.tokens)
    assert img.shape == (2, 3, 8, 8) and 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    emb = ad.code_embeddings(res.tokens)
    assert emb.shape == (2, 4, 4, 4) and set(emb.unique().tolist()) <= {-1.0, 1.0}


def test_bf16_keeps_rotary_frequencies_in_float32(folder):
    ad = load(str(folder), dtype=torch.bfloat16)
    ad.transformer.to(torch.bfloat16)  # what load_model does after loading
    rot = ad.transformer.showo.model.rotary_emb
    assert ad.transformer.showo.lm_head.weight.dtype == torch.bfloat16
    # head dim 8, half rotates: inv_freq = 10000^-(0/4, 2/4) = (1, 0.01), exactly as in float32
    assert rot.inv_freq.dtype == torch.float32
    assert torch.allclose(rot.inv_freq, torch.tensor([1.0, 0.01]))
    res = sample(ad, ad.encode_prompts(PROMPTS[:1]), ad.encode_prompts([""]), [3], SamplerSettings(steps=3))
    assert int(res.tokens.max()) < CODES


# ---------------------------------------------------------------------------- prompt layout
def test_prompt_prefix_layout(adapter):
    p = adapter.prompting
    assert (p.pad_id, p.soi_id, p.eoi_id, p.ids["<|t2i|>"], p.bos_id, p.eos_id) == (PAD, SOI, EOI, T2I, BOS, BOS)
    ids = adapter.encode_prompts(["ab", ""])["prompt_ids"]
    assert ids[0].tolist() == [PAD] * 124 + [T2I, BOS, 64, 65, BOS]
    assert ids[1].tolist() == [PAD] * 126 + [T2I, BOS, BOS]  # the unconditional prompt
    long = adapter.encode_prompts(["a" * 300])["prompt_ids"][0].tolist()  # cut to 128 tokens + <|eot|>
    assert long == [T2I, BOS] + [64] * 126 + [BOS]


def test_sequence_places_codes_after_the_text_vocabulary(adapter):
    tokens = torch.tensor([[0, CODES - 1, MASK, 5]])
    prefix = adapter.encode_prompts(["ab"])["prompt_ids"]
    seq = adapter.sequence(tokens, prefix)
    assert seq.shape == (1, 129 + 4 + 2)
    assert seq[0, 128:].tolist() == [BOS, SOI, OFFSET, OFFSET + CODES - 1, MASK, OFFSET + 5, EOI]


# ---------------------------------------------------------------------------- omni-attention
def test_omni_attention_mask_hand_computed():
    seq = torch.tensor([[PAD, PAD, T2I, BOS, 64, BOS, SOI, 0, 0, EOI],
                        [T2I, BOS, 64, 65, 66, BOS, SOI, 0, 0, EOI]])
    got = omni_attention_mask(seq, pad_id=PAD, text_len=6)
    assert got.shape == (2, 1, 10, 10) and got.dtype == torch.bool
    image_rows = [[0, 0, 1, 1, 1, 1, 1, 1, 1, 1]] * 4
    padded = [[1, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # padding sees only padding (causally)
              [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
              [0, 0, 1, 0, 0, 0, 0, 0, 0, 0],  # text: causal, never padding
              [0, 0, 1, 1, 0, 0, 0, 0, 0, 0],
              [0, 0, 1, 1, 1, 0, 0, 0, 0, 0],
              [0, 0, 1, 1, 1, 1, 0, 0, 0, 0]] + image_rows  # image: everything but padding
    unpadded = [[1] * (r + 1) + [0] * (9 - r) for r in range(6)] + [[1] * 10] * 4
    assert got[0, 0].int().tolist() == padded
    assert got[1, 0].int().tolist() == unpadded


def test_image_attention_is_bidirectional_and_text_stays_causal(adapter):
    cond = adapter.encode_prompts(PROMPTS[:1])
    a = torch.full((1, 16), MASK)
    b = a.clone()
    b[0, -1] = 3  # reveal the last image token
    la = adapter.call_transformer(adapter.transformer, a, cond, STEP)
    lb = adapter.call_transformer(adapter.transformer, b, cond, STEP)
    assert la.shape == (1, 16, CODES)
    assert not torch.allclose(la[0, 0], lb[0, 0]), "the first image token must see the last one"
    # full-vocabulary forward: text positions never see the image
    net, p = adapter.transformer, adapter.prompting
    seq_a, seq_b = adapter.sequence(a, cond["prompt_ids"]), adapter.sequence(b, cond["prompt_ids"])
    fa = net(seq_a, attention_mask=omni_attention_mask(seq_a, p.pad_id, p.text_len))
    fb = net(seq_b, attention_mask=omni_attention_mask(seq_b, p.pad_id, p.text_len))
    assert fa.shape == (1, 129 + 16 + 2, OFFSET + CODES + 1)
    assert torch.equal(fa[:, :129], fb[:, :129])
    # the sliced head is the codebook slice of the full logits at the image positions
    assert torch.allclose(fa[:, 130:146, OFFSET:OFFSET + CODES], la, atol=1e-5)


def test_text_conditions_the_image_logits(adapter):
    tokens = torch.full((2, 16), MASK)
    logits = adapter.logits(tokens, adapter.encode_prompts(PROMPTS), STEP)
    assert not torch.allclose(logits[0], logits[1])


# ---------------------------------------------------------------------------- guidance, temperature
def test_guidance_is_showo_form_in_one_batched_forward(adapter):
    tokens = torch.full((2, 16), MASK)
    tokens[:, 3] = 7
    cond, uncond = adapter.encode_prompts(PROMPTS), adapter.encode_prompts(["", ""])
    guided = adapter.logits(tokens, cond, STEP, uncond, guidance_scale=2.0)
    lc = adapter.call_transformer(adapter.transformer, tokens, cond, STEP)
    lu = adapter.call_transformer(adapter.transformer, tokens, uncond, STEP)
    assert torch.allclose(guided, 3.0 * lc - 2.0 * lu, atol=1e-4)
    assert torch.equal(adapter.logits(tokens, cond, STEP, uncond, guidance_scale=0.0), lc)  # w = 0: no CFG


def test_gumbel_temperature_anneals_multiplicatively(adapter):
    # Show-o's loop: temperature *= 1 - (t+1)/T  →  T = 4, start 1: 3/4, 3/4·1/2, 3/4·1/2·1/4, 0
    assert [adapter.gumbel_temperature(t, 4, 1.0) for t in range(4)] == [0.75, 0.375, 0.09375, 0.0]
    assert adapter.gumbel_temperature(0, 4, 2.0) == 1.5


# ---------------------------------------------------------------------------- MAGVIT-v2
def test_lfq_codes_are_sign_patterns_msb_first(adapter):
    vq = adapter.vq_model
    z = vq.get_codebook_entry(torch.tensor([[5, 12]]), (1, 2))  # 5 = 0101, 12 = 1100
    assert z.shape == (1, 4, 1, 2)
    assert z[0, :, 0, 0].tolist() == [-1.0, 1.0, -1.0, 1.0]
    assert z[0, :, 0, 1].tolist() == [1.0, 1.0, -1.0, -1.0]
    assert vq.quantize.get_indices(z).tolist() == [[5, 12]]
    codes = vq.get_code(torch.rand(2, 3, 8, 8) * 2 - 1)
    assert codes.shape == (2, 16) and 0 <= int(codes.min()) and int(codes.max()) < CODES


# ---------------------------------------------------------------------------- persistence
def test_save_round_trip_keeps_tuned_weights(folder, tmp_path):
    tuned = load(str(folder))
    with torch.no_grad():
        tuned.transformer.showo.lm_head.bias.add_(1.0)
    tuned.save(tmp_path / "export")
    for f in ("showo/config.json", "vq_model/pytorch_model.safetensors", "llm/tokenizer.json", "llm/config.json"):
        assert (tmp_path / "export" / f).read_bytes() == (folder / f).read_bytes(), f
    back = load(str(tmp_path / "export"))
    assert torch.equal(back.transformer.showo.lm_head.bias, tuned.transformer.showo.lm_head.bias)
    with pytest.raises(ValueError, match="already exists and is not empty"):
        tuned.save(tmp_path / "export")


def test_save_without_source_folders_writes_a_loadable_folder(folder, tmp_path):
    ad = load(str(folder))
    ad.sources = {}
    ad.save(tmp_path / "mem")
    back = load(str(tmp_path / "mem"))
    cond = ad.encode_prompts(PROMPTS[:1])
    assert torch.equal(back.encode_prompts(PROMPTS[:1])["prompt_ids"], cond["prompt_ids"])
    tokens = torch.full((1, 16), MASK)
    assert torch.equal(back.logits(tokens, cond, STEP), ad.logits(tokens, cond, STEP))
    codes = torch.arange(16).view(1, 16)
    assert torch.equal(back.decode(codes), ad.decode(codes))


def test_pickled_bin_weights_load_like_safetensors(folder, tmp_path, adapter):
    from safetensors.torch import load_file
    other = copy_of(folder, tmp_path)
    st = other / "showo" / "pytorch_model.safetensors"
    torch.save(load_file(st), other / "showo" / "pytorch_model.bin")
    st.unlink()
    back = load(str(other))
    assert torch.equal(back.transformer.showo.model.embed_tokens.weight,
                       adapter.transformer.showo.model.embed_tokens.weight)
    (other / "showo" / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch weights file"):
        load(str(other))


# ---------------------------------------------------------------------------- bad input
def test_wrong_folder_errors_list_the_expected_layout(folder, tmp_path):
    with pytest.raises(ValueError, match="no such folder .*showo/config.json, vq_model/config.json, llm/config.json"):
        load(str(tmp_path / "nope"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        load(str(tmp_path / "file.txt"))
    with pytest.raises(ValueError, match="bare Show-o checkpoint; put it in DIR/showo"):
        load(str(folder / "showo"))
    broken = copy_of(folder, tmp_path)
    shutil.rmtree(broken / "llm")
    with pytest.raises(ValueError, match="not a showo model folder: missing llm/config.json, llm/tokenizer_config"):
        load(str(broken))


def test_checkpoints_of_another_architecture_are_refused(folder, tmp_path):
    other = copy_of(folder, tmp_path)
    cfg = other / "showo" / "config.json"
    original = cfg.read_text()
    edit_json(cfg, _class_name="Transformer2DModel")
    with pytest.raises(ValueError, match="Transformer2DModel, not the Showo.*another architecture"):
        load(str(other))
    cfg.write_text(original)
    llm_cfg = other / "llm" / "config.json"
    llm_original = llm_cfg.read_text()
    edit_json(llm_cfg, model_type="llama", architectures=["LlamaForCausalLM"])
    with pytest.raises(ValueError, match="LlamaForCausalLM, not the PhiForCausalLM"):
        load(str(other))
    llm_cfg.write_text(llm_original)
    edit_json(llm_cfg, num_hidden_layers=3)  # weights of a 2-layer model
    with pytest.raises(ValueError, match=r"missing 14 keys \(e.g. showo.model.layers.2"):
        load(str(other))
    llm_cfg.write_text(llm_original)
    edit_json(other / "vq_model" / "config.json", z_channels=5)  # a 32-code tokenizer's layout
    with pytest.raises(ValueError, match="shape mismatch for"):
        load(str(other))


def test_a_foreign_tokenizer_is_refused(folder, tmp_path):
    from transformers import AutoTokenizer
    other = copy_of(folder, tmp_path)
    tok = AutoTokenizer.from_pretrained(str(other / "llm"))
    tok.add_tokens(["<|extra|>"])
    tok.save_pretrained(str(other / "llm"))
    with pytest.raises(ValueError, match="image code 0 at id 267.*phi-1_5's tokenizer"):
        load(str(other))


def test_fp16_on_cpu_is_refused(folder):
    from maskfocus_cli.models.loading import load_model
    with pytest.raises(ValueError, match="float16 is not supported on the CPU"):
        load(str(folder), dtype=torch.float16)
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
        load_model(f"showo:{folder}", device="cpu", dtype="fp16")
