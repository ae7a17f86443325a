"""GRPO core: group advantages and the two policy-loss estimators (DESIGN §3.4).

Pure tensor functions plus one model call each. Each estimator scores ONE step for
ONE micro-batch and returns a loss *sum over samples* (the trainer divides by the
global sample count and calls backward per step, so memory never grows with T).

* ``maskfocus_step_loss``: final grid, re-masked at random with step t's mask count,
  scored at step t's timestep over all masked tokens; per-token ratio, clipped
  surrogate, k3 KL to a frozen reference.
* ``mask_grpo_step_loss``: replays the recorded state s_t; log π(s_{t+1}|s_t) is the
  sum over newly-unmasked tokens (+ optionally, for the tokens that stayed masked,
  the log-probability that their noisy confidence fell below the step's cut-off);
  per-step ratio with an asymmetric clip; no KL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from maskfocus_cli.engine.sampling import SamplerSettings, step_log_probs
from maskfocus_cli.models.base import Cond, MaskedT2IAdapter, StepInfo


# --------------------------------------------------------------------------- advantages
@dataclass
class Advantages:
    values: torch.Tensor  #: (M,) normalised advantages (0 where dropped)
    keep: torch.Tensor  #: (M,) bool: valid reward and in a group with signal
    zero_std_groups: int  #: groups dropped because every reward was equal
    groups: int


def group_advantages(rewards: torch.Tensor, valid: torch.Tensor, group_size: int,
                     eps: float = 1e-4, unbiased: bool = False) -> Advantages:
    """A_i = (r_i − mean_g) / (std_g + eps) within each group of ``group_size`` consecutive samples.

    std_g divides by the group's n valid rewards, or by n − 1 with ``unbiased`` (``torch.std``'s default, which
    both papers' training code uses: at G = 2 its advantages are 1/√2 of the population std's, so the KL term
    weighs √2 more against them). Invalid rewards (NaN/inf) are left out of their group's statistics and
    dropped; groups whose valid rewards are all equal (or with fewer than 2) carry no signal and are dropped
    whole.
    """
    if group_size < 2:
        raise ValueError("group_size must be at least 2: GRPO compares images of the same prompt "
                         "(set train.group_size >= 2)")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = torch.where(valid, rewards, torch.zeros_like(rewards)).view(-1, group_size).double()
    v = valid.view(-1, group_size)
    n = v.sum(1, keepdim=True).clamp_min(1)
    mean = (r * v).sum(1, keepdim=True) / n
    var = (((r - mean) ** 2) * v).sum(1, keepdim=True) / ((n - 1).clamp_min(1) if unbiased else n)
    std = var.sqrt()
    signal = (v.sum(1, keepdim=True) >= 2) & (std > 1e-12)
    adv = torch.where(v & signal, (r - mean) / (std + eps), torch.zeros_like(r))
    zero = int(((std <= 1e-12) & (v.sum(1, keepdim=True) >= 2)).sum())
    return Advantages(values=adv.view(-1).float(), keep=(v & signal).view(-1), zero_std_groups=zero,
                      groups=r.shape[0])


# --------------------------------------------------------------------------- pieces
def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float) -> torch.Tensor:
    """PPO loss per element: −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A)."""
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    return -torch.minimum(ratio * adv, clipped * adv)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor, max_value: float = 0.0) -> torch.Tensor:
    """Schulman's k3 estimator, exp(ref − logp) − (ref − logp) − 1 ≥ 0, zero iff equal.

    ``max_value`` > 0 caps each token's value (verl's ``low_var_kl`` caps at 10): k3 is
    unbounded when the policy drops a sampled token the reference likes, and one such
    token's gradient then fills the whole clipped update. Capped tokens get no KL gradient.
    """
    d = ref_logp - logp
    kl = torch.exp(d) - d - 1.0
    return kl.clamp(max=max_value) if max_value > 0 else kl


def categorical_kl(logp_all: torch.Tensor, ref_logp_all: torch.Tensor) -> torch.Tensor:
    """Exact KL(π‖π_ref) over the last (codebook) axis, from full log-prob tables.

    Both tables are already computed for the loss, so this costs one elementwise pass;
    unlike k3 on the image's tokens it has no sampling noise and cannot blow up on a
    token the policy stopped sampling (explored rollouts make such tokens common).
    """
    return (logp_all.exp() * (logp_all - ref_logp_all)).sum(-1)


def log_prob_below_cutoff(logp_all: torch.Tensor, threshold: torch.Tensor, gumbel_tau: float) -> torch.Tensor:
    """(B, N) log P(a masked token's confidence log p(x̂0) + τ·g falls below its image's cut-off).

    x̂0 ~ p and g ~ Gumbel(0, 1) are independent, so P = Σ_x p(x) · F((thr − log p(x)) / τ) with the
    Gumbel CDF F(z) = exp(−exp(−z)); at τ = 0 it is the probability mass below the cut-off. Comparing raw
    log-probs with a cut-off that includes the noise (always above them early on) makes the term
    identically 0 — the published code's defect in another form.
    """
    thr = threshold.to(logp_all.dtype)[:, None, None]
    if gumbel_tau > 0:
        z = ((logp_all - thr) / gumbel_tau).clamp(max=60.0)  # exp(60) is −inf enough, and finite
        return torch.logsumexp(logp_all - torch.exp(z), dim=-1)
    below = (logp_all < thr).float()
    return (logp_all.exp() * below).sum(-1).clamp_min(1e-12).log()


def random_remask(final: torch.Tensor, count: int, generators: list[torch.Generator]) -> torch.Tensor:
    """(B, N) bool: ``count`` random positions per sample, from each sample's own generator."""
    b, n = final.shape
    keys = torch.stack([torch.rand(n, generator=g) for g in generators])
    idx = keys.argsort(dim=1)[:, :count]
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask.scatter_(1, idx, True)
    return mask.to(final.device)


@dataclass
class StepLoss:
    loss_sum: torch.Tensor  #: differentiable sum over samples of the per-sample loss
    logp: torch.Tensor  #: detached log-probs used as π_old in later epochs
    kl_sum: float  #: sum over samples of mean-token KL
    clip_count: float  #: number of clipped elements
    elements: float  #: number of ratio elements


def maskfocus_step_loss(adapter: MaskedT2IAdapter, net: nn.Module, ref_net: nn.Module | None,
                        final: torch.Tensor, masked: torch.Tensor, cond: Cond, uncond: Cond | None,
                        step: StepInfo, adv: torch.Tensor, settings: SamplerSettings,
                        old_logp: torch.Tensor | None = None, kl_beta: float = 0.01,
                        clip_low: float = 0.2, clip_high: float = 0.2, kl_max: float = 0.0,
                        kl_estimator: str = "k3") -> StepLoss:
    """MaskFocus estimator for one critical step (official code's formulation).

    ``kl_estimator``: "k3" (the paper's, on the image's tokens, optionally capped at
    ``kl_max``) or "full" (``categorical_kl`` at every masked position).
    """
    inp = torch.where(masked, torch.full_like(final, adapter.mask_id), final)
    logp_all = step_log_probs(adapter, inp, cond, uncond, step, settings, net=net)
    logp = logp_all.gather(-1, final.unsqueeze(-1)).squeeze(-1)
    old = logp.detach() if old_logp is None else old_logp
    ratio = torch.exp(logp - old)
    per_tok = clipped_surrogate(ratio, adv[:, None], clip_low, clip_high)
    m = masked.float()
    zero = torch.zeros((), dtype=per_tok.dtype, device=per_tok.device)
    kl_sum = 0.0
    if kl_beta > 0 and ref_net is not None:
        with torch.no_grad():
            ref_all = step_log_probs(adapter, inp, cond, uncond, step, settings, net=ref_net)
        if kl_estimator == "full":
            kl = categorical_kl(logp_all, ref_all)
            per_tok = per_tok + kl_beta * kl
        elif kl_estimator == "k3":
            ref = ref_all.gather(-1, final.unsqueeze(-1)).squeeze(-1)
            kl = k3_kl(logp, ref)  # once: the loss takes it capped (as k3_kl's max_value does), the log uncapped
            per_tok = per_tok + kl_beta * (kl.clamp(max=kl_max) if kl_max > 0 else kl)
        else:
            raise ValueError(f"unknown kl_estimator {kl_estimator!r}; use 'k3' or 'full'")
        kl_sum = float((torch.where(masked, kl.detach(), zero).sum(1) / m.sum(1).clamp_min(1)).sum())  # uncapped
    # where(), not a product with the mask: adapters may leave logits at known positions
    # unspecified, and a NaN/inf there times 0 would still poison the sum
    per_sample = torch.where(masked, per_tok, zero).sum(1) / m.sum(1).clamp_min(1)
    clipped = ((ratio < 1 - clip_low) | (ratio > 1 + clip_high)) & masked
    return StepLoss(per_sample.sum(), logp.detach(), kl_sum, float(clipped.sum()), float(m.sum()))


def mask_grpo_step_loss(adapter: MaskedT2IAdapter, net: nn.Module, state: torch.Tensor, next_state: torch.Tensor,
                        x0: torch.Tensor, newly: torch.Tensor, threshold: torch.Tensor, cond: Cond,
                        uncond: Cond | None, step: StepInfo, adv: torch.Tensor, settings: SamplerSettings,
                        old_logp: torch.Tensor | None = None, temperature: torch.Tensor | None = None,
                        remask_term: bool = False, clip_low: float = 0.1, clip_high: float = 0.2,
                        gumbel_tau: float = 0.0) -> StepLoss:
    """Mask-GRPO estimator for one replayed step: log π(s_{t+1} | s_t) per sample.

    ``gumbel_tau``: the step's confidence-noise temperature τ_t, which the re-mask term needs (the
    cut-off is a confidence, log p + τ_t·Gumbel, not a log-probability).
    """
    logp_all = step_log_probs(adapter, state, cond, uncond, step, settings, net=net, temperature=temperature)
    tok = logp_all.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    lp = torch.where(newly.bool(), tok, torch.zeros_like(tok)).sum(1)
    if remask_term:
        # tokens that stayed masked: log P(their confidence falls below the step's cut-off), with the
        # cut-off stored as a float (the published code kept it in a bool tensor: a constant term)
        stayed = (state == adapter.mask_id) & (next_state == adapter.mask_id)
        stay = log_prob_below_cutoff(logp_all, threshold, gumbel_tau)
        lp = lp + torch.where(stayed, stay, torch.zeros_like(stay)).sum(1)
    old = lp.detach() if old_logp is None else old_logp
    ratio = torch.exp(lp - old)
    per_sample = clipped_surrogate(ratio, adv, clip_low, clip_high)
    clipped = (ratio < 1 - clip_low) | (ratio > 1 + clip_high)
    return StepLoss(per_sample.sum(), lp.detach(), 0.0, float(clipped.sum()), float(ratio.numel()))
