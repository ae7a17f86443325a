"""Show-o's network: transformers' Phi-1.5 with the extended vocabulary, plus omni-attention.

Facts from the public code (showlab/Show-o ``models/modeling_showo.py``, ``models/phi.py``,
``training/prompting_utils.py``):

* ``Showo`` wraps ``PhiForCausalLM`` as ``self.showo`` (built from microsoft/phi-1_5's
  config) and resizes its token embeddings and ``lm_head`` to ``vocab_size`` (58498 =
  50295 Phi tokens + 10 new special tokens + 8192 image codes + [MASK]). Its Phi fork
  keeps transformers' parameter names and non-persistent rotary buffers, so the
  checkpoint's keys are ``showo.`` + transformers' ``PhiForCausalLM`` keys (no mapping);
  ``w_clip_vit`` checkpoints add ``mm_projector`` (unused for text-to-image);
* image code ``c`` is vocabulary id ``vocab_size - 1 - codebook_size + c``; [MASK] is
  ``vocab_size - 1`` (``mask_token_id``); image logits are the codebook slice of the
  vocabulary at the image positions;
* omni-attention (``create_attention_mask_predict_next(..., rm_pad_in_image=True)``):
  text tokens attend causally, the image segment (<|soi|> … <|eoi|>) attends to every
  text and image token, nobody but padding attends to padding; position ids are
  ``arange(L)`` whatever the padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def omni_attention_mask(sequence: torch.Tensor, pad_id: int, text_len: int) -> torch.Tensor:
    """(B, L) ids → (B, 1, L, L) bool, True where query row may attend to key column.

    The first ``text_len`` positions are the (left-padded) text, the rest the image
    segment starting at <|soi|>.
    """
    L = sequence.shape[1]
    pos = torch.arange(L, device=sequence.device)
    causal = pos[:, None] >= pos[None, :]
    image_row = (pos >= text_len)[:, None]
    pad = (sequence == pad_id) & (pos < text_len)[None, :]
    visible_cols = ~pad[:, None, :] | (pad[:, :, None] & ~image_row[None])
    return ((causal | image_row)[None] & visible_cols).unsqueeze(1)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool (B, 1, L, L) → 0 / most-negative float mask, the form eager and sdpa Phi attention add."""
    out = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return out.masked_fill_(~allowed, torch.finfo(dtype).min)


class ShowoTransformer(nn.Module):
    """``showo`` (PhiForCausalLM at Show-o's vocabulary size) [+ ``mm_projector``].

    ``showo_config`` is the Show-o config.json dict (kept to write the folder back).
    """

    def __init__(self, config: dict, phi_config) -> None:
        super().__init__()
        from transformers import PhiForCausalLM
        self.showo_config = dict(config)
        self.vocab_size = int(config["vocab_size"])
        self.codebook_size = int(config["codebook_size"])
        self.num_vq_tokens = int(config["num_vq_tokens"])
        self.mask_token_id = self.vocab_size - 1
        self.code_offset = self.vocab_size - 1 - self.codebook_size
        phi_config.vocab_size = self.vocab_size
        phi_config.tie_word_embeddings = False
        if getattr(phi_config, "_attn_implementation", None) is None:
            phi_config._attn_implementation = "sdpa"
        self.showo = PhiForCausalLM(phi_config)
        if config.get("w_clip_vit", False):
            d = phi_config.hidden_size
            self.mm_projector = nn.Sequential(nn.Linear(1024, d), nn.GELU(), nn.Linear(d, d))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                num_image_tokens: int | None = None) -> torch.Tensor:
        """Full-vocabulary logits (B, L, V), or with ``num_image_tokens`` = N only the codebook
        logits (B, N, K) at the image positions (the N tokens before the final <|eoi|>).

        ``attention_mask``: a bool (B, 1, L, L) omni-attention mask or an additive float one.
        Slicing the head inside ``forward`` keeps wrapped (DDP, LoRA) calls exact and
        avoids materialising 58k-way logits at every text position.
        """
        dtype = self.showo.model.embed_tokens.weight.dtype
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            attention_mask = additive_mask(attention_mask, dtype)
        if num_image_tokens is None:
            return self.showo(input_ids=input_ids, attention_mask=attention_mask).logits
        hidden = self.showo.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden[:, -(num_image_tokens + 1):-1]
        head = self.showo.lm_head
        lo, hi = self.code_offset, self.code_offset + self.codebook_size
        return F.linear(hidden, head.weight[lo:hi], head.bias[lo:hi])

    def _apply(self, fn, recurse: bool = True):
        """Keep the rotary frequency buffers in float32 under ``.to(bf16)``.

        Show-o positions run past 1000; bf16 frequencies (3 significant digits) would
        put the rotary phases radians off there. (transformers recomputes nothing after a cast.)
        """
        kept = [(m, name, buf.detach().float().clone()) for m in self.modules()
                for name, buf in m.named_buffers(recurse=False)
                if name.endswith("inv_freq") and buf.device.type != "meta"]
        super()._apply(fn, recurse)
        for m, name, value in kept:
            setattr(m, name, value.to(getattr(m, name).device))
        return self
