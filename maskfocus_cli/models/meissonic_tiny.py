"""Tiny random Meissonic pipeline folders in the real layout (for tests and CPU smoke runs).

Same classes and config fields as MeissonFlow/Meissonic, shrunk: width 32 (2 heads of
16, RoPE axes 4+6+6), one double and one single block, 30 codes, an 8x8 latent grid
downsampled to 4x4 inside the transformer, a 2-layer CLIP text encoder taking 77 tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from maskfocus_cli.models.amused_tiny import tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_vqvae
from maskfocus_cli.models.meissonic import MODEL_INDEX, TEXT_MAX_LENGTH


def tiny_meissonic_transformer(codes: int = 30, grid: int = 8):
    from maskfocus_cli.models.meissonic_transformer import Transformer2DModel
    model = Transformer2DModel(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                               joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6),
                               vocab_size=codes + 2, codebook_size=codes, downsample=True, upsample=True,
                               sample_size=grid)
    # the zero-initialised AdaLN/gates of a fresh model would make logits ignore text and time
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model.eval()


def build_tiny_meissonic(folder: str | Path, seed: int = 0, codes: int = 30) -> Path:
    """Build, randomly initialise and save a tiny Meissonic pipeline folder; returns the folder."""
    torch.manual_seed(seed)
    folder = Path(folder)
    tok = tiny_clip_tokenizer(max_length=TEXT_MAX_LENGTH)
    tiny_clip_text_encoder(tok).save_pretrained(folder / "text_encoder")
    tok.save_pretrained(folder / "tokenizer")
    tiny_vqvae(codes).save_pretrained(folder / "vqvae")
    tiny_meissonic_transformer(codes).save_pretrained(folder / "transformer")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "Scheduler", "mask_token_id": codes + 1, "masking_schedule": "cosine"}))
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    return folder
