"""Our re-implementations carry the public checkpoints' parameter names and shapes.

The expected lists below are data written from the public model code and config
(viiika/Meissonic src/transformer.py + MeissonFlow/Meissonic transformer/config.json:
8 heads x 128, 14 double + 28 single blocks, joint/pooled dim 1024, vocab 8256,
codebook 8192, down/upsample on), not from our implementation. The model is built at
the real size on the meta device (no memory), so a renamed or reshaped parameter, a
missing bias or an extra module fails here before anyone downloads 4 GB.
"""

from __future__ import annotations

import pytest
import torch

D, HEAD, FF, MLP = 1024, 128, 4096, 4096  # width, head dim, FeedForward inner (4D), single-block MLP (4D)
VOCAB, CODES, TEXT, POOLED, MICRO = 8256, 8192, 1024, 1024, 5 * 256
N_DOUBLE, N_SINGLE = 14, 28

MEISSONIC_TOP = {
    "time_text_embed.timestep_embedder.linear_1.weight": (D, 256),
    "time_text_embed.timestep_embedder.linear_1.bias": (D,),
    "time_text_embed.timestep_embedder.linear_2.weight": (D, D),
    "time_text_embed.timestep_embedder.linear_2.bias": (D,),
    "time_text_embed.text_embedder.linear_1.weight": (D, POOLED),
    "time_text_embed.text_embedder.linear_1.bias": (D,),
    "time_text_embed.text_embedder.linear_2.weight": (D, D),
    "time_text_embed.text_embedder.linear_2.bias": (D,),
    "context_embedder.weight": (D, TEXT),
    "context_embedder.bias": (D,),
    "embed.embeddings.weight": (VOCAB, D),
    "embed.layer_norm.weight": (D,),
    "embed.conv.weight": (D, D, 1, 1),
    "mlm_layer.conv1.weight": (D, D, 1, 1),
    "mlm_layer.layer_norm.weight": (D,),
    "mlm_layer.conv2.weight": (CODES, D, 1, 1),
    "cond_embed.linear_1.weight": (D, MICRO + POOLED),
    "cond_embed.linear_2.weight": (D, D),
    "encoder_proj_layer_norm.weight": (D,),
    "project_to_hidden_norm.weight": (D,),
    "project_to_hidden.weight": (D, D),
    "project_from_hidden_norm.weight": (D,),
    "project_from_hidden.weight": (D, D),
    "down_block.downsample.norm.weight": (D,),
    "down_block.downsample.conv.weight": (D, D, 2, 2),
    "up_block.upsample.norm.weight": (D,),
    "up_block.upsample.conv.weight": (D, D, 2, 2),
}

MEISSONIC_DOUBLE = {  # transformer_blocks.{i}.
    "norm1.linear.weight": (6 * D, D), "norm1.linear.bias": (6 * D,),
    "norm1_context.linear.weight": (6 * D, D), "norm1_context.linear.bias": (6 * D,),
    "attn.norm_q.weight": (HEAD,), "attn.norm_k.weight": (HEAD,),
    "attn.to_q.weight": (D, D), "attn.to_q.bias": (D,),
    "attn.to_k.weight": (D, D), "attn.to_k.bias": (D,),
    "attn.to_v.weight": (D, D), "attn.to_v.bias": (D,),
    "attn.add_q_proj.weight": (D, D), "attn.add_q_proj.bias": (D,),
    "attn.add_k_proj.weight": (D, D), "attn.add_k_proj.bias": (D,),
    "attn.add_v_proj.weight": (D, D), "attn.add_v_proj.bias": (D,),
    "attn.norm_added_q.weight": (HEAD,), "attn.norm_added_k.weight": (HEAD,),
    "attn.to_out.0.weight": (D, D), "attn.to_out.0.bias": (D,),
    "attn.to_add_out.weight": (D, D), "attn.to_add_out.bias": (D,),
    "ff.net.0.proj.weight": (FF, D), "ff.net.0.proj.bias": (FF,),
    "ff.net.2.weight": (D, FF), "ff.net.2.bias": (D,),
    "ff_context.net.0.proj.weight": (FF, D), "ff_context.net.0.proj.bias": (FF,),
    "ff_context.net.2.weight": (D, FF), "ff_context.net.2.bias": (D,),
}

MEISSONIC_SINGLE = {  # single_transformer_blocks.{i}.
    "norm.linear.weight": (3 * D, D), "norm.linear.bias": (3 * D,),
    "proj_mlp.weight": (MLP, D), "proj_mlp.bias": (MLP,),
    "proj_out.weight": (D, D + MLP), "proj_out.bias": (D,),
    "attn.norm_q.weight": (HEAD,), "attn.norm_k.weight": (HEAD,),
    "attn.to_q.weight": (D, D), "attn.to_q.bias": (D,),
    "attn.to_k.weight": (D, D), "attn.to_k.bias": (D,),
    "attn.to_v.weight": (D, D), "attn.to_v.bias": (D,),
}

MEISSONIC_CONFIG = {
    "_class_name": "Transformer2DModel", "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56],
    "codebook_size": 8192, "downsample": True, "guidance_embeds": False, "in_channels": 64,
    "joint_attention_dim": 1024, "num_attention_heads": 8, "num_layers": 14, "num_single_layers": 28,
    "patch_size": 1, "pooled_projection_dim": 1024, "upsample": True, "vocab_size": 8256,
}


def expected_meissonic() -> dict[str, tuple[int, ...]]:
    keys = dict(MEISSONIC_TOP)
    for i in range(N_DOUBLE):
        keys.update({f"transformer_blocks.{i}.{k}": v for k, v in MEISSONIC_DOUBLE.items()})
    for i in range(N_SINGLE):
        keys.update({f"single_transformer_blocks.{i}.{k}": v for k, v in MEISSONIC_SINGLE.items()})
    return keys


def test_meissonic_expected_list_has_the_published_size():
    # 867 tensors; ~1.007 B parameters ("a 1B-parameter model")
    exp = expected_meissonic()
    assert len(exp) == 27 + 32 * N_DOUBLE + 14 * N_SINGLE == 867
    total = sum(torch.Size(s).numel() for s in exp.values())
    assert 1.0e9 < total < 1.02e9


def test_meissonic_state_dict_matches_public_checkpoint_keys_and_shapes():
    pytest.importorskip("diffusers")
    from maskfocus_cli.models.meissonic_transformer import Transformer2DModel
    with torch.device("meta"):
        model = Transformer2DModel.from_config(MEISSONIC_CONFIG)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    exp = expected_meissonic()
    assert sorted(set(exp) - set(ours)) == [], "keys of the public checkpoint we do not have"
    assert sorted(set(ours) - set(exp)) == [], "keys we have that the public checkpoint lacks"
    assert {k: v for k, v in ours.items() if v != exp[k]} == {}


@pytest.mark.parametrize("names, variant", [
    (["model.fp16.safetensors"], "fp16"),
    (["model.fp16-00001-of-00002.safetensors", "model.fp16-00002-of-00002.safetensors"], "fp16"),  # sharded
    (["model.safetensors.index.fp16.json"], "fp16"),
    (["model.safetensors", "model.fp16.safetensors"], None),  # plain weights win
    ([], None)])
def test_weight_variant_reads_hub_variant_file_names(tmp_path, names, variant):
    from maskfocus_cli.models.folders import weight_variant
    for n in names:
        (tmp_path / n).write_text("x")
    assert weight_variant(tmp_path, "model") == variant
