"""MAGVIT-v2 image tokenizer of Show-o (showlab/magvitv2): VQGAN encoder/decoder + LFQ codebook.

Our own implementation of the public architecture (Show-o ``models/modeling_magvitv2.py``
and ``common_modules.py``), with the same module names so the public checkpoint loads
with strict keys. Facts reproduced:

* look-up-free quantisation (LFQ): the codebook is not learned; code ``i`` is its
  ``D``-bit binary expansion (most significant bit first) mapped to {-1, +1}, stored
  as the ``quantize.embedding`` buffer (2^D x D) next to ``quantize.power_vals``
  (2^(D-1) ... 1). An encoder output is quantised by its signs;
* the public ``MAGVITv2`` takes no constructor arguments (its config.json lists
  none): encoder ch 128, ch_mult (1,2,2,4,4), res blocks (4,3,4,3,4); decoder ch_mult
  (1,1,2,2,4), res blocks (4,4,3,4,3); attention only in the middle (the listed
  attention resolution, 5, never occurs); D = 13 (8192 codes); factor 16;
* GroupNorm(32 groups, eps 1e-6) + swish everywhere; the decoder outputs [-1, 1].

The constructor arguments only exist so tests can build tiny instances.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MagvitConfig:
    """Architecture of a MAGVIT-v2 tokenizer; the defaults are the public checkpoint's."""

    ch: int = 128
    encoder_ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4)
    encoder_num_res_blocks: tuple[int, ...] = (4, 3, 4, 3, 4)
    decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_num_res_blocks: tuple[int, ...] = (4, 4, 3, 4, 3)
    attn_resolutions: tuple[int, ...] = (5,)
    resolution: int = 256
    z_channels: int = 13  #: also the LFQ code width D (2^D codes)
    in_ch: int = 3
    out_ch: int = 3

    @classmethod
    def from_json(cls, cfg: dict) -> "MagvitConfig":
        """Read a config.json dict; ``_``-prefixed bookkeeping keys are ignored, unknown keys refused."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(k for k in cfg if not k.startswith("_") and k not in names)
        if unknown:
            raise ValueError(f"unknown MAGVITv2 config fields: {', '.join(unknown)}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in names}
        return cls(**kw)

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.decoder_ch_mult) - 1)

    @property
    def codebook_size(self) -> int:
        return 2 ** self.z_channels


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm-swish-conv twice, 1x1 ``nin_shortcut`` when the width changes (no timestep input)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (m(n).reshape(b, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(c), as the public block
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after zero-padding right and bottom by one (asymmetric, as taming's)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (res blocks), ``attn`` (one per block or none), resampler."""

    def __init__(self, blocks: list[nn.Module], attn: list[nn.Module]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)

    def run(self, h: torch.Tensor) -> torch.Tensor:
        for i, blk in enumerate(self.block):
            h = blk(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


def _level(c_in: int, c_out: int, n_blocks: int, with_attn: bool) -> tuple[_Level, int]:
    blocks, attn = [], []
    for _ in range(n_blocks):
        blocks.append(ResnetBlock(c_in, c_out))
        c_in = c_out
        if with_attn:
            attn.append(AttnBlock(c_out))
    return _Level(blocks, attn), c_in


class Encoder(nn.Module):
    """Pixels (B, 3, H, W) in [-1, 1] → pre-quantisation latents (B, D, H/f, W/f)."""

    def __init__(self, cfg: MagvitConfig) -> None:
        super().__init__()
        mult = (1,) + tuple(cfg.encoder_ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_ch, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        res, c = cfg.resolution, cfg.ch
        last = len(cfg.encoder_ch_mult) - 1
        for i, m in enumerate(cfg.encoder_ch_mult):
            level, c = _level(cfg.ch * mult[i], cfg.ch * m, cfg.encoder_num_res_blocks[i], res in cfg.attn_resolutions)
            if i != last:
                level.downsample = Downsample(c)
                res //= 2
            self.down.append(level)
        self.mid = _Mid(c)
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, cfg.z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.run(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.quant_conv(self.conv_out(F.silu(self.norm_out(h))))


class Decoder(nn.Module):
    """Quantised latents (B, D, h, w) → pixels (B, 3, h*f, w*f) in about [-1, 1]."""

    def __init__(self, cfg: MagvitConfig) -> None:
        super().__init__()
        n = len(cfg.decoder_ch_mult)
        c = cfg.ch * cfg.decoder_ch_mult[-1]
        res = cfg.resolution // 2 ** (n - 1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, c, 3, padding=1)
        self.mid = _Mid(c)
        levels: list[_Level] = []
        for i in reversed(range(n)):
            level, c = _level(c, cfg.ch * cfg.decoder_ch_mult[i], cfg.decoder_num_res_blocks[i],
                              res in cfg.attn_resolutions)
            if i != 0:
                level.upsample = Upsample(c)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # index = resolution level, run from the last one
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(self.post_quant_conv(z)))
        for level in reversed(self.up):
            h = level.run(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class LFQuantizer(nn.Module):
    """Look-up-free quantiser: codes are D-bit sign patterns (MSB first)."""

    def __init__(self, codebook_dim: int) -> None:
        super().__init__()
        shifts = torch.arange(codebook_dim - 1, -1, -1)
        bits = (torch.arange(2 ** codebook_dim).unsqueeze(1) >> shifts) & 1
        self.register_buffer("embedding", bits.float() * 2 - 1)
        self.register_buffer("power_vals", 2 ** shifts)

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """(B, h*w) code ids → (B, D, h, w) ±1 vectors."""
        b = indices.shape[0]
        z = F.embedding(indices.reshape(b, -1), self.embedding)
        return z.reshape(b, shape[0], shape[1], -1).permute(0, 3, 1, 2).contiguous()

    def get_indices(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) latents → (B, h*w) code ids of their sign patterns."""
        bits = (z > 0).long()
        return (bits * self.power_vals.view(1, -1, 1, 1)).sum(1).reshape(z.shape[0], -1)


class MAGVITv2(nn.Module):
    """The tokenizer: ``encoder``, ``decoder`` and ``quantize`` as in the public checkpoint."""

    def __init__(self, config: MagvitConfig | None = None) -> None:
        super().__init__()
        self.config = config or MagvitConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        self.quantize = LFQuantizer(self.config.z_channels)

    @torch.no_grad()
    def get_code(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] → (B, N) code ids."""
        return self.quantize.get_indices(self.encoder(pixels))

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        return self.quantize.get_codebook_entry(indices, shape)

    def decode_code(self, indices: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """(B, N) code ids → (B, 3, H, W) in about [-1, 1] (the public ``decode_code``)."""
        z = self.get_codebook_entry(indices, shape).to(self.decoder.conv_in.weight.dtype)
        return self.decoder(z)

    def save(self, folder: str | Path) -> None:
        """config.json (public class name + our architecture fields) and pytorch_model.safetensors."""
        from safetensors.torch import save_file
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = {"_class_name": "MAGVITv2", **self.config.to_json()}
        (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "pytorch_model.safetensors"), metadata={"format": "pt"})
