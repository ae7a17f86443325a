"""Step profiling: which sampling steps decide the image (the engine behind `profile-steps`).

Each prompt's ``n`` images are sampled once with ``record=True``; the recorded
trajectory already holds everything the profile needs (x̂0 per step, per-token
entropy, routing decisions), so profiling adds no model forward beyond sampling —
only the embedder's work (a table lookup for ``codebook``). Per prompt, its images
form the batch of the 'batch' reduction, so every prompt votes for one step set;
the recommended set for the model is the top-k of the gain averaged over prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from maskfocus_cli.engine.critical import (InfoGainSelector, StepEmbedder, select_steps, shared_gain,
                                           trajectory_gain)
from maskfocus_cli.engine.generate import Job, make_jobs
from maskfocus_cli.engine.sampling import PromptEncoder, Router, SamplerSettings, Trajectory, mask_counts, sample
from maskfocus_cli.models.base import MaskedT2IAdapter

#: grids embedded per call (T·B of them per batch); bounds the embedder's memory on big models
EMBED_CHUNK = 2048


def check_profile_options(steps: int, top_k: int, n: int = 1, batch_size: int = 1) -> None:
    """Fail on impossible options before any model is loaded."""
    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1 (got {top_k})")
    if top_k > steps:
        raise ValueError(f"--top-k {top_k} is larger than the step count --steps {steps}: "
                         "lower --top-k or raise --steps")
    if n < 1:
        raise ValueError(f"--n must be at least 1 (got {n})")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1 (got {batch_size})")


@dataclass
class PromptProfile:
    """The profile of one prompt over its ``n`` images; tensors are (n, T) on the CPU."""

    index: int
    prompt: str
    similarity: torch.Tensor  #: cos(e_t, e_final) per image and step
    gain: torch.Tensor  #: |s_{t+1} − s_t| per image and step
    entropy: torch.Tensor  #: mean per-token entropy over the positions masked at the step's input (nats)
    explore: torch.Tensor | None  #: routing decisions (bool) when profiled with a router
    critical: torch.Tensor  #: (k,) sorted steps chosen for this prompt (top-k of ``batch_gain``)
    mask_ratio: list[float]  #: fraction of tokens masked at the input of each step
    strip: torch.Tensor | None = None  #: (T, 3, h, w) decoded x̂0 of image 0 at every step (thumbnails)

    @property
    def batch_gain(self) -> torch.Tensor:
        """(T,) gain of the images' mean similarity: what picks this prompt's steps (as in training)."""
        return shared_gain(self.similarity)

    def rows(self) -> list[dict]:
        """One JSON-able row per step (means over the prompt's images; gain of the mean similarity)."""
        crit = set(self.critical.tolist())
        sim, gain, ent = self.similarity.mean(0), self.batch_gain, self.entropy.mean(0)
        sim_std = self.similarity.std(0, unbiased=False)
        out = []
        for t in range(self.similarity.shape[1]):
            row = {"prompt_index": self.index, "prompt": self.prompt, "step": t,
                   "mask_ratio": round(float(self.mask_ratio[t]), 6), "entropy": round(float(ent[t]), 6),
                   "similarity": round(float(sim[t]), 6), "similarity_std": round(float(sim_std[t]), 6),
                   "gain": round(float(gain[t]), 6), "critical": t in crit, "n": int(self.gain.shape[0])}
            if self.explore is not None:
                row["explore_fraction"] = round(float(self.explore[:, t].float().mean()), 6)
            out.append(row)
        return out


@dataclass
class ProfileResult:
    """Per-prompt profiles plus the model-level recommendation."""

    steps: int
    top_k: int
    mask_ratio: list[float]  #: fraction of tokens masked at the input of each step
    prompts: list[PromptProfile] = field(default_factory=list)

    def _stack(self, name: str) -> torch.Tensor:
        """(P, T) per-prompt means of a per-image statistic."""
        return torch.stack([getattr(p, name).mean(0) for p in self.prompts])

    @property
    def mean_gain(self) -> torch.Tensor:
        """(T,) per-prompt ``batch_gain`` averaged over prompts."""
        return torch.stack([p.batch_gain for p in self.prompts]).mean(0)

    @property
    def mean_similarity(self) -> torch.Tensor:
        return self._stack("similarity").mean(0)

    @property
    def mean_entropy(self) -> torch.Tensor:
        return self._stack("entropy").mean(0)

    @property
    def selection_frequency(self) -> torch.Tensor:
        """(T,) how many prompts chose each step as critical."""
        freq = torch.zeros(self.steps, dtype=torch.long)
        for p in self.prompts:
            freq[p.critical] += 1
        return freq

    @property
    def critical_steps(self) -> torch.Tensor:
        """Recommended steps: top-k of the gain averaged over prompts (ties → earlier step)."""
        return InfoGainSelector().select(self.steps, self.top_k, self.mean_gain, torch.Generator())

    @property
    def gain_concentration(self) -> float | None:
        """Share of the total mean gain carried by the recommended steps (None if no gain at all)."""
        g = self.mean_gain.double()
        total = float(g.sum())
        return float(g[self.critical_steps].sum()) / total if total > 0 else None

    def summary(self, **extra) -> dict:
        """The content of summary.json (``extra`` adds run facts such as model and embedder)."""
        def r(x: torch.Tensor) -> list[float]:
            return [round(float(v), 6) for v in x]
        conc = self.gain_concentration
        return {**extra, "steps": self.steps, "top_k": self.top_k,
                "critical_steps": self.critical_steps.tolist(),
                "selection_frequency": self.selection_frequency.tolist(),
                "mean_gain": r(self.mean_gain), "mean_similarity": r(self.mean_similarity),
                "mean_entropy": r(self.mean_entropy), "mask_ratio": r(torch.tensor(self.mask_ratio)),
                "gain_concentration": None if conc is None else round(conc, 6),
                "num_prompts": len(self.prompts)}


def masked_mean_entropy(traj: Trajectory) -> torch.Tensor:
    """(T, B, N) per-token entropy → (B, T) mean over the positions masked at each step's input.

    Every image of a batch has the same number of masked tokens per step (``counts``),
    so the mean is a sum over a known count.
    """
    t = traj.num_steps
    counts = torch.tensor(traj.counts[:t], dtype=torch.float32, device=traj.entropy.device)
    return (traj.entropy.float().sum(-1) / counts[:, None]).transpose(0, 1)


def batch_gain(traj: Trajectory, embedder: StepEmbedder, chunk: int = EMBED_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """``trajectory_gain`` over image sub-batches so at most ~``chunk`` grids are embedded at once."""
    b, t = traj.final.shape[0], traj.num_steps
    per = max(1, chunk // (t + 1))
    sims, gains = [], []
    for i in range(0, b, per):
        sub = traj if per >= b else traj.select(list(range(i, min(b, i + per))))
        s, g = trajectory_gain(sub, embedder)
        sims.append(s)
        gains.append(g)
    return torch.cat(sims), torch.cat(gains)


@torch.no_grad()
def decode_strip(adapter: MaskedT2IAdapter, x0: torch.Tensor, max_size: int = 96, chunk: int = 16) -> torch.Tensor:
    """(T, N) x̂0 grids of one image → (T, 3, h, w) decoded thumbnails (at most ``max_size`` px a side)."""
    out = []
    for i in range(0, x0.shape[0], chunk):
        img = adapter.decode(x0[i:i + chunk]).float().cpu()
        h, w = img.shape[-2:]
        if max(h, w) > max_size:
            s = max_size / max(h, w)
            img = F.interpolate(img, size=(max(1, round(h * s)), max(1, round(w * s))), mode="area")
        out.append(img.clamp(0, 1))
    return torch.cat(out)


@dataclass
class _Pending:
    """Per-image statistics of a prompt still being sampled."""

    sim: dict[int, torch.Tensor] = field(default_factory=dict)
    gain: dict[int, torch.Tensor] = field(default_factory=dict)
    ent: dict[int, torch.Tensor] = field(default_factory=dict)
    explore: dict[int, torch.Tensor] = field(default_factory=dict)
    strip: torch.Tensor | None = None


def profile_steps(adapter: MaskedT2IAdapter, prompts: Sequence[str], settings: SamplerSettings,
                  embedder: StepEmbedder, *, top_k: int, n: int = 4, seed: int = 0, batch_size: int = 64,
                  router: Router | None = None, strip_prompts: int = 4,
                  on_prompt: Callable[[PromptProfile], None] | None = None,
                  on_batch: Callable[[int], None] | None = None) -> ProfileResult:
    """Sample ``n`` images per prompt (image j with seed ``seed + j``, as `sample` does) and profile them.

    ``on_prompt`` is called with each prompt's profile as soon as its last image is
    done (in prompt order), ``on_batch`` with the number of images of each batch.
    """
    T = settings.steps
    check_profile_options(T, top_k, n, batch_size)
    if not prompts:
        raise ValueError("no prompts given: pass prompts as arguments, --prompts FILE, or --prompts - (stdin)")
    counts = mask_counts(adapter.num_tokens, T, settings.schedule)
    result = ProfileResult(steps=T, top_k=top_k, mask_ratio=[c / adapter.num_tokens for c in counts[:T]])
    selector, gen = InfoGainSelector(), torch.Generator().manual_seed(0)
    encoder = PromptEncoder(adapter)
    jobs: list[Job] = make_jobs(list(prompts), n, seed)
    pending: dict[int, _Pending] = {}

    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        cond = encoder([j.prompt for j in chunk])
        uncond = encoder([settings.negative_prompt] * len(chunk))
        traj = sample(adapter, cond, uncond, [j.seed for j in chunk], settings, record=True,
                      router=router).trajectory
        sim, gain = (x.float().cpu() for x in batch_gain(traj, embedder))
        ent = masked_mean_entropy(traj).cpu()
        explore = traj.explore.transpose(0, 1).cpu()
        for b, job in enumerate(chunk):
            p = pending.setdefault(job.prompt_index, _Pending())
            p.sim[job.image_index], p.gain[job.image_index] = sim[b], gain[b]
            p.ent[job.image_index], p.explore[job.image_index] = ent[b], explore[b]
            if job.image_index == 0 and job.prompt_index < strip_prompts:
                p.strip = decode_strip(adapter, traj.x0[:, b])
            if job.image_index == n - 1:  # jobs are prompt-major: this prompt is complete
                done = pending.pop(job.prompt_index)
                prof = _finish(job.prompt_index, job.prompt, done, n, result, selector, gen,
                               router is not None)
                result.prompts.append(prof)
                if on_prompt is not None:
                    on_prompt(prof)
        if on_batch is not None:
            on_batch(len(chunk))
    return result


def _finish(index: int, prompt: str, p: _Pending, n: int, result: ProfileResult, selector, gen,
            routed: bool) -> PromptProfile:
    order = range(n)
    gain = torch.stack([p.gain[j] for j in order])
    sim = torch.stack([p.sim[j] for j in order])
    critical = select_steps(selector, result.steps, result.top_k, shared_gain(sim)[None], "batch", gen)
    return PromptProfile(index=index, prompt=prompt, similarity=sim,
                         gain=gain, entropy=torch.stack([p.ent[j] for j in order]),
                         explore=torch.stack([p.explore[j] for j in order]) if routed else None,
                         critical=critical, mask_ratio=result.mask_ratio, strip=p.strip)
