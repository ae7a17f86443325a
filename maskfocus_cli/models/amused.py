"""aMUSEd (amused/amused-256, amused/amused-512) as a ``MaskedT2IAdapter``.

Components are the real ones: diffusers' ``UVit2DModel`` (the trainable network),
``VQModel`` (decoder, codebook lookup) and transformers' CLIP text encoder with
projection. The engine samples (the ``AmusedPipeline`` object is never used);
what the pipeline does per step is reproduced here exactly:

* text: ``hidden_states[-2]`` of the CLIP text encoder (penultimate layer) as
  cross-attention states, ``text_embeds`` (projected pooled output) as pooled
  embedding; prompts padded to the tokenizer's ``model_max_length``;
* micro-conditioning: ``[width, height, crop_top, crop_left, aesthetic_score]`` in
  pixels, defaults ``(W, H, 0, 0, 6)`` as ``AmusedPipeline.__call__``;
* guidance ``l_u + w (l_c - l_u)`` and Gumbel temperature ``linspace(2, 0, T)``,
  both the engine's defaults for the "meissonic" guidance form.

Differences from the pipeline: it skips the unconditional pass only for w <= 1
(ours for w == 1), and it draws its randomness differently (see
tests/integration/test_amused.py), so equal seeds give different, equally
distributed images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from maskfocus_cli.models.folders import (ModelFolderError, check_device_dtype, expect_class,
                                                 load_component, load_state_strict, read_config, resolve_folder,
                                                 save_folder_atomically, weight_files, weight_variant)
from maskfocus_cli.models.base import Cond, MaskedT2IAdapter, StepInfo

LAYOUT = ("transformer/config.json", "vqvae/config.json", "text_encoder/config.json", "tokenizer")
COMPONENTS_COPIED = ("vqvae", "text_encoder", "tokenizer", "scheduler", "model_index.json")
MODEL_INDEX = {
    "_class_name": "AmusedPipeline",
    "scheduler": ["diffusers", "AmusedScheduler"],
    "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "transformer": ["diffusers", "UVit2DModel"],
    "vqvae": ["diffusers", "VQModel"],
}


class AmusedAdapter(MaskedT2IAdapter):
    """aMUSEd: UVit2D over a VQ-GAN token grid, CLIP-L text conditioning, micro-conds."""

    family = "amused"
    guidance_form = "meissonic"
    #: model_index.json written by ``save`` when there is no source folder to copy from
    model_index: dict = MODEL_INDEX

    def __init__(self, transformer: nn.Module, vqvae: nn.Module, text_encoder: nn.Module, tokenizer,
                 mask_id: int, source: Path | None = None, aesthetic_score: float = 6.0,
                 crop_coord: tuple[int, int] = (0, 0), grid: tuple[int, int] | None = None) -> None:
        self.transformer = transformer
        self.vqvae = vqvae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.source = source
        self.aesthetic_score = float(aesthetic_score)
        self.crop_coord = (int(crop_coord[0]), int(crop_coord[1]))
        self._mask_id = int(mask_id)
        cfg = transformer.config
        self._codebook = int(cfg.codebook_size)
        self._grid = grid if grid is not None else (int(cfg.sample_size), int(cfg.sample_size))
        self.vae_scale = 2 ** (len(vqvae.config.block_out_channels) - 1)
        if not self._codebook <= self._mask_id < int(cfg.vocab_size):
            raise ModelFolderError(f"mask token id {self._mask_id} is outside the transformer's extra "
                                   f"vocabulary [{self._codebook}, {cfg.vocab_size})")

    # ------------------------------------------------------------------ geometry
    @property
    def mask_id(self) -> int:
        return self._mask_id

    @property
    def codebook_size(self) -> int:
        return self._codebook

    @property
    def grid(self) -> tuple[int, int]:
        return self._grid

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) in pixels of a decoded image."""
        return self._grid[0] * self.vae_scale, self._grid[1] * self.vae_scale

    # ------------------------------------------------------------------ conditioning
    def micro_conds(self, batch: int) -> torch.Tensor:
        """(B, 5) ``[width, height, crop_top, crop_left, aesthetic]`` as the pipeline builds it."""
        h, w = self.image_size
        row = torch.tensor([w, h, self.crop_coord[0], self.crop_coord[1], self.aesthetic_score])
        return row.unsqueeze(0).expand(batch, -1).clone()

    @property
    def text_max_length(self) -> int:
        """Prompts are padded/truncated to this many tokens (the pipeline's choice)."""
        return int(self.tokenizer.model_max_length)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Cond:
        dev = next(self.text_encoder.parameters()).device
        ids = self.tokenizer(list(prompts), return_tensors="pt", padding="max_length", truncation=True,
                             max_length=self.text_max_length).input_ids.to(dev)
        out = self.text_encoder(ids, return_dict=True, output_hidden_states=True)
        hidden = out.hidden_states[-2]
        return {"encoder_hidden_states": hidden, "pooled_text_emb": out.text_embeds,
                "micro_conds": self.micro_conds(len(prompts)).to(dev, hidden.dtype)}

    # ------------------------------------------------------------------ network
    def net_param(self, net: nn.Module) -> torch.Tensor:
        """A parameter of ``net`` (for its dtype/device), else of our transformer.

        ``net`` may own no parameters: the trainer's LoRA KL reference wraps the peft
        model without registering it (it runs the same weights, adapters disabled).
        """
        p = next(net.parameters(), None)
        return p if p is not None else next(self.transformer.parameters())

    def call_transformer(self, net: nn.Module, tokens: torch.Tensor, cond: Cond,
                         step: StepInfo) -> torch.Tensor:
        b = tokens.shape[0]
        h, w = self._grid
        dtype = self.net_param(net).dtype
        logits = net(tokens.view(b, h, w), encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
                     pooled_text_emb=cond["pooled_text_emb"].to(dtype), micro_conds=cond["micro_conds"])
        return logits.reshape(b, self._codebook, h * w).transpose(1, 2)

    # ------------------------------------------------------------------ VQ side
    def _vq_shape(self, b: int) -> tuple[int, int, int, int]:
        h, w = self._grid
        return (b, h, w, int(self.vqvae.quantize.vq_embed_dim))

    @torch.no_grad()
    def code_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        dev = next(self.vqvae.parameters()).device
        return self.vqvae.quantize.get_codebook_entry(tokens.reshape(-1).to(dev), self._vq_shape(tokens.shape[0]))

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        dev = next(self.vqvae.parameters()).device
        out = self.vqvae.decode(tokens.reshape(tokens.shape[0], -1).to(dev), force_not_quantize=True,
                                shape=self._vq_shape(tokens.shape[0])).sample
        return out.float().clamp(0, 1)

    def describe(self) -> dict:
        d = super().describe()
        d["parameters"] = sum(p.numel() for p in self.transformer.parameters())
        d["image_size"] = list(self.image_size)
        d["micro_conditioning"] = {"aesthetic_score": self.aesthetic_score, "crop_coord": list(self.crop_coord)}
        return d

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> None:
        """Write a standard aMUSEd pipeline folder with *this* transformer's weights.

        Frozen components are copied byte-for-byte from the folder we were loaded
        from (or saved with ``save_pretrained`` when built in memory), so the result
        loads in diffusers' ``AmusedPipeline`` as well as here.
        """
        def fill(tmp: Path) -> None:
            self.transformer.save_pretrained(tmp / "transformer", safe_serialization=True)
            src = self.source
            if src is not None and all((src / c).exists() for c in COMPONENTS_COPIED):
                for c in COMPONENTS_COPIED:
                    if (src / c).is_dir():
                        shutil.copytree(src / c, tmp / c)
                    else:
                        shutil.copy2(src / c, tmp / c)
                return
            self.vqvae.save_pretrained(tmp / "vqvae", safe_serialization=True)
            self.text_encoder.save_pretrained(tmp / "text_encoder")
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            self._save_scheduler(tmp / "scheduler")
            (tmp / "model_index.json").write_text(json.dumps(self.model_index, indent=2) + "\n")

        save_folder_atomically(Path(folder), fill)

    def _save_scheduler(self, folder: Path) -> None:
        from diffusers import AmusedScheduler
        AmusedScheduler(mask_token_id=self._mask_id).save_pretrained(folder)


# ---------------------------------------------------------------------- loading
def load_transformer(folder: Path, cls: type, family: str, dtype: torch.dtype,
                     class_names: tuple[str, ...] | None = None) -> nn.Module:
    """Build ``cls`` from transformer/config.json without random init and load its weights strictly."""
    from accelerate import init_empty_weights
    cfg_path = folder / "transformer" / "config.json"
    cfg = read_config(cfg_path)
    expect_class(cfg, cfg_path, class_names or (cls.__name__,), family)
    try:
        with init_empty_weights():
            model = cls.from_config(cfg)
    except (TypeError, ValueError) as e:
        raise ModelFolderError(f"{cfg_path} is not a usable {cls.__name__} config ({e})") from None
    load_state_strict(model, weight_files(folder / "transformer", "diffusion_pytorch_model"))
    return nn.Module.to(model, dtype)  # plain cast: no fp32-only modules in these transformers


def read_mask_id(folder: Path, vocab_size: int) -> int:
    sched = folder / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        return int(read_config(sched)["mask_token_id"])
    return vocab_size - 1  # the aMUSEd convention (8255 for vocab 8256)


def load_frozen_components(folder: Path, family: str, transformer: nn.Module, dtype: torch.dtype):
    """VQ decoder, CLIP text encoder (with projection) and tokenizer of a pipeline folder.

    The VQ decoder stays in float32 when its config asks for ``force_upcast``
    (fp16/bf16 VQ-GAN decoding overflows), as the pipelines do.
    """
    from diffusers import VQModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer
    vq_cfg_path = folder / "vqvae" / "config.json"
    vq_cfg = read_config(vq_cfg_path)
    expect_class(vq_cfg, vq_cfg_path, "VQModel", family)
    vq_dtype = torch.float32 if vq_cfg.get("force_upcast", False) else dtype
    vqvae = load_component("VQ model (vqvae/)", folder / "vqvae", VQModel.from_pretrained, torch_dtype=vq_dtype,
                           variant=weight_variant(folder / "vqvae", "diffusion_pytorch_model"))
    if int(vqvae.config.num_vq_embeddings) != int(transformer.config.codebook_size):
        raise ModelFolderError(f"{folder}: vqvae has {vqvae.config.num_vq_embeddings} codes but the "
                               f"transformer predicts {transformer.config.codebook_size}")
    te_cfg_path = folder / "text_encoder" / "config.json"
    expect_class(read_config(te_cfg_path), te_cfg_path, "CLIPTextModelWithProjection", family,
                 key="architectures")
    text_encoder = load_component("text encoder (text_encoder/)", folder / "text_encoder",
                                  CLIPTextModelWithProjection.from_pretrained, dtype=dtype,
                                  variant=weight_variant(folder / "text_encoder", "model"))
    tokenizer = load_component("tokenizer (tokenizer/)", folder / "tokenizer", CLIPTokenizer.from_pretrained)
    if len(tokenizer) == 0 or tokenizer.eos_token_id is None:  # an empty tokenizer folder loads "fine"
        raise ModelFolderError(f"{folder / 'tokenizer'}: the tokenizer has no vocabulary; the pipeline folder is "
                               "incomplete — download tokenizer/ again")
    return vqvae, text_encoder, tokenizer


def load(path: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> AmusedAdapter:
    """Load an aMUSEd pipeline folder (or hub id) as an adapter on ``device`` in ``dtype``."""
    check_device_dtype(device, dtype)
    folder = resolve_folder(path, "amused", LAYOUT, allow_patterns=[
        "model_index.json", "scheduler/*", "tokenizer/*", "text_encoder/*.json", "text_encoder/*.safetensors",
        "vqvae/*.json", "vqvae/*.safetensors", "transformer/*.json", "transformer/*.safetensors"])
    from diffusers import UVit2DModel
    transformer = load_transformer(folder, UVit2DModel, "amused", dtype)

    vqvae, text_encoder, tokenizer = load_frozen_components(folder, "amused", transformer, dtype)
    mask_id = read_mask_id(folder, int(transformer.config.vocab_size))
    for m in (transformer, vqvae, text_encoder):
        m.to(device).eval().requires_grad_(False)
    return AmusedAdapter(transformer, vqvae, text_encoder, tokenizer, mask_id, source=folder)
