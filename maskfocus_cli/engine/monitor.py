"""What a run shows of itself while it trains: sample grids and the validation reward, both drawn with the
standard sampler (no routing, ``eval_sampler``) on fixed eval prompts and seeds, so they use no training
randomness and a resumed run repeats them exactly."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from maskfocus_cli.engine.metrics import mean_std, reward_by_tag
from maskfocus_cli.engine.ranks import gather_in_order
from maskfocus_cli.engine.sampling import PromptEncoder, SamplerSettings, sample
from maskfocus_cli.io.checkpoint import atomic_write_bytes, atomic_write_json
from maskfocus_cli.models.base import MaskedT2IAdapter

#: images per eval prompt in grids and validation (fixed seeds 0..3 / derived seeds)
SEEDS_PER_PROMPT = 4


def standard_samples(adapter: MaskedT2IAdapter, net: nn.Module, encoder: PromptEncoder, settings: SamplerSettings,
                     prompts: list[str], seeds: list[int], micro_batch: int):
    """(offset, images) per micro-batch: ``net`` sampled with the standard step."""
    step = max(1, micro_batch)
    for lo in range(0, len(prompts), step):
        p = prompts[lo:lo + step]
        with torch.no_grad():
            res = sample(adapter, encoder(p), encoder([settings.negative_prompt] * len(p)), seeds[lo:lo + step],
                         settings, net=net)
            images = adapter.decode(res.tokens)
        yield lo, images


def validation_reward(reward, samples, rows: list[tuple[str, dict | None]], seeds: list[int], *, rank: int = 0,
                      world: int = 1, gather=None) -> dict:
    """Reward of the standard sampler on fixed eval prompts (``SEEDS_PER_PROMPT`` images each).

    The rollout reward is measured on routed samples, and a run can raise it by making exploratory samples
    less broken while what ``evaluate`` samples gets no better; this is the curve to watch. ``samples`` is
    ``(prompts, seeds) -> (offset, images)`` batches (``standard_samples`` bound to the model). With ``world``
    ranks each samples and scores every ``world``-th image and ``ranks.gather_in_order`` brings the scores
    together: the same numbers as one process, 1/world of the work."""
    prompts = [p for p, _ in rows for _ in range(SEEDS_PER_PROMPT)]
    metas = [m for _, m in rows for _ in range(SEEDS_PER_PROMPT)]
    mine = list(range(rank, len(prompts), world))
    totals, valids = [torch.zeros(0)], [torch.zeros(0, dtype=torch.bool)]
    for lo, images in samples([prompts[i] for i in mine], [seeds[i] for i in mine]):
        idx = mine[lo:lo + len(images)]
        out = reward(images, [prompts[i] for i in idx], [metas[i] for i in idx])
        totals.append(out.total.float().cpu())
        valids.append(out.valid.bool().cpu())
    local = torch.stack([torch.cat(totals), torch.cat(valids).float()], dim=1)
    full = gather_in_order(local, len(prompts), world, gather)
    total, valid = full[:, 0], full[:, 1] > 0.5
    return {"reward": mean_std(total[valid]), "by_tag": reward_by_tag(total, valid, metas)}


def write_grid(path: Path, samples, rows: list[tuple[str, dict | None]]) -> Path:
    """Eval prompts × seeds 0..3 → a contact sheet at ``path`` (one row per prompt) and, beside it, a .json
    naming each row's prompt."""
    from maskfocus_cli.io.images import contact_sheet, save_png
    prompts = [p for p, _ in rows for _ in range(SEEDS_PER_PROMPT)]
    seeds = [j for _ in rows for j in range(SEEDS_PER_PROMPT)]
    images = torch.cat([im for _, im in samples(prompts, seeds)])
    save_png(contact_sheet(images, ncols=SEEDS_PER_PROMPT, scale=2), path)
    atomic_write_json(path.with_suffix(".json"), {"rows": [p for p, _ in rows],
                                                  "seeds": list(range(SEEDS_PER_PROMPT))})
    return path


def copy_grid(source: Path, path: Path) -> Path:
    """A grid already drawn for the same weights, under another name (no second sampling)."""
    atomic_write_bytes(path, source.read_bytes())
    atomic_write_bytes(path.with_suffix(".json"), source.with_suffix(".json").read_bytes())
    return path
