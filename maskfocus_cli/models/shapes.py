"""The built-in shapes-world model: a small bidirectional masked transformer.

Text is a closed vocabulary (the shapes world's words), embedded and concatenated
in front of the 8×8 image tokens; one transformer reads both and predicts a code
for every image position. The empty prompt (all padding) is the unconditional
branch for classifier-free guidance, learnt by prompt dropout.

Attention is Show-o-style (``text_attends_image: false``, the shipped base): image
rows read text and image, text rows read text only. The text rows then depend on
the prompt alone, so a sampling run computes their per-layer keys/values once
(``prepare_cond``) and every step runs the 64 image rows only. Older folders
without the key are the joint variant (text rows read the image too).
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from maskfocus_cli.models.base import Cond, MaskedT2IAdapter, StepInfo, unwrap_module

PAD = "<pad>"


@dataclass(frozen=True)
class ShapesModelConfig:
    """Architecture of the built-in model (stored as config.json next to the weights)."""

    vocabulary: tuple[str, ...] = ()  #: text words; id 0 is padding
    text_len: int = 16  #: max prompt words
    num_codes: int = 512  #: K, VQ codebook size; [MASK] = K
    grid: tuple[int, int] = (8, 8)  #: token grid
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    #: True = joint attention (text rows read the image; folders from before the key);
    #: False = text rows read text only, so their keys/values are cached per sampling run
    text_attends_image: bool = True

    def to_json(self) -> dict:
        d = asdict(self)
        d["vocabulary"] = list(self.vocabulary)
        d["grid"] = list(self.grid)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ShapesModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"shapes model config has unknown keys {sorted(unknown)}")
        d = dict(d)
        for key, tp in typing.get_type_hints(cls).items():  # a damaged file: its field named, not a torch error
            if key not in d:
                continue
            if tp is int and (not isinstance(d[key], int) or isinstance(d[key], bool) or d[key] < 1):
                raise ValueError(f"{key} is {d[key]!r}, not a positive whole number")
            if tp is bool and not isinstance(d[key], bool):
                raise ValueError(f"{key} is {d[key]!r}, not true/false")
        vocabulary, grid = d.get("vocabulary", ()), d.get("grid", (8, 8))
        if not isinstance(vocabulary, (list, tuple)) or not all(isinstance(w, str) for w in vocabulary):
            raise ValueError("vocabulary is not a list of words")
        if not isinstance(grid, (list, tuple)) or len(grid) != 2 or \
                not all(isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid):
            raise ValueError(f"grid is {grid!r}, not two positive whole numbers")
        d["vocabulary"], d["grid"] = tuple(vocabulary), tuple(grid)
        return cls(**d)


def sincos_2d(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """(h*w, dim) 2-D sine-cosine position codes (half the channels per axis), unit scale."""
    h, w = grid
    quarter = dim // 4
    freq = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    parts = []
    for coord in (ys.flatten(), xs.flatten()):
        ang = coord[:, None] * freq[None, :]
        parts += [ang.sin(), ang.cos()]
    out = torch.cat(parts, dim=1)
    return torch.nn.functional.pad(out, (0, dim - out.shape[1]))


class ShapesTransformer(nn.Module):
    """tokens (B, N) + text ids (B, L) → logits (B, N, K)."""

    def __init__(self, cfg: ShapesModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.token_emb = nn.Embedding(cfg.num_codes + 1, d)
        self.text_emb = nn.Embedding(len(cfg.vocabulary) + 1, d, padding_idx=0)
        # small embeddings (BERT-style 0.02) with a 2-D sin-cos start for image positions:
        # with N(0, 1) token embeddings dwarfing the positions, attention cannot find
        # neighbouring patches and the model stalls at predicting background everywhere
        nn.init.normal_(self.token_emb.weight, std=0.02)
        nn.init.normal_(self.text_emb.weight, std=0.02)
        with torch.no_grad():
            self.text_emb.weight[0].zero_()
        self.image_pos = nn.Parameter(0.02 * sincos_2d(cfg.grid, d))
        self.text_pos = nn.Parameter(torch.randn(cfg.text_len, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, cfg.n_heads, cfg.d_ff, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.num_codes)

    def forward(self, tokens: torch.Tensor, text_ids: torch.Tensor,
                text_kv: torch.Tensor | None = None) -> torch.Tensor:
        """``text_kv``: the prompt's per-layer keys/values from ``text_keys_values``
        (text-reads-text-only models; computed here when not given)."""
        b, n = tokens.shape
        img = self.token_emb(tokens) + self.image_pos
        pad = torch.cat([text_ids == 0, torch.zeros(b, n, dtype=torch.bool, device=tokens.device)], 1)
        # additive key bias (B, 1, 1, L + N): padded text positions are never attended to
        attn_bias = torch.zeros(pad.shape, dtype=img.dtype, device=img.device).masked_fill(pad, float("-inf"))
        attn_bias = attn_bias[:, None, None, :]
        if self.cfg.text_attends_image:
            if text_kv is not None:
                raise ValueError("text_kv is only for models whose text rows do not read the image")
            x = torch.cat([self.text_emb(text_ids) + self.text_pos, img], 1)
            prefixes: list[torch.Tensor | None] = [None] * self.cfg.n_layers
        else:
            x = img
            prefixes = list((self.text_keys_values(text_ids) if text_kv is None else text_kv).unbind(1))
        *inner, last = self.encoder.layers
        for layer, prefix in zip(inner, prefixes):
            x = self._block(layer, x, attn_bias, prefix=prefix)
        # Only [MASK] positions' logits are ever read (sampling, losses, profiling), so the
        # last block computes queries, FFN and head for those rows alone: ~10% of a sampling
        # forward. Known positions' logits are unspecified (0 here; nobody samples them).
        masked = tokens == self.cfg.num_codes
        rows = int(masked.sum(1).max())
        if rows in (0, n):
            return self.head(self.norm(self._block(last, x, attn_bias, pick=lambda t: t[:, -n:],
                                                   prefix=prefixes[-1])))
        # per row, masked positions first (stable, so the order is the grid's); rows with
        # fewer masks than ``rows`` also score a few known positions, which are dropped
        order = torch.sort((~masked).to(torch.uint8), dim=1, stable=True).indices[:, :rows]
        index = order.unsqueeze(-1).expand(b, rows, x.shape[-1])
        out = self.head(self.norm(self._block(last, x, attn_bias, pick=lambda t: t[:, -n:].gather(1, index),
                                              prefix=prefixes[-1])))
        keep = masked.gather(1, order).unsqueeze(-1)
        return out.new_zeros(b, n, out.shape[-1]).scatter(1, order.unsqueeze(-1).expand_as(out), out * keep)

    def text_keys_values(self, text_ids: torch.Tensor) -> torch.Tensor:
        """(B, layers, 2, heads, L, d_head): what image rows read of the prompt, per layer.

        Only for ``text_attends_image=False``: the text rows then read text alone (padding
        included — an empty prompt has nothing else to read), so this depends on the
        prompt and the weights only and is computed once per sampling run.
        """
        x = self.text_emb(text_ids) + self.text_pos
        kvs: list[torch.Tensor] = []
        *inner, last = self.encoder.layers
        for layer in inner:
            x = self._block(layer, x, None, kv_out=kvs)
        kvs.append(self._keys_values(last, last.norm1(x)))
        return torch.stack(kvs, 1)

    def _keys_values(self, layer: nn.TransformerEncoderLayer, y: torch.Tensor) -> torch.Tensor:
        """(B, 2, heads, L, d_head) keys and values of normed rows ``y``."""
        b, length, d = y.shape
        heads = self.cfg.n_heads
        attn = layer.self_attn
        w_kv, b_kv = attn.in_proj_weight[d:], attn.in_proj_bias[d:]
        return F.linear(y, w_kv, b_kv).view(b, length, 2, heads, d // heads).permute(0, 2, 3, 1, 4)

    def _block(self, layer: nn.TransformerEncoderLayer, x: torch.Tensor, attn_bias: torch.Tensor | None,
               pick=None, prefix: torch.Tensor | None = None, kv_out: list | None = None) -> torch.Tensor:
        """One pre-norm block over the layer's own parameters, attention through SDPA.

        Same weights and maths as ``nn.TransformerEncoderLayer(norm_first=True)``, but its
        inference fast path computes attention as bmm + masked softmax; SDPA's fused CPU
        kernel is faster, and one code path serves sampling and training alike.
        ``pick``: (B, L, d) → (B, R, d), the rows whose outputs are wanted (keys and values
        still come from all of ``x``); None = every row. ``prefix``: (B, 2, heads, P, d_head)
        keys/values read before ``x``'s own (the cached text). ``kv_out`` collects this
        block's own keys/values.
        """
        b, length, d = x.shape
        heads, dh = self.cfg.n_heads, d // self.cfg.n_heads
        attn = layer.self_attn
        y = layer.norm1(x)
        if pick is None:
            qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
            q, k, v = qkv.view(b, length, 3, heads, dh).permute(2, 0, 3, 1, 4)
        else:
            k, v = self._keys_values(layer, y).unbind(1)
            q = F.linear(pick(y), attn.in_proj_weight[:d], attn.in_proj_bias[:d]).view(b, -1, heads, dh)
            q = q.transpose(1, 2)
            x = pick(x)
        if kv_out is not None:
            kv_out.append(torch.stack([k, v], 1))
        if prefix is not None:  # (cast: a cache made outside an autocast region)
            k, v = torch.cat([prefix[:, 0].to(k.dtype), k], 2), torch.cat([prefix[:, 1].to(v.dtype), v], 2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        x = x + attn.out_proj(a.transpose(1, 2).reshape(b, x.shape[1], d))
        return x + layer.linear2(F.gelu(layer.linear1(layer.norm2(x))))


class ShapesAdapter(MaskedT2IAdapter):
    """Adapter for the built-in model: closed-vocabulary text, patch VQ tokenizer."""

    family = "shapes"
    guidance_form = "meissonic"
    #: LoRA targets (MultiheadAttention reads out_proj.weight directly, so it is no target)
    lora_targets = ["linear1", "linear2", "head"]

    def __init__(self, transformer: ShapesTransformer, tokenizer) -> None:
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.cfg = transformer.cfg
        self._word_ids = {w: i + 1 for i, w in enumerate(self.cfg.vocabulary)}

    @property
    def mask_id(self) -> int:
        return self.cfg.num_codes

    @property
    def codebook_size(self) -> int:
        return self.cfg.num_codes

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.cfg.grid)

    def text_ids(self, prompts: list[str]) -> torch.Tensor:
        """Prompts → (B, L) word ids; unknown words raise a ValueError naming them."""
        ids = torch.zeros(len(prompts), self.cfg.text_len, dtype=torch.long)
        for i, p in enumerate(prompts):
            words = p.lower().replace(",", " ").replace(".", " ").split()
            bad = [w for w in words if w not in self._word_ids]
            shown = p if len(p) <= 80 else p[:77] + "..."  # an error line, not the whole prompt again
            if bad:
                sample = ", ".join(sorted(self._word_ids)[:12])
                raise ValueError(f"the shapes model does not know the word {bad[0]!r} in prompt {shown!r} "
                                 f"(it knows words such as: {sample}, ...)")
            if len(words) > self.cfg.text_len:
                raise ValueError(f"prompt {shown!r} has {len(words)} words; the shapes model takes at most "
                                 f"{self.cfg.text_len}")
            if words:
                ids[i, :len(words)] = torch.tensor([self._word_ids[w] for w in words])
        return ids

    def encode_prompts(self, prompts: list[str]) -> Cond:
        return {"text_ids": self.text_ids(list(prompts)).to(self.device)}

    def prepare_cond(self, cond: Cond, net: nn.Module | None = None) -> Cond:
        core = unwrap_module(self.transformer if net is None else net)
        if core.cfg.text_attends_image:
            return cond
        return {**cond, "text_kv": core.text_keys_values(cond["text_ids"])}

    def call_transformer(self, net: nn.Module, tokens: torch.Tensor, cond: Cond,
                         step: StepInfo) -> torch.Tensor:
        return net(tokens, cond["text_ids"], cond.get("text_kv"))

    def check_checkpoint(self, folder: Path) -> None:
        """The attention variant (and head count) is invisible in weight names and shapes, so a
        checkpoint of another shapes architecture would load silently: compare configs."""
        if not (Path(folder) / "config.json").is_file():
            return
        theirs_cfg = read_shapes_config(folder)
        diff = [k for k in ShapesModelConfig.__dataclass_fields__
                if getattr(theirs_cfg, k) != getattr(self.cfg, k)]
        if diff:
            shown = ", ".join(f"{k}: {getattr(theirs_cfg, k)!r} vs {getattr(self.cfg, k)!r}"
                              for k in diff if k != "vocabulary") or "vocabulary"
            raise ValueError(f"checkpoint {folder} is of another shapes architecture ({shown}); "
                             f"load it as a model of its own: --model shapes:{folder}")

    def code_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.embed(tokens.cpu()).to(tokens.device)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode(tokens.cpu()).clamp(0, 1)

    def describe(self) -> dict:
        d = super().describe()
        d["parameters"] = sum(p.numel() for p in self.transformer.parameters())
        return d

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> None:
        """Standalone model folder: config.json, model.safetensors, tokenizer.safetensors."""
        from maskfocus_cli.io.checkpoint import atomic_write_json, save_weights
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "config.json", {"family": "shapes", **self.cfg.to_json()})
        save_weights(self.transformer.state_dict(), folder / "model.safetensors")
        self.tokenizer.save(folder / "tokenizer.safetensors")


def builtin_model_dir() -> Path:
    """Folder of the pretrained base weights shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "assets" / "shapes-base"


def new_shapes_model(tokenizer=None, **overrides) -> ShapesAdapter:
    """A freshly initialised built-in model over the shapes world's vocabulary."""
    from maskfocus_cli.shapes import world
    if tokenizer is None:
        from maskfocus_cli.shapes.tokenizer import fit_default
        tokenizer = fit_default()
    overrides.setdefault("text_attends_image", False)  # new models: cached text keys/values
    cfg = ShapesModelConfig(vocabulary=tuple(world.vocabulary()), num_codes=int(tokenizer.num_codes),
                            **overrides)
    return ShapesAdapter(ShapesTransformer(cfg), tokenizer)


def read_shapes_config(folder: str | Path) -> ShapesModelConfig:
    """A model or checkpoint folder's config.json → its architecture (other families refused)."""
    from maskfocus_cli.io.checkpoint import read_json
    folder = Path(folder)
    cfg_json = read_json(folder / "config.json")
    family = cfg_json.pop("family", "shapes")
    if family != "shapes":
        raise ValueError(f"{folder} holds a {family!r} model, not a shapes model (use --model {family}:{folder})")
    try:
        return ShapesModelConfig.from_json(cfg_json)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{folder / 'config.json'} is not a shapes model config ({e})") from None


def load_shapes_model(folder: str | Path | None = None) -> ShapesAdapter:
    """Load a shapes model folder (default: the shipped base)."""
    from maskfocus_cli.io.checkpoint import load_weights
    from maskfocus_cli.shapes.tokenizer import ShapesTokenizer
    folder = Path(folder) if folder is not None else builtin_model_dir()
    needed = ["config.json", "model.safetensors", "tokenizer.safetensors"]
    if not folder.is_dir():
        what = "is a file, not a model folder" if folder.exists() else "no such folder"
        raise ValueError(f"--model shapes:{folder}: {what} (a folder written by `maskfocus export`, or plain "
                         "`shapes` for the built-in model)")
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a shapes model folder: missing {', '.join(missing)} "
                         f"(expected {', '.join(needed)}, as `maskfocus export` and training checkpoints write them)")
    model = ShapesTransformer(read_shapes_config(folder))
    load_weights(model, folder / "model.safetensors")
    model.eval()
    tok = ShapesTokenizer.load(folder / "tokenizer.safetensors")
    return ShapesAdapter(model, tok)
