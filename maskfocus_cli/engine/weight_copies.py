"""The policy's weights and their copies: fp32 masters for full fine-tuning, a low-precision copy that
rollouts sample with, and the weight average checkpoints hand out."""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn


def keep_fp32_weights(transformer: nn.Module, log: Callable[[str], None]) -> None:
    """Full fine-tuning updates the weights themselves, so they stay fp32.

    In bf16 an AdamW step of lr·1 is below half a unit in the last place for every weight
    larger than ~256·lr (5e-4 at the published lr 2e-6) and rounds away: ~97% of the
    weights would never move. Low precision still serves where it is safe:
    ``train.mixed_precision`` (autocast) and ``train.rollout_dtype`` (rollout copy).
    LoRA is unaffected (peft keeps its adapter weights fp32).
    """
    low = sorted({str(p.dtype).removeprefix("torch.") for p in transformer.parameters()
                  if p.is_floating_point() and p.dtype != torch.float32})
    if low:
        transformer.float()
        log(f"full fine-tuning: {'/'.join(low)} weights upcast to fp32 (a low-precision weight ignores "
            "small updates); use train.mixed_precision / train.rollout_dtype for speed, or LoRA for memory")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products run in hardware here: on CPUs without AVX-512 BF16 / AMX they are emulated,
    and a bf16 rollout copy samples ~5x slower than fp32 (measured on an AVX2 EPYC) instead of ~1.2x faster."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_rollout_dtype(choice: str, device: torch.device, lora: bool) -> str:
    """``train.rollout_dtype`` → fp32 | bf16: ``auto`` is bf16 where it is native and the copy can exist (full
    fine-tuning), else fp32."""
    if choice != "auto":
        return choice
    return "bf16" if not lora and native_bf16(device) else "fp32"


def make_rollout_net(policy: nn.Module, rollout_dtype: str, lora: bool) -> nn.Module:
    """The module rollouts sample with: the policy itself, or a low-precision copy of it.

    Rollouts are ~3/4 of an iteration on CPU and need no gradients, so a bf16 copy
    buys iterations; log-probs for the loss still come from the fp32 policy (the
    single-epoch π_old is the current policy detached, never the rollout copy).
    """
    if rollout_dtype == "fp32":
        return policy
    if lora:
        raise ValueError("train.rollout_dtype: bf16 needs full fine-tuning (lora_rank: 0); with LoRA use "
                         "train.mixed_precision: bf16 instead")
    # plain Module.to: diffusers' ModelMixin.to warns about fp32-kept modules on every dtype cast (it has none here)
    return nn.Module.to(copy.deepcopy(policy), torch.bfloat16).requires_grad_(False).eval()


def make_ema_net(policy: nn.Module, ema_decay: float, lora: bool) -> nn.Module | None:
    """The weight average checkpoints hand out (``train.ema_decay``), or None.

    On the shapes world, checkpoints 50 iterations apart differ by up to 0.05 held-out
    (docs/shapes-rl.md, tenth round): the average takes the lottery out of where a time
    budget happens to stop, so it is what evaluate / export should see.
    """
    if ema_decay == 0:
        return None
    if lora:
        raise ValueError("train.ema_decay needs full fine-tuning (lora_rank: 0)")
    return copy.deepcopy(policy).requires_grad_(False).eval()


@torch.no_grad()
def sync_rollout_net(rollout_net: nn.Module, policy: nn.Module) -> None:
    """Re-cast the fp32 master weights into the rollout copy (after each optimiser step)."""
    if rollout_net is policy:
        return
    for dst, src in zip(rollout_net.parameters(), policy.parameters()):
        dst.copy_(src)


@torch.no_grad()
def update_average(ema_net: nn.Module | None, policy: nn.Module, ema_decay: float, it: int) -> None:
    """Move the weight average towards the policy after iteration ``it``'s optimiser step."""
    if ema_net is None:
        return
    decay = min(ema_decay, (1 + it) / (10 + it))  # early iterations: follow the policy closely
    ema = [p for p in ema_net.parameters() if p.is_floating_point()]
    live = [p for p in policy.parameters() if p.is_floating_point()]
    torch._foreach_lerp_(ema, live, 1.0 - decay)
