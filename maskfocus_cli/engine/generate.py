"""Prompts × seeds → images, in batches: the loop behind `sample` and `evaluate`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from maskfocus_cli.engine.sampling import PromptEncoder, Router, SamplerSettings, sample
from maskfocus_cli.models.base import MaskedT2IAdapter


@dataclass(frozen=True)
class Job:
    """One image to make: prompt number ``prompt_index``, image ``image_index`` of that prompt."""

    prompt_index: int
    image_index: int
    prompt: str
    seed: int
    meta: dict | None = None


def make_jobs(prompts: Sequence[str], n: int, seed: int, metas: Sequence[dict | None] | None = None) -> list[Job]:
    """Image j of a prompt gets seed ``seed + j``: a (prompt, seed) pair fixes the image.

    A prompt listed again (GenEval metadata repeats rows; the shapes bench's tag-balanced
    rows repeat the few prompts of small tags) continues where its previous listing
    stopped: its k-th listing uses seeds ``seed + k·n + j``, so repeats add new images
    instead of copies (a repeated row would otherwise weigh the same images again).
    """
    metas = metas or [None] * len(prompts)
    seen: dict[str, int] = {}
    jobs = []
    for i, p in enumerate(prompts):
        k = seen.get(p, 0)
        seen[p] = k + 1
        jobs += [Job(i, j, p, seed + k * n + j, metas[i]) for j in range(n)]
    return jobs


@dataclass
class Batch:
    jobs: list[Job]
    tokens: torch.Tensor  #: (B, N) final grids
    images: torch.Tensor  #: (B, 3, H, W) in [0, 1]
    explore_fraction: torch.Tensor | None  #: (B,) share of steps routed to exploration


def generate(adapter: MaskedT2IAdapter, jobs: Sequence[Job], settings: SamplerSettings, batch_size: int = 64,
             router: Router | None = None, encoder: PromptEncoder | None = None) -> Iterator[Batch]:
    """Sample ``jobs`` in batches of ``batch_size``; text encodings are cached across batches."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1 (got {batch_size})")
    encoder = encoder or PromptEncoder(adapter)
    for start in range(0, len(jobs), batch_size):
        chunk = list(jobs[start:start + batch_size])
        cond = encoder([j.prompt for j in chunk])
        uncond = encoder([settings.negative_prompt] * len(chunk))
        res = sample(adapter, cond, uncond, [j.seed for j in chunk], settings, router=router,
                     record=router is not None)
        explore = None
        if res.trajectory is not None:
            explore = res.trajectory.explore.float().mean(0)
        with torch.no_grad():
            images = adapter.decode(res.tokens)
        yield Batch(chunk, res.tokens, images, explore)
