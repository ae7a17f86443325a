"""Entropy-based dynamic routing of rollouts (MaskFocus, DESIGN §3.3).

At every step, each sample's total entropy over its still-masked tokens is
compared with the batch median: samples at or above it take the standard step;
the lower-entropy (over-confident) ones take an exploratory step whose per-token
logit temperature flattens confident tokens most. Both routes use the same logits,
so routing costs no extra forward. A router is a strategy object: other laws are
new subclasses, the sampler does not change.
"""

from __future__ import annotations

from typing import Callable

import torch

from maskfocus_cli.engine.sampling import RouteDecision


def batch_median(values: torch.Tensor) -> torch.Tensor:
    """The statistical median (mean of the two middle values for an even count)."""
    s = values.sort().values
    n = s.numel()
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


class EntropyRouter:
    """Standard step for H ≥ median(H); exploratory temperature τ = a·exp(−H_tok/d) + c otherwise.

    With an even batch of distinct entropies exactly half explore; with an odd one
    the median sample stays standard; a batch of one never explores.
    """

    def __init__(self, scale: float = 2.5, decay: float = 3.0, floor: float = 0.7,
                 gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """``gather``: collects every rank's per-sample entropies, so the median is the whole
        rollout batch's and N ranks route exactly as one process would (None: this batch)."""
        self.scale, self.decay, self.floor = scale, decay, floor
        self.gather = gather

    def temperature(self, token_entropy: torch.Tensor) -> torch.Tensor:
        """Exploratory per-token temperature from per-token entropy (nats)."""
        return self.scale * torch.exp(-token_entropy / self.decay) + self.floor

    def route(self, entropy: torch.Tensor, masked: torch.Tensor) -> RouteDecision:
        total = (entropy * masked).sum(-1)
        explore = total < batch_median(total if self.gather is None else self.gather(total))
        temp = torch.where(explore[:, None] & masked, self.temperature(entropy), torch.ones_like(entropy))
        return RouteDecision(explore=explore, temperature=temp)


def make_router(enabled: bool, scale: float = 2.5, decay: float = 3.0, floor: float = 0.7,
                gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> EntropyRouter | None:
    return EntropyRouter(scale, decay, floor, gather) if enabled else None
