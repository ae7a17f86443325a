"""Tiny random aMUSEd pipelines in the real folder layout (for tests and CPU smoke runs).

Same classes and configs as amused/amused-256, shrunk: a 4x4 token grid, 30 codes,
a 2-layer CLIP text encoder with a character-level BPE vocabulary. Saved with
diffusers' own ``AmusedPipeline.save_pretrained``, so loading it exercises the real
loading code path.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")


def tiny_clip_tokenizer(max_length: int = 16):
    """A CLIPTokenizer over single characters (no merges): every prompt is tokenisable."""
    from transformers import CLIPTokenizer
    vocab = {c: i for i, c in enumerate(CHARS)}
    vocab.update({c + "</w>": len(CHARS) + i for i, c in enumerate(CHARS)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "vocab.json").write_text(json.dumps(vocab))
        (Path(d) / "merges.txt").write_text("#version: 0.2\n")
        tok = CLIPTokenizer(str(Path(d) / "vocab.json"), str(Path(d) / "merges.txt"),
                            model_max_length=max_length)
    return tok


def tiny_clip_text_encoder(tokenizer, hidden: int = 32, projection: int = 32, layers: int = 2,
                           with_projection: bool = True):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, projection_dim=projection,
                         max_position_embeddings=tokenizer.model_max_length,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(cfg).eval()


def tiny_vqvae(codes: int = 30, latent_channels: int = 4):
    """VQModel with two resolution levels (scale factor 2), codebook lookup as in aMUSEd."""
    from diffusers import VQModel
    return VQModel(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                   up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=latent_channels,
                   num_vq_embeddings=codes, norm_num_groups=4, layers_per_block=1, sample_size=8,
                   lookup_from_codebook=True, force_upcast=True, mid_block_add_attention=False).eval()


def build_tiny_amused(folder: str | Path, seed: int = 0, grid: int = 4, codes: int = 30) -> Path:
    """Build, randomly initialise and save a tiny aMUSEd pipeline folder; returns the folder."""
    from diffusers import AmusedPipeline, AmusedScheduler, UVit2DModel
    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer()
    text_encoder = tiny_clip_text_encoder(tok)
    vocab = codes + 2  # codes + [MASK] + one spare id, like 8192 + 64 in the real model
    transformer = UVit2DModel(
        hidden_size=32, use_bias=False, cond_embed_dim=32, micro_cond_encode_dim=2, micro_cond_embed_dim=10,
        encoder_hidden_size=32, vocab_size=vocab, codebook_size=codes, in_channels=8, block_out_channels=16,
        num_res_blocks=1, block_num_heads=2, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, sample_size=grid)
    # default init leaves some projections at zero: randomise everything so logits depend on all inputs
    with torch.no_grad():
        for p in transformer.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    pipe = AmusedPipeline(vqvae=tiny_vqvae(codes), tokenizer=tok, text_encoder=text_encoder,
                          transformer=transformer.eval(), scheduler=AmusedScheduler(mask_token_id=vocab - 1))
    folder = Path(folder)
    pipe.save_pretrained(folder)
    return folder
