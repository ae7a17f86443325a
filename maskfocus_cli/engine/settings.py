"""What a recipe's numbers turn into: the sampler settings of rollouts and eval grids, the learning-rate
schedule."""

from __future__ import annotations

import math

from maskfocus_cli.engine.sampling import SamplerSettings


#: sampler fields earlier versions did not record, with the value they sampled with: their run records, recipes
#: and summaries still resume and compare
ADDED_SAMPLER_FIELDS = {"negative_prompt": ""}

#: SamplerSettings field → the option of sample / profile-steps / evaluate that sets it
OPTION_OF = {"steps": "--steps", "guidance_scale": "--cfg", "gumbel_temperature": "--gumbel", "schedule": "--schedule",
             "logit_temperature": "--temperature", "negative_prompt": "--negative-prompt"}


def with_added_fields(sampler):
    """A recorded sampler (dict) with the fields earlier versions did not record filled as they sampled."""
    return {**ADDED_SAMPLER_FIELDS, **sampler} if isinstance(sampler, dict) else sampler


def differing_options(recorded: dict, reference: SamplerSettings, fields=OPTION_OF) -> list[str]:
    """'--option value' for each of ``fields`` where a recorded sampler differs from ``reference``: the options
    that sample as the record did."""
    import shlex
    return [f"{OPTION_OF[f]} {shlex.quote(str(recorded[f]))}" for f in fields
            if f in recorded and recorded[f] != getattr(reference, f)]


def sampler_settings(cfg, model_spec: str, inherit=None) -> SamplerSettings:
    """A recipe's sampler section; fields left null take ``inherit``'s (``eval_sampler`` inherits ``sampler``'s),
    then the model family's own settings."""
    from maskfocus_cli.models.sampler_defaults import family_sampler
    d = family_sampler(model_spec)

    def pick(key: str):
        for source in (cfg, inherit):
            if source is not None and getattr(source, key) is not None:
                return getattr(source, key)
        return getattr(d, key)
    return SamplerSettings(steps=pick("steps"), guidance_scale=pick("guidance_scale"), schedule=cfg.schedule,
                           logit_temperature=cfg.logit_temperature, gumbel_temperature=pick("gumbel_temperature"),
                           negative_prompt=pick("negative_prompt"))


def lr_factor(it: int, warmup: int, total: int, schedule: str) -> float:
    """Warm-up then constant or cosine-to-zero multiplier for iteration ``it``."""
    if warmup and it < warmup:
        return (it + 1) / warmup
    if schedule == "cosine":
        span = max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (it - warmup) / span)))
    return 1.0


def param_groups(named, weight_decay: float, decay_on: str = "all") -> list[dict]:
    """AdamW parameter groups. ``decay_on="matrices"``: parameters with fewer than 2 dimensions (biases, norm
    scales) get no weight decay, the rule of Mask-GRPO's optimiser (and of timm / MAE's ``add_weight_decay``);
    empty groups are left out."""
    named = [(n, p) for n, p in named if p.requires_grad]
    free = [p for _, p in named if decay_on == "matrices" and p.dim() < 2]
    decayed = [p for _, p in named if not (decay_on == "matrices" and p.dim() < 2)]
    return [g for g in ({"params": decayed, "weight_decay": weight_decay},
                        {"params": free, "weight_decay": 0.0}) if g["params"]]
