"""Meissonic (MeissonFlow/Meissonic) as a ``MaskedT2IAdapter``.

The folder layout is a diffusers pipeline folder (transformer/, vqvae/, text_encoder/,
tokenizer/, scheduler/); the transformer is our own implementation of the public
architecture (``meissonic_transformer.Transformer2DModel``), the rest are diffusers'
``VQModel`` and transformers' CLIP-ViT-H text encoder with projection.

What the public pipeline (viiika/Meissonic src/pipeline.py) feeds the transformer,
reproduced here:

* text: penultimate CLIP hidden states + projected pooled embedding, prompts padded
  to 77 tokens;
* micro-conditions ``[width, height, 0, 0, 6]`` (pixels, crop, aesthetic score);
* timestep: the scheduler's integer timestep ``T - 1 - step`` (the transformer
  multiplies it by 1000). Note the public *training* code feeds ``mask_ratio * 1000``
  into that same forward (so the embedding sees ratio · 10⁶); ``timestep_mode="mask_ratio"``
  selects that convention;
* RoPE ids: text all zero, image (0, row, col) on the transformer's (downsampled) grid;
* guidance ``l_u + w (l_c - l_u)``, Gumbel temperature ``linspace(2, 0, T)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from maskfocus_cli.models.amused import AmusedAdapter, load_frozen_components, load_transformer, read_mask_id
from maskfocus_cli.models.folders import check_device_dtype, resolve_folder
from maskfocus_cli.models.base import Cond, StepInfo

LAYOUT = ("transformer/config.json", "vqvae/config.json", "text_encoder/config.json", "tokenizer")
TEXT_MAX_LENGTH = 77  #: the public pipeline pads prompts to 77 tokens whatever the tokenizer says
MODEL_INDEX = {
    "_class_name": "Pipeline",
    "scheduler": ["src.scheduler", "Scheduler"],
    "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "transformer": ["src.transformer", "Transformer2DModel"],
    "vqvae": ["diffusers", "VQModel"],
}
TimestepMode = Literal["pipeline", "mask_ratio"]


class MeissonicAdapter(AmusedAdapter):
    """Meissonic: MMDiT-style masked transformer with timestep + micro-conditioning."""

    family = "meissonic"
    guidance_form = "meissonic"
    model_index = MODEL_INDEX

    def __init__(self, *args, timestep_mode: TimestepMode = "pipeline", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if timestep_mode not in ("pipeline", "mask_ratio"):
            raise ValueError(f"timestep_mode must be 'pipeline' or 'mask_ratio' (got {timestep_mode!r})")
        self.timestep_mode = timestep_mode
        cfg = self.transformer.config
        factor = 2 if cfg.downsample else 1
        h, w = self.grid
        if h % factor or w % factor:
            raise ValueError(f"token grid {h}x{w} is not divisible by the transformer's downsampling")
        self._img_ids = self.transformer.image_ids(h // factor, w // factor)

    @property
    def text_max_length(self) -> int:
        return TEXT_MAX_LENGTH

    def timestep(self, step: StepInfo) -> float:
        """The value the transformer receives (before its internal x1000)."""
        if self.timestep_mode == "pipeline":
            return float(step.total - 1 - step.index)
        return float(step.mask_ratio) * 1000.0  # as train_meissonic.py passes it: the forward's x1000 follows

    def call_transformer(self, net: nn.Module, tokens: torch.Tensor, cond: Cond,
                         step: StepInfo) -> torch.Tensor:
        b = tokens.shape[0]
        h, w = self.grid
        param = self.net_param(net)
        text = cond["encoder_hidden_states"].to(param.dtype)
        logits = net(tokens.view(b, h, w), encoder_hidden_states=text,
                     pooled_projections=cond["pooled_text_emb"].to(param.dtype),
                     timestep=torch.tensor([self.timestep(step)], device=param.device),
                     micro_conds=cond["micro_conds"],
                     img_ids=self._img_ids.to(param.device, text.dtype),
                     txt_ids=torch.zeros(text.shape[1], 3, device=param.device, dtype=text.dtype))
        return logits.reshape(b, self.codebook_size, h * w).transpose(1, 2)

    def describe(self) -> dict:
        d = super().describe()
        d["timestep_mode"] = self.timestep_mode
        return d

    def _save_scheduler(self, folder: Path) -> None:
        """A scheduler config the public ``Scheduler`` class (same fields as AmusedScheduler) reads."""
        import json
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "scheduler_config.json").write_text(json.dumps(
            {"_class_name": "Scheduler", "mask_token_id": self.mask_id, "masking_schedule": "cosine"}, indent=2))


def default_grid(transformer: nn.Module, vae_scale: int) -> tuple[int, int]:
    """Latent token grid: the config's ``sample_size`` if given, else the released resolutions.

    The public config has no sample size: the pipeline defaults to 1024 px, and the
    1024 px model is the one with a downsampling transformer (512 px models have none).
    """
    size = getattr(transformer.config, "sample_size", None)
    if size:
        return int(size), int(size)
    pixels = 1024 if transformer.config.downsample else 512
    return pixels // vae_scale, pixels // vae_scale


def load(path: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
         timestep_mode: TimestepMode = "pipeline") -> MeissonicAdapter:
    """Load a Meissonic pipeline folder (or hub id, e.g. MeissonFlow/Meissonic)."""
    from maskfocus_cli.models.meissonic_transformer import Transformer2DModel
    check_device_dtype(device, dtype)
    folder = resolve_folder(path, "meissonic", LAYOUT, allow_patterns=[
        "model_index.json", "scheduler/*", "tokenizer/*", "text_encoder/*.json", "text_encoder/*.safetensors",
        "vqvae/*.json", "vqvae/*.safetensors", "transformer/*.json", "transformer/*.safetensors"])
    transformer = load_transformer(folder, Transformer2DModel, "meissonic", dtype)
    vqvae, text_encoder, tokenizer = load_frozen_components(folder, "meissonic", transformer, dtype)
    mask_id = read_mask_id(folder, int(transformer.config.vocab_size))
    for m in (transformer, vqvae, text_encoder):
        m.to(device).eval().requires_grad_(False)
    grid = default_grid(transformer, 2 ** (len(vqvae.config.block_out_channels) - 1))
    return MeissonicAdapter(transformer, vqvae, text_encoder, tokenizer, mask_id, source=folder, grid=grid,
                            timestep_mode=timestep_mode)
