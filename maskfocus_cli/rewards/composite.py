"""Weighted sum of rewards, every component kept for logging, non-finite scores quarantined.

A reward model that returns NaN/inf for one image must not poison a GRPO update
(one NaN advantage turns the whole loss into NaN). ``CompositeReward`` therefore
zeroes non-finite entries in the total *and* flags those samples invalid, so the
trainer drops them and counts them, and warns naming the component.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch


class NonFiniteRewardWarning(UserWarning):
    """A reward component returned NaN or inf for some samples."""


@dataclass(frozen=True)
class RewardSpec:
    """One component of a composite reward, as written in a recipe."""

    name: str  #: registered name or "pkg.module:attr"
    weight: float = 1.0  #: multiplies the component in the total; 0 = log only
    options: dict = field(default_factory=dict)  #: keyword options for the reward factory


_SPEC_KEYS = {"name", "weight", "options"}


def parse_specs(obj: Any) -> list[RewardSpec]:
    """Normalise a recipe value into specs: a name, a dict, a RewardSpec, or a list of those.

    Dicts take exactly the keys ``name``, ``weight``, ``options`` (unknown keys are an
    error, so a typo such as ``wieght`` cannot silently become weight 1).
    """
    items = obj if isinstance(obj, (list, tuple)) else [obj]
    specs: list[RewardSpec] = []
    for item in items:
        if isinstance(item, RewardSpec):
            specs.append(item)
        elif isinstance(item, str):
            specs.append(RewardSpec(item))
        elif isinstance(item, dict):
            unknown = set(item) - _SPEC_KEYS
            if unknown or "name" not in item:
                raise ValueError(f"bad reward entry {item!r}: keys must be name (required), weight, options"
                                 + (f"; unknown: {sorted(unknown)}" if unknown else ""))
            options = item.get("options") or {}
            if not isinstance(options, dict):
                raise ValueError(f"reward {item['name']!r}: options must be a mapping, got {options!r}")
            specs.append(RewardSpec(str(item["name"]), float(item.get("weight", 1.0)), dict(options)))
        else:
            raise ValueError(f"bad reward entry {item!r}: expected a name, a mapping or a RewardSpec")
    if not specs:
        raise ValueError("no rewards given: list at least one reward (e.g. name: shapes-geneval)")
    return specs


@dataclass
class RewardOutput:
    """Result of a composite reward on a batch of B images."""

    total: torch.Tensor  #: (B,) weighted sum; non-finite component entries count as 0
    components: dict[str, torch.Tensor]  #: raw, unweighted (B,) per component (NaN kept for inspection)
    valid: torch.Tensor  #: (B,) bool; False where a weighted component is NaN/inf
    nonfinite: dict[str, int] = field(default_factory=dict)  #: per component, non-finite count in this batch

    @property
    def n_invalid(self) -> int:
        return int((~self.valid).sum())


def _key_names(specs: Sequence[RewardSpec]) -> list[str]:
    """Component log keys: the spec name, suffixed ``#2``, ``#3`` ... on repeats."""
    seen: dict[str, int] = {}
    keys = []
    for s in specs:
        seen[s.name] = seen.get(s.name, 0) + 1
        keys.append(s.name if seen[s.name] == 1 else f"{s.name}#{seen[s.name]}")
    return keys


class CompositeReward:
    """Weighted sum of reward components: ``total = sum_k weight_k * score_k``.

    Components with weight 0 are computed and logged but do not affect ``total``
    or ``valid``. Rewards run under ``torch.no_grad()`` (not inference mode: the
    scores become advantages that meet autograd tensors in the loss).
    ``invalid_counts`` accumulates non-finite counts per component over calls.
    """

    def __init__(self, specs: Sequence[RewardSpec | str | dict],
                 rewards: Sequence[Any] | None = None) -> None:
        """``rewards``, if given, are pre-built callables matching ``specs`` one to one
        (the specs then only supply names and weights)."""
        from maskfocus_cli.rewards.registry import make_reward  # lazy: registry imports this module

        self.specs = parse_specs(list(specs))
        for s in self.specs:
            if not math.isfinite(s.weight):
                raise ValueError(f"reward {s.name!r} has non-finite weight {s.weight}; use a finite number")
        if rewards is None:
            rewards = [make_reward(s.name, **s.options) for s in self.specs]
        elif len(rewards) != len(self.specs):
            raise ValueError(f"{len(rewards)} reward callables for {len(self.specs)} specs")
        self.rewards = list(rewards)
        #: some component scores by GenEval metadata rows (plain-text prompts cannot be scored)
        self.needs_metadata = any(getattr(r, "needs_metadata", False) for r in self.rewards)
        self.keys = _key_names(self.specs)
        self.invalid_counts: dict[str, int] = {k: 0 for k in self.keys}

    def __call__(self, images: torch.Tensor, prompts: Sequence[str],
                 metadata: Sequence[dict | None] | None = None) -> RewardOutput:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) floats in [0, 1], got shape {tuple(images.shape)}")
        b = images.shape[0]
        prompts = list(prompts)
        metadata = [None] * b if metadata is None else list(metadata)
        if len(prompts) != b or len(metadata) != b:
            raise ValueError(f"{b} images but {len(prompts)} prompts and {len(metadata)} metadata entries")

        device = images.device
        total = torch.zeros(b, dtype=torch.float32, device=device)
        valid = torch.ones(b, dtype=torch.bool, device=device)
        components: dict[str, torch.Tensor] = {}
        nonfinite: dict[str, int] = {}
        with torch.no_grad():
            for key, spec, fn in zip(self.keys, self.specs, self.rewards):
                try:
                    raw = fn(images, prompts, metadata)
                    scores = torch.as_tensor(raw).detach().to(device=device, dtype=torch.float32)
                except (ValueError, OSError):  # already a message for the user
                    raise
                except Exception as e:  # a user's reward (a dotted path) with a bug: name it, in one line
                    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    raise ValueError(f"reward {key!r} failed with {type(e).__name__}: {first} (fix the reward "
                                     "function or its options)") from e
                if scores.shape != (b,):
                    raise ValueError(f"reward {key!r} returned shape {tuple(scores.shape)}, expected ({b},)")
                finite = torch.isfinite(scores)
                n_bad = int((~finite).sum())
                nonfinite[key] = n_bad
                components[key] = scores
                if spec.weight == 0:
                    continue
                if n_bad:
                    self.invalid_counts[key] += n_bad
                    warnings.warn(f"reward {key!r} returned {n_bad} non-finite score(s) in a batch of {b}; "
                                  "those samples are flagged invalid and left out of the update",
                                  NonFiniteRewardWarning, stacklevel=2)
                valid &= finite
                total += spec.weight * torch.where(finite, scores, torch.zeros_like(scores))
        return RewardOutput(total=total, components=components, valid=valid, nonfinite=nonfinite)


def _mean_std(x: torch.Tensor) -> tuple[float, float]:
    if x.numel() == 0:
        return float("nan"), float("nan")
    x = x.double()
    return float(x.mean()), float(x.std(correction=0))


def summary(output: RewardOutput, prefix: str = "reward/") -> dict[str, float]:
    """Flat, log-ready statistics of one ``RewardOutput``.

    ``total_mean/std`` are over valid samples only; ``<component>_mean/std`` over that
    component's finite entries; std is the population std (0 for one sample, never NaN);
    ``invalid`` counts invalid samples and ``<component>_nonfinite`` its non-finite entries.
    """
    out: dict[str, float] = {}
    out[f"{prefix}total_mean"], out[f"{prefix}total_std"] = _mean_std(output.total[output.valid])
    out[f"{prefix}invalid"] = float(output.n_invalid)
    for key, scores in output.components.items():
        finite = torch.isfinite(scores)
        out[f"{prefix}{key}_mean"], out[f"{prefix}{key}_std"] = _mean_std(scores[finite])
        out[f"{prefix}{key}_nonfinite"] = float((~finite).sum())
    return out


def reward_from_recipe(rewards: Sequence) -> CompositeReward:
    """A recipe's ``rewards:`` list as one weighted reward. Reward servers are contacted now: one that is
    down fails the run before any rollout."""
    if not rewards:
        raise ValueError("the recipe has no rewards: add e.g. `rewards: [{name: shapes-geneval}]`")
    if all(r.weight == 0 for r in rewards):
        raise ValueError("every reward has weight 0, so every advantage would be 0 and nothing would train: "
                         "give at least one reward a non-zero weight")
    reward = CompositeReward([RewardSpec(name=r.name, weight=r.weight, options=dict(r.options)) for r in rewards])
    for component in reward.rewards:
        if hasattr(component, "preflight"):
            component.preflight()
    return reward
