"""Rewards: plain callables ``(images (B,3,H,W) in [0,1], prompts, metadata) -> scores (B,)``.

``make_reward(name, **options)`` builds one (names: ``available()``, or a dotted path
``"pkg.module:attr"``); ``CompositeReward`` sums weighted components, logs each and
flags non-finite scores. Heavy rewards import their libraries only when built.
"""

from maskfocus_cli.rewards.registry import (
    CompositeReward, RewardFn, RewardOutput, RewardSpec, available, make_reward, parse_specs, register, summary,
)
from maskfocus_cli.rewards.composite import NonFiniteRewardWarning

__all__ = ["CompositeReward", "RewardFn", "RewardOutput", "RewardSpec", "available", "make_reward",
           "parse_specs", "register", "summary", "NonFiniteRewardWarning"]
