"""Masked (MaskGIT / Meissonic / aMUSEd) sampling: the one step function and the loop.

``denoise_step`` is the single implementation of the step maths (DESIGN §3.1); the
sampler, the profiler and the trainer's rollouts all call it, and the losses score
tokens with ``step_log_probs`` — the same guided, tempered distribution the step
samples from.

Randomness is drawn per image from its own ``torch.Generator`` (seeded from the
image's seed), so a (prompt, seed) pair gives the same image whatever batch it
is sampled in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Protocol, Sequence

import torch
from torch import nn

from maskfocus_cli.models.base import Cond, MaskedT2IAdapter, StepInfo, guidance_active, index_cond

Schedule = Literal["cosine", "linear"]


@dataclass(frozen=True)
class SamplerSettings:
    """How to sample (the knobs of DESIGN §3.1)."""

    steps: int = 16  #: T, number of unmasking steps
    guidance_scale: float = 3.0  #: classifier-free guidance w (form given by the model family)
    schedule: Schedule = "cosine"  #: mask-ratio schedule r_t
    logit_temperature: float = 1.0  #: τ_logit: p = softmax(ℓ / τ_logit)
    gumbel_temperature: float = 2.0  #: start of the annealed confidence-noise temperature τ_t
    negative_prompt: str = ""  #: prompt of CFG's unconditional branch ("" = unconditional)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1 (got {self.steps})")
        if self.schedule not in ("cosine", "linear"):
            raise ValueError(f"schedule must be 'cosine' or 'linear' (got {self.schedule!r})")
        if not self.logit_temperature > 0:
            raise ValueError(f"logit_temperature must be > 0 (got {self.logit_temperature})")


# --------------------------------------------------------------------------- schedule
def mask_ratio(step: int, total: int, schedule: Schedule = "cosine") -> float:
    """r_t: fraction of tokens still masked *after* step t.

    Computed in float32 like diffusers' AmusedScheduler and Meissonic's scheduler, so
    floor(N r_t) matches theirs exactly (float64 differs when (t+1)/T = 2/3).
    """
    frac = (torch.tensor(step, dtype=torch.float32) + 1) / total
    if schedule == "cosine":
        return float(torch.cos(frac * math.pi / 2))
    if schedule == "linear":
        return float(1 - frac)
    raise ValueError(f"unknown schedule {schedule!r}")


def mask_counts(num_tokens: int, total: int, schedule: Schedule = "cosine") -> list[int]:
    """Number of masked tokens at the *input* of each step, plus the final 0 (length T+1).

    n_mask = floor(N r_t), at most (#masked - 1), at least 1; 0 after the last step.
    Deterministic in (N, T, schedule), so shared by every sample of a batch.
    """
    if total > num_tokens:  # the clamp would leave steps that unmask nothing new, idle but still "critical"
        raise ValueError(f"{total} sampling steps for {num_tokens} image tokens: every step must unmask at least "
                         f"one token (use at most {num_tokens} steps)")
    counts = [num_tokens]
    for t in range(total):
        if t == total - 1:
            counts.append(0)
            continue
        n = int(torch.floor(torch.tensor(num_tokens, dtype=torch.float32) * mask_ratio(t, total, schedule)))
        n = max(1, min(counts[-1] - 1, n))
        counts.append(n)
    return counts


# --------------------------------------------------------------------------- routing hook
@dataclass
class RouteDecision:
    """Per-sample choice of step and the logit temperature each token is sampled with."""

    explore: torch.Tensor  #: (B,) bool, True where the exploratory step is taken
    temperature: torch.Tensor  #: (B, N) per-token logit temperature multiplier (1 = standard)


class Router(Protocol):
    """Chooses, per sample and step, between the standard and an exploratory step."""

    def route(self, entropy: torch.Tensor, masked: torch.Tensor) -> RouteDecision:
        """entropy: (B, N) per-token entropy of the standard step (0 at known tokens);
        masked: (B, N) bool still-masked positions."""
        ...


# --------------------------------------------------------------------------- the step
@dataclass
class StepOutput:
    """Everything one step produced; the trajectory keeps these per step."""

    tokens: torch.Tensor  #: (B, N) s_{t+1}
    x0: torch.Tensor  #: (B, N) sampled x̂0 (known tokens kept)
    newly: torch.Tensor  #: (B, N) bool, positions unmasked at this step
    entropy: torch.Tensor  #: (B, N) entropy of p at masked positions, 0 elsewhere
    logprob: torch.Tensor  #: (B, N) log p(x̂0) at masked positions, 0 elsewhere
    threshold: torch.Tensor  #: (B,) confidence cut-off (lowest kept confidence)
    explore: torch.Tensor  #: (B,) bool, exploratory route taken
    temperature: torch.Tensor | None  #: (B, N) per-token temperature when routed, else None


def entropy_of(log_p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy over the last dim from log-probabilities (nats)."""
    return -(log_p.exp() * log_p).sum(-1)


def draw_noise(generators: Sequence[torch.Generator], num_tokens: int) -> torch.Tensor:
    """(2, B, N) uniforms: [0] for token sampling, [1] for the Gumbel confidence noise.

    One draw per image from its own generator keeps images batch-independent.
    """
    return torch.stack([torch.rand(2, num_tokens, generator=g) for g in generators], dim=1)


def sample_categorical(log_p: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling of (B, N, K) categoricals with given (B, N) uniforms."""
    cdf = log_p.exp().cumsum(-1)
    u = uniform.to(cdf.device, cdf.dtype).unsqueeze(-1) * cdf[..., -1:]
    idx = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    return idx.clamp_(max=log_p.shape[-1] - 1)


def gumbel(uniform: torch.Tensor) -> torch.Tensor:
    return -torch.log((-torch.log(uniform.clamp(1e-20))).clamp(1e-20))


def denoise_step(logits: torch.Tensor, tokens: torch.Tensor, mask_id: int, n_mask: int,
                 gumbel_tau: float, noise: torch.Tensor, logit_temperature: float = 1.0,
                 router: Router | None = None) -> StepOutput:
    """One MaskGIT step from given logits (DESIGN §3.1 points 2–5).

    logits: (B, N, K) guided logits; tokens: (B, N) s_t; n_mask: tokens left masked
    after this step; noise: (2, B, N) uniforms from ``draw_noise``.
    """
    masked = tokens == mask_id
    log_p = torch.log_softmax(logits.float() / logit_temperature, dim=-1)
    ent = entropy_of(log_p) * masked
    temperature = None
    if router is not None:
        decision = router.route(ent, masked)
        explore = decision.explore.to(tokens.device)
        if bool(explore.any()):
            temperature = decision.temperature.to(log_p.dtype)
            log_p = torch.log_softmax(logits.float() / (logit_temperature * temperature.unsqueeze(-1)), -1)
    else:
        explore = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)

    u_tok, u_gum = noise[0].to(tokens.device), noise[1].to(tokens.device)
    sampled = sample_categorical(log_p, u_tok)
    x0 = torch.where(masked, sampled, tokens)
    chosen = torch.gather(log_p, -1, x0.clamp(max=log_p.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
    chosen = torch.where(masked, chosen, torch.zeros_like(chosen))

    if n_mask == 0:
        new_tokens = x0
        threshold = torch.full((tokens.shape[0],), -math.inf, device=tokens.device)
    else:
        conf = chosen + gumbel_tau * gumbel(u_gum)
        conf = torch.where(masked, conf, torch.full_like(conf, math.inf))
        order = torch.sort(conf, dim=-1, stable=True)
        remask = torch.zeros_like(masked)
        remask.scatter_(1, order.indices[:, :n_mask], True)
        new_tokens = torch.where(remask, torch.full_like(x0, mask_id), x0)
        threshold = order.values[:, n_mask]
    newly = masked & (new_tokens != mask_id)
    return StepOutput(tokens=new_tokens, x0=x0, newly=newly, entropy=ent, logprob=chosen,
                      threshold=threshold, explore=explore, temperature=temperature)


def step_info(step: int, total: int, num_tokens: int, counts: Sequence[int]) -> StepInfo:
    return StepInfo(index=step, total=total, mask_ratio=counts[step] / num_tokens)


def step_log_probs(adapter: MaskedT2IAdapter, tokens: torch.Tensor, cond: Cond, uncond: Cond | None,
                   step: StepInfo, settings: SamplerSettings, net: nn.Module | None = None,
                   temperature: torch.Tensor | None = None) -> torch.Tensor:
    """log p_θ(· | s_t) at a state: the distribution ``denoise_step`` samples from.

    This is the scoring half of the step maths, used by the losses (with ``net`` set
    to the wrapped policy or the frozen reference).
    """
    logits = adapter.logits(tokens, cond, step, uncond, settings.guidance_scale, net=net)
    scale = settings.logit_temperature
    if temperature is not None:
        return torch.log_softmax(logits / (scale * temperature.unsqueeze(-1)), dim=-1)
    return torch.log_softmax(logits / scale, dim=-1)


# --------------------------------------------------------------------------- trajectory
@dataclass
class Trajectory:
    """Per-step record of a batch of sampling runs; tensors are (T, B, N) or (T, B)."""

    states: torch.Tensor  #: s_t, input of each step (long)
    x0: torch.Tensor  #: x̂0_t (long)
    newly: torch.Tensor  #: positions unmasked at step t (bool)
    entropy: torch.Tensor  #: per-token entropy of p at masked positions (float)
    logprob: torch.Tensor  #: log-prob of the chosen tokens (float)
    threshold: torch.Tensor  #: (T, B) confidence cut-off
    explore: torch.Tensor  #: (T, B) bool routing decisions
    final: torch.Tensor  #: (B, N) final grid
    counts: list[int]  #: masked tokens at the input of each step (+ final 0)
    temperature: torch.Tensor | None = None  #: (T, B, N) per-token temperature when routed

    @property
    def num_steps(self) -> int:
        return self.states.shape[0]

    def select(self, idx: torch.Tensor | list[int]) -> "Trajectory":
        """Sub-batch (for micro-batching and rank sharding)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Trajectory(
            states=self.states[:, idx], x0=self.x0[:, idx], newly=self.newly[:, idx],
            entropy=self.entropy[:, idx], logprob=self.logprob[:, idx],
            threshold=self.threshold[:, idx], explore=self.explore[:, idx], final=self.final[idx],
            counts=list(self.counts),
            temperature=None if self.temperature is None else self.temperature[:, idx])


@dataclass
class SampleResult:
    tokens: torch.Tensor  #: (B, N) final token grids
    trajectory: Trajectory | None = None


class PromptEncoder:
    """Caches text encodings per prompt (text encoders are frozen: encode once)."""

    def __init__(self, adapter: MaskedT2IAdapter, max_items: int = 4096) -> None:
        self.adapter = adapter
        self.max_items = max_items
        self._cache: dict[str, Cond] = {}

    def __call__(self, prompts: Sequence[str]) -> Cond:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            with torch.no_grad():
                enc = self.adapter.encode_prompts(missing)
            if len(self._cache) + len(missing) > self.max_items:
                self._cache.clear()
            for i, p in enumerate(missing):
                self._cache[p] = index_cond(enc, slice(i, i + 1))
        rows = [self._cache[p] for p in prompts]
        return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


def distinct_rows(conds: Sequence[Cond | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, inverse): the first row of each distinct conditioning, in batch order, and
    each row's group, so that ``rows[first][inverse]`` rebuilds every row. Rows are
    compared bit for bit over all tensors of all given conds (e.g. cond and uncond)."""
    parts = [v.detach().cpu().contiguous().view(torch.uint8).reshape(v.shape[0], -1)
             for c in conds for v in (c or {}).values()]
    groups: dict[bytes, int] = {}
    first: list[int] = []
    inverse = []
    for i, row in enumerate(torch.cat(parts, 1).numpy()):  # once per sampling run, B rows
        g = groups.setdefault(row.tobytes(), len(groups))
        if g == len(first):
            first.append(i)
        inverse.append(g)
    return torch.tensor(first, dtype=torch.long), torch.tensor(inverse, dtype=torch.long)


def make_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


@torch.no_grad()
def sample(adapter: MaskedT2IAdapter, cond: Cond, uncond: Cond | None, seeds: Sequence[int],
           settings: SamplerSettings, *, record: bool = False, router: Router | None = None,
           net: nn.Module | None = None,
           on_step: Callable[[int, StepOutput], None] | None = None) -> SampleResult:
    """Sample a batch from all-[MASK]; ``record`` keeps the per-step ``Trajectory``.

    ``uncond`` is the unconditional conditioning (same batch size) or None for no CFG.
    """
    b, n, T = len(seeds), adapter.num_tokens, settings.steps
    gens = make_generators(seeds)
    device = adapter.device
    tokens = torch.full((b, n), adapter.mask_id, dtype=torch.long, device=device)
    counts = mask_counts(n, T, settings.schedule)
    guided = uncond is not None and guidance_active(settings.guidance_scale, adapter.guidance_form)
    first, inverse = distinct_rows([cond, uncond] if guided else [cond])
    # prompt-only work (e.g. cached text keys/values) once per run, not once per step
    cond = adapter.prepare_cond(cond, net)
    if guided:
        uncond = adapter.prepare_cond(uncond, net)
    rec: dict[str, list[torch.Tensor]] = {k: [] for k in
                                          ("states", "x0", "newly", "entropy", "logprob",
                                           "threshold", "explore", "temperature")}
    for t in range(T):
        info = step_info(t, T, n, counts)
        if t == 0 and len(first) < b:
            # all-[MASK] input: rows with the same conditioning have the same logits, so
            # score each distinct prompt once (a GRPO group of G is one row, not G)
            logits = adapter.logits(tokens[first], index_cond(cond, first), info,
                                    None if uncond is None else index_cond(uncond, first),
                                    settings.guidance_scale, net=net)[inverse]
        else:
            logits = adapter.logits(tokens, cond, info, uncond, settings.guidance_scale, net=net)
        out = denoise_step(logits, tokens, adapter.mask_id, counts[t + 1],
                           adapter.gumbel_temperature(t, T, settings.gumbel_temperature),
                           draw_noise(gens, n), settings.logit_temperature, router)
        if record:
            rec["states"].append(tokens)
            for k in ("x0", "newly", "entropy", "logprob", "threshold", "explore"):
                rec[k].append(getattr(out, k))
            rec["temperature"].append(out.temperature if out.temperature is not None
                                      else torch.ones_like(out.entropy))
        if on_step is not None:
            on_step(t, out)
        tokens = out.tokens
    traj = None
    if record:
        routed = router is not None
        traj = Trajectory(**{k: torch.stack(v) for k, v in rec.items() if k != "temperature"},
                          final=tokens, counts=counts,
                          temperature=torch.stack(rec["temperature"]) if routed else None)
    return SampleResult(tokens=tokens, trajectory=traj)
