"""Our Show-o network and MAGVIT-v2 carry the public checkpoints' parameter names and shapes.

The expected lists are data written from the public model code and configs, not from
our implementation:

* showlab/show-o-512x512: ``Showo`` (models/modeling_showo.py) wraps
  ``PhiForCausalLM`` as ``showo`` (models/phi.py, a fork of transformers' Phi with the
  same names; rotary buffers non-persistent) built from microsoft/phi-1_5's config
  (below) and resized to ``vocab_size`` 58498; ``w_clip_vit`` adds ``mm_projector``.
  Hence no key mapping: checkpoint key = ``showo.`` + transformers' Phi key;
* showlab/magvitv2: ``MAGVITv2`` (models/modeling_magvitv2.py + common_modules.py)
  with its hard-coded encoder (ch 128, mult 1,2,2,4,4, blocks 4,3,4,3,4), decoder
  (mult 1,1,2,2,4, blocks 4,4,3,4,3), mid attention only, 13-bit LFQ buffers.

Both are built at the real size on the meta device (no memory).
"""

from __future__ import annotations

import torch

PHI_1_5_CONFIG = {  # microsoft/phi-1_5 config.json
    "architectures": ["PhiForCausalLM"], "model_type": "phi", "attention_dropout": 0.0, "bos_token_id": None,
    "embd_pdrop": 0.0, "eos_token_id": None, "hidden_act": "gelu_new", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 8192, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
    "num_attention_heads": 32, "num_hidden_layers": 24, "num_key_value_heads": None, "partial_rotary_factor": 0.5,
    "qk_layernorm": False, "resid_pdrop": 0.0, "rope_scaling": None, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "torch_dtype": "float16", "use_cache": True, "vocab_size": 51200,
}
SHOWO_512_CONFIG = {  # showlab/show-o-512x512 (configs/showo_demo_512x512.yaml model.showo)
    "w_clip_vit": False, "vocab_size": 58498, "llm_vocab_size": 50295, "llm_model_path": "microsoft/phi-1_5",
    "codebook_size": 8192, "num_vq_tokens": 1024,
}
D, FF, V, LAYERS = 2048, 8192, 58498, 24

PHI_LAYER = {  # showo.model.layers.{i}.
    "self_attn.q_proj.weight": (D, D), "self_attn.q_proj.bias": (D,),
    "self_attn.k_proj.weight": (D, D), "self_attn.k_proj.bias": (D,),
    "self_attn.v_proj.weight": (D, D), "self_attn.v_proj.bias": (D,),
    "self_attn.dense.weight": (D, D), "self_attn.dense.bias": (D,),
    "mlp.fc1.weight": (FF, D), "mlp.fc1.bias": (FF,),
    "mlp.fc2.weight": (D, FF), "mlp.fc2.bias": (D,),
    "input_layernorm.weight": (D,), "input_layernorm.bias": (D,),
}
PHI_TOP = {
    "showo.model.embed_tokens.weight": (V, D),
    "showo.model.final_layernorm.weight": (D,), "showo.model.final_layernorm.bias": (D,),
    "showo.lm_head.weight": (V, D), "showo.lm_head.bias": (V,),
}
CLIP_PROJECTOR = {"mm_projector.0.weight": (2048, 1024), "mm_projector.0.bias": (2048,),
                  "mm_projector.2.weight": (2048, 2048), "mm_projector.2.bias": (2048,)}

# MAGVIT-v2 levels as (in channels, out channels, res blocks, has resampler), by level index
Z, CODES = 13, 8192
ENCODER_LEVELS = [(128, 128, 4, True), (128, 256, 3, True), (256, 256, 4, True), (256, 512, 3, True),
                  (512, 512, 4, False)]
DECODER_LEVELS = [(128, 128, 4, False), (256, 128, 4, True), (256, 256, 3, True), (512, 256, 4, True),
                  (512, 512, 3, True)]


def expected_showo(w_clip_vit: bool = False) -> dict[str, tuple[int, ...]]:
    keys = dict(PHI_TOP)
    for i in range(LAYERS):
        keys.update({f"showo.model.layers.{i}.{k}": v for k, v in PHI_LAYER.items()})
    if w_clip_vit:
        keys.update(CLIP_PROJECTOR)
    return keys


def resnet(prefix: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    keys = {f"{prefix}.norm1.weight": (cin,), f"{prefix}.norm1.bias": (cin,),
            f"{prefix}.conv1.weight": (cout, cin, 3, 3), f"{prefix}.conv1.bias": (cout,),
            f"{prefix}.norm2.weight": (cout,), f"{prefix}.norm2.bias": (cout,),
            f"{prefix}.conv2.weight": (cout, cout, 3, 3), f"{prefix}.conv2.bias": (cout,)}
    if cin != cout:
        keys.update({f"{prefix}.nin_shortcut.weight": (cout, cin, 1, 1), f"{prefix}.nin_shortcut.bias": (cout,)})
    return keys


def attention(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    keys = {f"{prefix}.norm.weight": (c,), f"{prefix}.norm.bias": (c,)}
    for m in ("q", "k", "v", "proj_out"):
        keys.update({f"{prefix}.{m}.weight": (c, c, 1, 1), f"{prefix}.{m}.bias": (c,)})
    return keys


def mid(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return resnet(f"{prefix}.block_1", c, c) | attention(f"{prefix}.attn_1", c) | resnet(f"{prefix}.block_2", c, c)


def levels(prefix: str, spec, resampler: str) -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {}
    for i, (cin, cout, n, has) in enumerate(spec):
        for j in range(n):
            keys |= resnet(f"{prefix}.{i}.block.{j}", cin if j == 0 else cout, cout)
        if has:
            keys |= {f"{prefix}.{i}.{resampler}.conv.weight": (cout, cout, 3, 3),
                     f"{prefix}.{i}.{resampler}.conv.bias": (cout,)}
    return keys


def expected_magvit() -> dict[str, tuple[int, ...]]:
    enc = {"encoder.conv_in.weight": (128, 3, 3, 3), "encoder.conv_in.bias": (128,),
           "encoder.norm_out.weight": (512,), "encoder.norm_out.bias": (512,),
           "encoder.conv_out.weight": (Z, 512, 3, 3), "encoder.conv_out.bias": (Z,),
           "encoder.quant_conv.weight": (Z, Z, 1, 1), "encoder.quant_conv.bias": (Z,)}
    enc |= levels("encoder.down", ENCODER_LEVELS, "downsample") | mid("encoder.mid", 512)
    dec = {"decoder.post_quant_conv.weight": (Z, Z, 1, 1), "decoder.post_quant_conv.bias": (Z,),
           "decoder.conv_in.weight": (512, Z, 3, 3), "decoder.conv_in.bias": (512,),
           "decoder.norm_out.weight": (128,), "decoder.norm_out.bias": (128,),
           "decoder.conv_out.weight": (3, 128, 3, 3), "decoder.conv_out.bias": (3,)}
    dec |= levels("decoder.up", DECODER_LEVELS, "upsample") | mid("decoder.mid", 512)
    return enc | dec | {"quantize.embedding": (CODES, Z), "quantize.power_vals": (Z,)}


def meta_showo(w_clip_vit: bool = False):
    from transformers import PhiConfig

    from maskfocus_cli.models.showo import build_transformer
    cfg = dict(SHOWO_512_CONFIG, w_clip_vit=w_clip_vit)
    return build_transformer(cfg, PhiConfig.from_dict(PHI_1_5_CONFIG), empty=True)


def shapes(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_showo_expected_list_has_the_published_size():
    exp = expected_showo()
    assert len(exp) == 5 + 14 * LAYERS == 341
    # Phi-1.5 is 1.42 B parameters at 51200 tokens; 7298 more rows in embedding and head
    phi_1_5 = 1_418_270_720
    assert sum(torch.Size(s).numel() for s in exp.values()) == phi_1_5 + 7298 * (2 * D + 1)
    # vocabulary: Phi's 50295 tokens + [PAD] + 9 task tokens, 8192 codes, [MASK] last
    assert SHOWO_512_CONFIG["llm_vocab_size"] + 10 + CODES + 1 == V


def test_showo_state_dict_matches_public_checkpoint_keys_and_shapes():
    ours = shapes(meta_showo())
    exp = expected_showo()
    assert sorted(set(exp) - set(ours)) == [], "keys of the public checkpoint we do not have"
    assert sorted(set(ours) - set(exp)) == [], "keys we have that the public checkpoint lacks"
    assert {k: v for k, v in ours.items() if v != exp[k]} == {}


def test_showo_geometry_at_the_real_size():
    net = meta_showo()
    assert (net.mask_token_id, net.code_offset, net.num_vq_tokens) == (58497, 50305, 1024)
    assert net.showo.model.rotary_emb.inv_freq.shape == (16,)  # half of the 64-dim heads rotate


def test_clip_vit_variant_adds_the_projector():
    ours = shapes(meta_showo(w_clip_vit=True))
    assert ours == expected_showo(w_clip_vit=True)


def test_magvit_expected_list_follows_the_public_levels():
    exp = expected_magvit()
    blocks = {k.rsplit(".norm1.weight", 1)[0] for k in exp if k.endswith(".norm1.weight")}
    assert len(blocks) == sum(n for *_, n, _ in ENCODER_LEVELS) + sum(n for *_, n, _ in DECODER_LEVELS) + 4 == 40
    assert len([k for k in exp if "nin_shortcut.weight" in k]) == 4  # 128→256, 256→512 both ways


def test_magvit_state_dict_matches_public_checkpoint_keys_and_shapes():
    from maskfocus_cli.models.showo_magvit import MAGVITv2, MagvitConfig
    with torch.device("meta"):
        model = MAGVITv2(MagvitConfig.from_json({"_class_name": "MAGVITv2", "_diffusers_version": "0.30.1"}))
    ours = shapes(model)
    exp = expected_magvit()
    assert sorted(set(exp) - set(ours)) == []
    assert sorted(set(ours) - set(exp)) == []
    assert {k: v for k, v in ours.items() if v != exp[k]} == {}
    assert model.config.downsample_factor == 16 and model.config.codebook_size == CODES
