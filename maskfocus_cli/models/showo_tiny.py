"""Tiny random Show-o folders in the real three-part layout (for tests and CPU smoke runs).

Same classes and config fields as showlab/show-o-512x512 + showlab/magvitv2 +
microsoft/phi-1_5, shrunk: a 2-layer Phi of width 32 (4 heads, half-rotary), a
byte-level BPE tokenizer of 257 tokens (256 bytes + <|endoftext|>, the Phi/CodeGen
tokenizer class), a MAGVIT-v2 of width 32 with 4-bit LFQ codes (16 codes), factor 2,
and a 4x4 token grid (8x8 px images).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from maskfocus_cli.models.showo_prompting import NUM_NEW_TOKENS

TINY_MAGVIT = {"ch": 32, "encoder_ch_mult": [1, 1], "encoder_num_res_blocks": [1, 1], "decoder_ch_mult": [1, 1],
               "decoder_num_res_blocks": [1, 1], "attn_resolutions": [4], "resolution": 8, "z_channels": 4}


def tiny_phi_tokenizer():
    """CodeGenTokenizer over the 256 byte symbols, no merges: every prompt is tokenisable."""
    from transformers import CodeGenTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    vocab["<|endoftext|>"] = len(vocab)
    return CodeGenTokenizer(vocab=vocab, merges=[])


def tiny_phi_config(vocab_size: int):
    from transformers import PhiConfig
    return PhiConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, partial_rotary_factor=0.5, max_position_embeddings=256,
                     hidden_act="gelu_new", tie_word_embeddings=False, architectures=["PhiForCausalLM"])


def tiny_showo_config(llm_vocab_size: int, codes: int = 16, grid: int = 4) -> dict:
    """The fields of the public Show-o config.json, at tiny sizes."""
    vocab = llm_vocab_size + NUM_NEW_TOKENS + codes + 1
    return {"_class_name": "Showo", "w_clip_vit": False, "vocab_size": vocab, "llm_vocab_size": llm_vocab_size,
            "llm_model_path": "microsoft/phi-1_5", "codebook_size": codes, "num_vq_tokens": grid * grid,
            "load_from_showo": False, "mask_token_id": vocab - 1}


def _randomise(module: torch.nn.Module, scale: float) -> None:
    """Fresh inits make logits almost ignore the text: randomise every parameter."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * scale)


def build_tiny_showo(folder: str | Path, seed: int = 0, grid: int = 4) -> Path:
    """Build, randomly initialise and save a tiny Show-o folder; returns the folder."""
    from safetensors.torch import save_file

    from maskfocus_cli.models.showo_magvit import MAGVITv2, MagvitConfig
    from maskfocus_cli.models.showo_transformer import ShowoTransformer
    torch.manual_seed(seed)
    folder = Path(folder)
    tok = tiny_phi_tokenizer()
    phi = tiny_phi_config(len(tok))
    phi.save_pretrained(folder / "llm")
    tok.save_pretrained(folder / "llm")

    mcfg = MagvitConfig.from_json(TINY_MAGVIT)
    vq = MAGVITv2(mcfg).eval()
    _randomise(vq.encoder, 0.2)
    _randomise(vq.decoder, 0.2)
    vq.save(folder / "vq_model")

    cfg = tiny_showo_config(len(tok), codes=mcfg.codebook_size, grid=grid)
    net = ShowoTransformer({k: v for k, v in cfg.items() if not k.startswith("_")}, tiny_phi_config(len(tok)))
    _randomise(net, 0.3)
    (folder / "showo").mkdir(parents=True, exist_ok=True)
    (folder / "showo" / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(folder / "showo" / "pytorch_model.safetensors"), metadata={"format": "pt"})
    return folder
