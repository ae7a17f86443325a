"""Meissonic's masked transformer, written here (it is in no pip package).

Architecture of MeissonFlow/Meissonic ``transformer/`` (public code: viiika/Meissonic,
src/transformer.py), rebuilt from diffusers building blocks so parameter names and
shapes match the released checkpoint and it loads with strict key checking:

    token ids --embed (Embedding + RMSNorm + 1x1 conv)--> down_block (2x2 conv, optional)
    --> project_to_hidden --> N_double Flux-style MMDiT blocks (image + text streams)
    --> N_single Flux-style single-stream blocks over [text; image] --> project_from_hidden
    --> up_block (2x2 transposed conv, optional) --> mlm_layer --> logits over the codebook

Conditioning (as in the public code): the pooled CLIP embedding is concatenated with
sinusoidal embeddings (256 each) of the five micro-conditions, mapped by ``cond_embed``
to the model width, then combined with the timestep embedding (``time_text_embed``);
RoPE over 3-axis ids (text ids all zero, image ids (0, row, col) on the transformer's
grid). The timestep is multiplied by 1000 inside ``forward``, as in the public code.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import (CombinedTimestepTextProjEmbeddings, TimestepEmbedding,
                                         get_timestep_embedding)
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import RMSNorm
from diffusers.models.transformers.transformer_flux import (FluxPosEmbed, FluxSingleTransformerBlock,
                                                            FluxTransformerBlock)
from diffusers.models.upsampling import Upsample2D
from torch import nn

MICRO_COND_ENCODE_DIM = 256  #: sinusoidal width per micro-condition (fixed in the public code)
NUM_MICRO_CONDS = 5  #: [width, height, crop_top, crop_left, aesthetic]
EPS = 1e-6


class TokenEmbed(nn.Module):
    """Token ids (B, h, w) → (B, C, h, w): embedding, RMSNorm, 1x1 conv (no bias)."""

    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, dim)
        self.layer_norm = RMSNorm(dim, EPS, True)
        self.conv = nn.Conv2d(dim, dim, kernel_size=1, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.conv(self.layer_norm(self.embeddings(ids)).permute(0, 3, 1, 2))


class MlmHead(nn.Module):
    """(B, C, h, w) → (B, K, h, w) logits: 1x1 conv, RMSNorm over channels, 1x1 conv."""

    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=1, bias=False)
        self.layer_norm = RMSNorm(dim, EPS, True)
        self.conv2 = nn.Conv2d(dim, codebook_size, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(self.conv1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.conv2(x)


class Resample(nn.Module):
    """The public code's ``Simple_UVitBlock``: an optional 2x down- or up-sampling conv."""

    def __init__(self, dim: int, downsample: bool, upsample: bool) -> None:
        super().__init__()
        self.downsample = (Downsample2D(dim, use_conv=True, padding=0, name="Conv2d_0", kernel_size=2,
                                        norm_type="rms_norm", eps=EPS, elementwise_affine=True, bias=False)
                           if downsample else None)
        self.upsample = (Upsample2D(dim, use_conv_transpose=True, kernel_size=2, padding=0, name="conv",
                                    norm_type="rms_norm", eps=EPS, elementwise_affine=True, bias=False,
                                    interpolate=False)
                         if upsample else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class Transformer2DModel(ModelMixin, ConfigMixin):
    """Meissonic transformer; the class name matches the public config's ``_class_name``."""

    _supports_gradient_checkpointing = False
    _no_split_modules = ["FluxTransformerBlock", "FluxSingleTransformerBlock"]

    @register_to_config
    def __init__(self, patch_size: int = 1, in_channels: int = 64, num_layers: int = 14,
                 num_single_layers: int = 28, attention_head_dim: int = 128, num_attention_heads: int = 8,
                 joint_attention_dim: int = 1024, pooled_projection_dim: int = 1024,
                 guidance_embeds: bool = False, axes_dims_rope: tuple[int, ...] = (16, 56, 56),
                 vocab_size: int = 8256, codebook_size: int = 8192, downsample: bool = True,
                 upsample: bool = True, sample_size: int | None = None) -> None:
        # sample_size (latent grid side) is metadata only; the public config has none (1024 px assumed)
        super().__init__()
        if guidance_embeds:
            raise ValueError("Meissonic checkpoints have guidance_embeds=false; guidance embeddings are not supported")
        if sum(axes_dims_rope) != attention_head_dim:
            raise ValueError(f"axes_dims_rope {list(axes_dims_rope)} must sum to attention_head_dim "
                             f"{attention_head_dim}")
        dim = num_attention_heads * attention_head_dim
        self.inner_dim = dim
        self.pos_embed = FluxPosEmbed(theta=10000, axes_dim=list(axes_dims_rope))
        # time_text_embed's "text" input is cond_embed's output (width dim), hence pooled_projection_dim == dim
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(embedding_dim=dim,
                                                                  pooled_projection_dim=pooled_projection_dim)
        self.context_embedder = nn.Linear(joint_attention_dim, dim)
        self.transformer_blocks = nn.ModuleList(
            [FluxTransformerBlock(dim, num_attention_heads, attention_head_dim) for _ in range(num_layers)])
        self.single_transformer_blocks = nn.ModuleList(
            [FluxSingleTransformerBlock(dim, num_attention_heads, attention_head_dim)
             for _ in range(num_single_layers)])
        self.embed = TokenEmbed(dim, vocab_size)
        self.mlm_layer = MlmHead(dim, codebook_size)
        self.cond_embed = TimestepEmbedding(MICRO_COND_ENCODE_DIM * NUM_MICRO_CONDS + pooled_projection_dim, dim,
                                            sample_proj_bias=False)
        self.encoder_proj_layer_norm = RMSNorm(dim, EPS, True)
        self.project_to_hidden_norm = RMSNorm(dim, EPS, True)
        self.project_to_hidden = nn.Linear(dim, dim, bias=False)
        self.project_from_hidden_norm = RMSNorm(dim, EPS, True)
        self.project_from_hidden = nn.Linear(dim, dim, bias=False)
        self.down_block = Resample(dim, downsample, False)
        self.up_block = Resample(dim, False, upsample)

    @staticmethod
    def image_ids(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """RoPE ids (h*w, 3) of the transformer's token grid: (0, row, col), row-major."""
        rows = torch.arange(height, device=device).repeat_interleave(width)
        cols = torch.arange(width, device=device).repeat(height)
        return torch.stack([torch.zeros_like(rows), rows, cols], dim=1).to(dtype)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                pooled_projections: torch.Tensor, timestep: torch.Tensor, micro_conds: torch.Tensor,
                img_ids: torch.Tensor | None = None, txt_ids: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states: (B, h, w) token ids → (B, codebook_size, h, w) logits.

        ``img_ids``/``txt_ids`` default to the public pipeline's values.
        """
        b = hidden_states.shape[0]
        micro = get_timestep_embedding(micro_conds.flatten(), MICRO_COND_ENCODE_DIM, flip_sin_to_cos=True,
                                       downscale_freq_shift=0).reshape(b, -1)
        pooled = torch.cat([pooled_projections, micro.to(pooled_projections.dtype)], dim=1).to(self.dtype)
        pooled = self.cond_embed(pooled).to(encoder_hidden_states.dtype)

        x = self.down_block(self.embed(hidden_states))
        text = self.encoder_proj_layer_norm(self.context_embedder(encoder_hidden_states))
        _, channels, height, width = x.shape
        x = x.permute(0, 2, 3, 1).reshape(b, height * width, channels)
        x = self.project_to_hidden(self.project_to_hidden_norm(x))

        t = timestep.to(x.dtype).reshape(-1).expand(b) * 1000
        temb = self.time_text_embed(t, pooled)
        if img_ids is None:
            img_ids = self.image_ids(height, width, x.device)
        if txt_ids is None:
            txt_ids = torch.zeros(text.shape[1], 3, device=x.device)
        rope = self.pos_embed(torch.cat([txt_ids, img_ids], dim=0))

        for block in self.transformer_blocks:
            text, x = block(hidden_states=x, encoder_hidden_states=text, temb=temb, image_rotary_emb=rope)
        for block in self.single_transformer_blocks:
            text, x = block(hidden_states=x, encoder_hidden_states=text, temb=temb, image_rotary_emb=rope)

        x = self.project_from_hidden(self.project_from_hidden_norm(x))
        x = x.reshape(b, height, width, channels).permute(0, 3, 1, 2)
        return self.mlm_layer(self.up_block(x))
