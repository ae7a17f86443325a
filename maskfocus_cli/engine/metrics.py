"""Per-iteration numbers of metrics.jsonl that need more than a mean: per-tag rewards, JSON-safe mean/std."""

from __future__ import annotations

import torch


def reward_by_tag(rewards: torch.Tensor, valid: torch.Tensor, metas: list[dict | None]) -> dict[str, float]:
    """Mean valid reward per GenEval tag (prompts with metadata only): which skills are moving."""
    by: dict[str, list[float]] = {}
    for r, ok, m in zip(rewards.tolist(), valid.tolist(), metas):
        if ok and m and "tag" in m:
            by.setdefault(str(m["tag"]), []).append(r)
    return {t: sum(v) / len(v) for t, v in sorted(by.items())}


def mean_std(x: torch.Tensor) -> dict:
    if x.numel() == 0:  # nothing valid: null in JSON (a bare NaN is not JSON, and strict parsers refuse it)
        return {"mean": None, "std": None}
    return {"mean": float(x.float().mean()), "std": float(x.float().std(unbiased=False))}
