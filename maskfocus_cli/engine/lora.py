"""LoRA via peft for models too big to fine-tune whole: the wrapped policy, and its frozen base as the KL
reference (no second copy of the weights)."""

from __future__ import annotations

import torch
from torch import nn

from maskfocus_cli.models.base import MaskedT2IAdapter


class AdapterDisabled(nn.Module):
    """The frozen base of a peft model, as a module: the KL reference under LoRA."""

    def __init__(self, peft_model: nn.Module) -> None:
        super().__init__()
        self.peft_model = [peft_model]  # a list: not registered as a submodule (no double counting)

    def forward(self, *args, **kwargs):
        model = self.peft_model[0]
        with torch.no_grad(), model.disable_adapter():
            return model(*args, **kwargs)


def add_lora(adapter: MaskedT2IAdapter, rank: int, seed: int = 0) -> nn.Module:
    """Wrap the transformer with peft LoRA adapters on the adapter's ``lora_targets``."""
    from peft import LoraConfig, get_peft_model
    targets = getattr(adapter, "lora_targets", "all-linear")
    adapter.transformer.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # LoRA's random init must not depend on what ran before (exact resume)
        return get_peft_model(adapter.transformer, LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0,
                                                              target_modules=targets))
