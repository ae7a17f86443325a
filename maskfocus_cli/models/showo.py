"""Show-o (showlab/show-o) adapter: not implemented yet.

Planned (issue 6): Phi-1.5 from transformers with Show-o's extended vocabulary and
omni-attention mask (causal text, bidirectional image), our own MAGVIT-v2 (LFQ)
decoder matching the public checkpoint's names, guidance ``(1 + w) l_c - w l_u`` and
Show-o's temperature annealing. Until then ``--model showo:...`` fails with a clear
message instead of a traceback.
"""

from __future__ import annotations

import torch

from maskfocus_cli.models.base import MaskedT2IAdapter


class ShowoNotAvailable(ValueError):
    """Show-o cannot be loaded by this version of maskfocus."""


def load(path: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> MaskedT2IAdapter:
    raise ShowoNotAvailable(f"--model showo:{path}: Show-o support is not implemented yet; "
                            "use --model meissonic:DIR or amused:DIR")
