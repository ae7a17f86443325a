"""The adapter protocol: everything the engine needs of a masked text-to-image model.

The engine (sampler, critical-step selection, losses, trainer, benchmarks) never
touches a model's internals. It talks to a `MaskedT2IAdapter`, which owns

* a trainable ``transformer`` (an ``nn.Module``) that maps a token grid plus
  conditioning tensors to logits over the codebook;
* a frozen text encoder, exposed as ``encode_prompts`` (cacheable: the output is
  a dict of batch-first tensors, so the engine can concatenate, index and cache it);
* a frozen VQ codebook/decoder: ``code_embeddings`` and ``decode``.

``logits`` takes the network to run as an argument (``net``) so the very same
code path serves the raw module, its accelerate/DDP-wrapped version (whose
gradients must be all-reduced) and the frozen reference copy used for the KL term.
Meissonic, aMUSEd and Show-o all fit: their transformers take (tokens, text
embeddings, pooled embeddings / micro-conds, timestep) and return per-position
logits, which is what ``call_transformer`` hides.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

Cond = dict[str, torch.Tensor]
"""Conditioning: batch-first tensors (text hidden states, pooled embeddings, masks...)."""

GuidanceForm = Literal["meissonic", "showo"]


@dataclass(frozen=True)
class StepInfo:
    """Where in the T-step schedule a forward pass happens.

    ``mask_ratio`` is the fraction of tokens masked at the *input* of this step;
    models with timestep conditioning (Meissonic) derive their timestep from it.
    """

    index: int
    total: int
    mask_ratio: float


def cat_cond(a: Cond, b: Cond) -> Cond:
    """Concatenate two conditionings along the batch (for one batched CFG forward)."""
    if a.keys() != b.keys():
        raise ValueError(f"conditionings have different keys: {sorted(a)} vs {sorted(b)}")
    return {k: torch.cat([a[k], b[k]], dim=0) for k in a}


def index_cond(c: Cond, idx: torch.Tensor | slice | list[int]) -> Cond:
    """Select / repeat rows of a conditioning."""
    return {k: v[idx] for k, v in c.items()}


def cond_to(c: Cond, device: torch.device | str) -> Cond:
    return {k: v.to(device) for k, v in c.items()}


def unwrap_module(net: nn.Module) -> nn.Module:
    """The model inside DDP/accelerate (``.module``) and peft (``get_base_model``) wrappers."""
    while True:
        if isinstance(getattr(net, "module", None), nn.Module):
            net = net.module
        elif hasattr(net, "get_base_model") and net.get_base_model() is not net:
            net = net.get_base_model()
        else:
            return net


def apply_guidance(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, scale: float,
                   form: GuidanceForm) -> torch.Tensor:
    """Classifier-free guidance, in the form the model family was trained for.

    meissonic / aMUSEd / MaskGIT: l_u + w (l_c - l_u)   (w = 1 is plain conditional)
    Show-o:                       (1 + w) l_c - w l_u    (w = 0 is plain conditional)
    """
    if form == "meissonic":
        return uncond_logits + scale * (cond_logits - uncond_logits)
    if form == "showo":
        return (1.0 + scale) * cond_logits - scale * uncond_logits
    raise ValueError(f"unknown guidance form {form!r}")


def guidance_active(scale: float, form: GuidanceForm) -> bool:
    """Whether a guidance scale needs the unconditional pass at all."""
    return scale != (1.0 if form == "meissonic" else 0.0)


class MaskedT2IAdapter(ABC):
    """What the engine needs of any masked generative text-to-image model."""

    #: short family name: "shapes", "amused", "meissonic", "showo"
    family: str = "base"
    #: classifier-free guidance formula of this family
    guidance_form: GuidanceForm = "meissonic"
    #: the trainable network; the only module the optimiser sees
    transformer: nn.Module

    # --- vocabulary / geometry -------------------------------------------------
    @property
    @abstractmethod
    def mask_id(self) -> int:
        """Token id of [MASK] in the transformer's input vocabulary."""

    @property
    @abstractmethod
    def codebook_size(self) -> int:
        """K: number of VQ codes; logits are over ids 0..K-1."""

    @property
    @abstractmethod
    def grid(self) -> tuple[int, int]:
        """(h, w) of the token grid; N = h * w."""

    @property
    def num_tokens(self) -> int:
        h, w = self.grid
        return h * w

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    # --- conditioning -----------------------------------------------------------
    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> Cond:
        """Text → conditioning tensors (batch-first). "" is the unconditional prompt.

        Must raise ``ValueError`` with a readable message for prompts the model
        cannot take (e.g. unknown words for a closed-vocabulary model).
        """

    def prepare_cond(self, cond: Cond, net: nn.Module | None = None) -> Cond:
        """Add what depends on the prompt alone for a fixed ``net`` (once per sampling run).

        Show-o-style models whose text rows never read the image cache their text
        keys/values here, so every step runs the image rows only. The result is valid
        only while ``net``'s weights stay fixed (one sampling run), never across
        optimiser steps. Default: nothing to add.
        """
        return cond

    def check_checkpoint(self, folder: Path) -> None:
        """Raise ``ValueError`` if the checkpoint folder's weights belong to another variant of
        this model that would load silently (same names and shapes). Default: nothing to check."""

    # --- the network -------------------------------------------------------------
    @abstractmethod
    def call_transformer(self, net: nn.Module, tokens: torch.Tensor, cond: Cond,
                         step: StepInfo) -> torch.Tensor:
        """Run ``net`` (the transformer, its wrapped version, or a reference copy).

        tokens: (B, N) long, may contain ``mask_id``. Returns (B, N, K) float logits
        over the codebook (any extra vocabulary already sliced away). The engine reads
        logits at ``mask_id`` positions only, so an adapter may leave the others
        unspecified (the built-in model skips computing them).
        """

    def logits(self, tokens: torch.Tensor, cond: Cond, step: StepInfo,
               uncond: Cond | None = None, guidance_scale: float = 0.0,
               net: nn.Module | None = None) -> torch.Tensor:
        """Guided logits for a batch; cond and uncond go through ONE batched forward."""
        net = self.transformer if net is None else net
        if uncond is None or not guidance_active(guidance_scale, self.guidance_form):
            return self.call_transformer(net, tokens, cond, step).float()
        b = tokens.shape[0]
        both = self.call_transformer(net, torch.cat([tokens, tokens]), cat_cond(cond, uncond), step)
        both = both.float()
        return apply_guidance(both[:b], both[b:], guidance_scale, self.guidance_form)

    # --- sampler hooks (families differ) --------------------------------------------
    def gumbel_temperature(self, step: int, total: int, start: float) -> float:
        """Annealed confidence-noise temperature τ_t (Meissonic: linspace(start, 0, T))."""
        if total <= 1:
            return 0.0
        return start * (1.0 - step / (total - 1))

    # --- VQ side ---------------------------------------------------------------------
    @abstractmethod
    def code_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N) code ids → (B, C, h, w) codebook vectors (VQ ``get_codebook_entry``)."""

    @abstractmethod
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N) code ids (no masks) → (B, 3, H, W) float images in [0, 1]."""

    # --- description --------------------------------------------------------------------
    def describe(self) -> dict:
        """JSON-able facts about the model (written into sample lines and model cards)."""
        h, w = self.grid
        return {"family": self.family, "grid": [h, w], "codebook_size": self.codebook_size,
                "guidance_form": self.guidance_form}
