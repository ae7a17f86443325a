"""Per-iteration numbers of metrics.jsonl that need more than a mean: per-tag rewards, JSON-safe mean/std."""

from __future__ import annotations

import math

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


def json_safe(value):
    """Non-finite floats → None, through dicts and lists: a NaN loss must not make a metrics row invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value
