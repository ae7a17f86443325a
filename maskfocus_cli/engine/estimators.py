"""Policy-update estimators as strategy objects: which steps an update scores, and the loss of one unit.

The trainer owns rollouts, rewards, advantages, micro-batching, DDP and the optimiser. An
estimator answers the two questions that differ between papers: which of the T sampling
steps this rollout batch is scored at, and the loss of one (step, rows) unit — so a new
estimator is a new class here, not another ``if algorithm == ...`` in the loop. The loss
maths itself stays in ``engine/grpo.py`` (pure functions, tested against hand values).

* ``MaskFocusEstimator``: the configured selector's k steps (information gain over the
  whole rollout batch by default); the final grid re-masked at random with each step's
  mask count, all masked tokens scored, k3 KL to a frozen reference (DESIGN §3.4). The
  random / uniform / all-steps ablations are this estimator with another selector.
* ``MaskGRPOEstimator``: every step (or the first R), the recorded state replayed and the
  transition log-prob scored, asymmetric clip, no KL (DESIGN §3.4).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ContextManager

import torch
from torch import nn

from maskfocus_cli.engine.critical import make_embedder, make_selector, select_steps, shared_gain, trajectory_gain
from maskfocus_cli.engine.grpo import StepLoss, mask_grpo_step_loss, maskfocus_step_loss, random_remask
from maskfocus_cli.engine.sampling import SamplerSettings, Trajectory, step_info
from maskfocus_cli.engine.seeds import derive_seed
from maskfocus_cli.models.base import Cond, MaskedT2IAdapter, guidance_active

if TYPE_CHECKING:
    from accelerate import Accelerator


@dataclass(frozen=True)
class UpdateContext:
    """What the trainer lends an estimator for one update: the model, the prepared (DDP-wrapped)
    network the loss must go through, the frozen reference, the accelerator (ranks, autocast) and
    the rollout sampler's settings."""

    adapter: MaskedT2IAdapter
    net: nn.Module
    reference: nn.Module | None
    acc: Accelerator  #: process_index, num_processes, reduce, autocast
    settings: SamplerSettings  #: the rollout sampler's (T, τ_t): what the recorded trajectory was sampled with
    seed: int
    autocast: Callable[[], ContextManager] | None = None  #: the loss's precision context (None: acc.autocast)


@dataclass(frozen=True)
class Unit:
    """One forward + backward of the update: score step ``t`` (the ``j``-th chosen) for ``rows`` of the
    kept rollouts; ``global_idx`` are those rows' indices in the whole rollout batch (seeds)."""

    j: int
    t: int
    rows: torch.Tensor
    global_idx: torch.Tensor


class Estimator(ABC):
    """Strategy for one GRPO policy update over a recorded rollout batch."""

    #: the trainer keeps a frozen copy of the policy for this estimator's KL term
    uses_reference: bool = False

    @abstractmethod
    def choose_steps(self, ctx: UpdateContext, sub: Trajectory, it: int) -> torch.Tensor:
        """(k,) steps shared by the batch, or (B, k) steps per image, for this rank's kept rollouts."""

    @abstractmethod
    def unit_loss(self, ctx: UpdateContext, sub: Trajectory, unit: Unit, cond: Cond, uncond: Cond | None,
                  settings: SamplerSettings, adv: torch.Tensor, it: int, old_logp: torch.Tensor | None) -> StepLoss:
        """The loss sum over ``unit.rows`` at step ``unit.t``, scored with ``settings`` (the loss's: guidance as
        ``train.loss_guidance`` says; ``ctx.settings`` are the rollout's); ``old_logp`` is π_old from the first
        inner epoch (None on it: the current log-probs detached, never a second forward)."""


class MaskGRPOEstimator(Estimator):
    """Mask-GRPO: replayed states, newly-unmasked transition log-prob at all T (or the first R) steps."""

    def __init__(self, reduction_steps: int, remask_term: bool, clip_low: float, clip_high: float):
        self.reduction_steps, self.remask_term = reduction_steps, remask_term
        self.clip_low, self.clip_high = clip_low, clip_high

    def choose_steps(self, ctx: UpdateContext, sub: Trajectory, it: int) -> torch.Tensor:
        T, r = ctx.settings.steps, self.reduction_steps
        return torch.arange(min(r, T) if r else T)

    def unit_loss(self, ctx: UpdateContext, sub: Trajectory, unit: Unit, cond: Cond, uncond: Cond | None,
                  settings: SamplerSettings, adv: torch.Tensor, it: int, old_logp: torch.Tensor | None) -> StepLoss:
        t, rows, T = unit.t, unit.rows, ctx.settings.steps
        info = step_info(t, T, ctx.adapter.num_tokens, sub.counts)
        temp = sub.temperature[t, rows] if sub.temperature is not None else None
        nxt = sub.states[t + 1, rows] if t + 1 < T else sub.final[rows]
        tau = ctx.adapter.gumbel_temperature(t, T, ctx.settings.gumbel_temperature)  # as the rollout's step t
        return mask_grpo_step_loss(ctx.adapter, ctx.net, sub.states[t, rows], nxt, sub.x0[t, rows],
                                   sub.newly[t, rows], sub.threshold[t, rows], cond, uncond, info, adv, settings,
                                   old_logp, temp, self.remask_term, self.clip_low, self.clip_high, tau)


class MaskFocusEstimator(Estimator):
    """MaskFocus: the selector's critical steps; random re-mask of the final grid at each step's mask
    count, all masked tokens, per-token ratio, KL to the frozen reference."""

    def __init__(self, selector, embedder, k: int, reduction: str, kl_beta: float, kl_max: float,
                 kl_estimator: str, clip_low: float, clip_high: float):
        self.selector, self.embedder, self.k, self.reduction = selector, embedder, k, reduction
        self.kl_beta, self.kl_max, self.kl_estimator = kl_beta, kl_max, kl_estimator
        self.clip_low, self.clip_high = clip_low, clip_high
        self.uses_reference = kl_beta > 0

    def choose_steps(self, ctx: UpdateContext, sub: Trajectory, it: int) -> torch.Tensor:
        T, acc = ctx.settings.steps, ctx.acc
        shared = self.reduction == "batch"
        b = sub.final.shape[0]
        gain = None
        if self.selector.needs_gain:
            sim, gain = trajectory_gain(sub, self.embedder) if b else (None, None)
            if shared:  # the gain of the whole rollout batch's mean similarity (official), alike on every rank
                total = sim.detach().cpu().double().sum(0) if sim is not None else torch.zeros(T, dtype=torch.float64)
                count = torch.tensor([float(b)], dtype=torch.float64)
                if acc.num_processes > 1:
                    total = acc.reduce(total.to(acc.device), "sum").cpu()
                    count = acc.reduce(count.to(acc.device), "sum").cpu()
                gain = shared_gain((total / count.clamp_min(1.0)).float()[None])[None]
        if b == 0 and not shared:  # nothing kept on this rank: any k steps (only dummy passes run)
            return torch.arange(min(self.k, T))
        # a shared step set is drawn alike on every rank; per-sample sets per rank
        rank_key = () if shared else (acc.process_index,)
        gen = torch.Generator().manual_seed(derive_seed(ctx.seed, it, *rank_key, "steps"))
        return select_steps(self.selector, T, self.k, gain, self.reduction, gen, batch_size=b)

    def unit_loss(self, ctx: UpdateContext, sub: Trajectory, unit: Unit, cond: Cond, uncond: Cond | None,
                  settings: SamplerSettings, adv: torch.Tensor, it: int, old_logp: torch.Tensor | None) -> StepLoss:
        t = unit.t
        info = step_info(t, ctx.settings.steps, ctx.adapter.num_tokens, sub.counts)
        gens = [torch.Generator().manual_seed(derive_seed(ctx.seed, it, int(g), t, "remask"))
                for g in unit.global_idx]
        final = sub.final[unit.rows]
        masked = random_remask(final, sub.counts[t], gens)
        # under mixed precision the prepared policy runs autocast; the reference must too, or
        # their precision gap reads as KL (1.7e-5 at iteration 0 with identical weights)
        with (ctx.autocast or ctx.acc.autocast)():
            return maskfocus_step_loss(ctx.adapter, ctx.net, ctx.reference, final, masked, cond, uncond, info, adv,
                                       settings, old_logp, self.kl_beta, self.clip_low, self.clip_high,
                                       self.kl_max, self.kl_estimator)


def make_estimator(recipe, adapter: MaskedT2IAdapter, settings: SamplerSettings) -> Estimator:
    """The estimator a recipe names (``train.algorithm``), checked against the rollout's ``settings``."""
    cfg, crit, steps = recipe.train, recipe.critical, settings.steps
    if cfg.algorithm == "mask-grpo":
        guided = adapter is not None and guidance_active(settings.guidance_scale, adapter.guidance_form)
        if cfg.remask_term and guided and not cfg.loss_guidance:
            # the cut-offs are confidences under the rollout's CFG; conditional-branch log-probs are on
            # another scale (sharper or flatter), so P(stay masked) would be computed for the wrong event
            raise ValueError("train.remask_term compares with cut-offs the rollout drew under CFG, but the loss "
                             "scores the conditional branch only: set train.loss_guidance: true (or sample "
                             "without CFG)")
        return MaskGRPOEstimator(cfg.reduction_steps, cfg.remask_term, cfg.clip_low, cfg.clip_high)
    if cfg.algorithm == "maskfocus":
        if crit.selector != "all" and crit.k > steps:
            raise ValueError(f"critical.k = {crit.k} is larger than sampler.steps = {steps}")
        selector = make_selector(crit.selector)
        embedder = make_embedder(crit.embed, adapter, crit.clip_model, crit.clip_weights) \
            if selector.needs_gain else None
        return MaskFocusEstimator(selector, embedder, crit.k, crit.reduction, cfg.kl_beta, cfg.kl_max,
                                  cfg.kl_estimator, cfg.clip_low, cfg.clip_high)
    raise ValueError(f"train.algorithm {cfg.algorithm!r} has no policy-update estimator "
                     f"(use maskfocus or mask-grpo)")
