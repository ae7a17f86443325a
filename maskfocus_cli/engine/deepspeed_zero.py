"""DeepSpeed ZeRO stages 1–2 under ``accelerate launch --use_deepspeed`` (or a DEEPSPEED config file).

Why only 1–2: they shard the optimiser state (and, stage 2, the gradients) but leave every rank a full copy of
the weights, which the rollouts, the bf16 rollout copy, the weight average and the sample grids read directly.
Stage 3 shards the weights themselves; FSDP likewise — both are refused.

What the trainer must do differently under DeepSpeed, all of it here:

* the DeepSpeed config is filled from the recipe, not from the launcher: micro-batch (no dataloader to infer it
  from), gradient accumulation 1 (the trainer accumulates a whole rollout batch itself and marks the last
  backward as the boundary), gradient clipping ``train.grad_clip`` (DeepSpeed clips inside its step; accelerate's
  ``clip_grad_norm_`` only reports the norm there);
* DeepSpeed's own bf16/fp16 would turn the trained weights into half precision: refused. The engine runs fp32,
  and ``train.mixed_precision: bf16`` is bf16 autocast around the forwards, as under DDP (``autocast_forward``:
  what accelerate does to a DDP model, which it skips under DeepSpeed); fp16 would need loss scaling: refused;
* the optimiser state lives in per-rank shards: every rank writes and reads its own through DeepSpeed's
  checkpoint (``CKPT/deepspeed/``), next to the usual safetensors weights.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from types import MethodType
from typing import Callable, ContextManager

import torch

from maskfocus_cli.io.checkpoint import CheckpointError

#: where a checkpoint keeps DeepSpeed's optimiser shards
DEEPSPEED_DIR = "deepspeed"
_TAG = "optimizer"


def import_deepspeed_quietly() -> None:
    """DeepSpeed's logger writes to stdout, which carries ``train``'s JSON rows, and accelerate imports it whenever
    it is installed (``unwrap_model``), DeepSpeed launch or not. Imported with stdout pointed at stderr, its
    handler keeps stderr."""
    if "deepspeed" in sys.modules or importlib.util.find_spec("deepspeed") is None:
        return
    with contextlib.redirect_stdout(sys.stderr):
        import deepspeed  # noqa: F401


def quiet_stdout(deepspeed: bool) -> ContextManager:
    """DeepSpeed also ``print``s while it sets up (its C++ op builds, ranks' start-up): under a DeepSpeed launch,
    stdout goes to stderr for the set-up, so stdout stays the JSON rows."""
    return contextlib.redirect_stdout(sys.stderr) if deepspeed else nullcontext()


def deepspeed_launch() -> bool:
    """Whether ``accelerate launch`` asked for DeepSpeed (flag or config file)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def accelerator_device(device) -> dict:
    """``Accelerator`` arguments for the device: ``cpu=True`` gives gloo DDP ranks but would silently drop a
    DeepSpeed launch, and DeepSpeed on CPU ranks needs gloo named (accelerate finds no backend otherwise and
    counts every rank as a lone process)."""
    if not deepspeed_launch():
        return {"cpu": device.type == "cpu"}
    if device.type == "cpu":
        from accelerate.utils import InitProcessGroupKwargs
        return {"kwargs_handlers": [InitProcessGroupKwargs(backend="gloo")]}
    return {}


def is_deepspeed(acc) -> bool:
    return str(getattr(acc, "distributed_type", "")).endswith("DEEPSPEED")


def _enabled(section) -> bool:
    value = (section or {}).get("enabled") if isinstance(section, dict) else None
    return value is True or str(value).lower() in ("true", "1")


def configure(acc, micro_batch: int, grad_clip: float, mixed_precision: str) -> None:
    """Check the launch's DeepSpeed settings and fill in what the recipe decides (before ``prepare``).

    Refused: what would shard the weights (stage 3), skip ZeRO's optimiser (stage 0), change the precision of
    the trained weights, or take the optimiser or the learning rate out of the recipe's hands (DeepSpeed's own
    ``optimizer`` / ``scheduler``, an offloaded optimiser that replaces ours, elastic checkpoints that do not
    restore the learning rate)."""
    import accelerate
    from packaging.version import Version
    if Version(accelerate.__version__) < Version("1.8"):
        raise ValueError(f"DeepSpeed runs need accelerate >= 1.8 (installed: {accelerate.__version__}): older "
                         "releases step the optimiser after every backward; pip install -U accelerate")
    plugin = acc.state.deepspeed_plugin
    ds = plugin.deepspeed_config
    zero = ds.get("zero_optimization") or {}
    stage = int(zero.get("stage", plugin.zero_stage) or 0)
    if stage not in (1, 2):
        raise ValueError(f"DeepSpeed ZeRO stage {stage} is not supported: use zero_stage 1 or 2 (they shard the "
                         "optimiser state and gradients; stage 3 shards the weights every rank's rollouts read)")
    if _enabled(ds.get("bf16")) or _enabled(ds.get("fp16")) or _enabled(ds.get("torch_autocast")):
        raise ValueError("the DeepSpeed config enables bf16/fp16, which would keep the trained weights in half "
                         "precision: launch with --mixed_precision no and set train.mixed_precision: bf16 for "
                         "bf16 autocast")
    if mixed_precision == "fp16":
        raise ValueError("under DeepSpeed train.mixed_precision: fp16 has no loss scaling: use bf16 (autocast) or no")
    offload = (zero.get("offload_optimizer") or {}).get("device", "none")
    taken = [k for k in ("optimizer", "scheduler") if k in ds] + \
        (["zero_optimization.offload_optimizer"] if str(offload).lower() not in ("none", "") else []) + \
        (["zero_optimization.elastic_checkpoint"] if zero.get("elastic_checkpoint") else [])
    if taken:
        raise ValueError(f"remove {', '.join(taken)} from the DeepSpeed config: the recipe's AdamW and learning-rate "
                         "schedule (train.lr, train.warmup, train.lr_schedule) must be the ones that step")
    ds["train_micro_batch_size_per_gpu"] = micro_batch
    ds["gradient_accumulation_steps"] = 1
    ds["gradient_clipping"] = float(grad_clip)
    ds.pop("train_batch_size", None)  # derived by DeepSpeed from the two above and the world size


def mark_boundary(acc, engine, last: bool) -> None:
    """Mark whether this backward ends the optimiser step: accelerate (>= 1.8) sets the engine's accumulation
    boundary from its sync flag and steps inside ``backward`` only there; the engine's own flag is set too, so
    the boundary never depends on accelerate alone."""
    acc.gradient_state._set_sync_gradients(last)
    engine.set_gradient_accumulation_boundary(last)


def stale_shards(checkpoints: Path) -> list[Path]:
    """Shard folders a save interrupted (a crash between the ranks' writes and the checkpoint's rename)."""
    return sorted(checkpoints.glob(f".step-*.{DEEPSPEED_DIR}")) if checkpoints.is_dir() else []


def save_optimizer(engine, folder: Path, lora: bool) -> None:
    """Every rank writes its optimiser shard (collective: all ranks call it). The weights DeepSpeed stores
    alongside are a duplicate of the checkpoint's safetensors, minus frozen ones under LoRA."""
    engine.save_checkpoint(str(folder), tag=_TAG, exclude_frozen_parameters=lora)


def check_shards(folder: Path, world: int, what: str) -> None:
    """Every rank's shard is where rank 0 (saving) or every rank (resuming) can see it."""
    found = len(list((folder / _TAG).glob("zero_pp_rank_*_optim_states.pt")))
    if found == world:
        return
    if what == "save":
        raise CheckpointError(f"rank 0 sees {found} of {world} DeepSpeed optimiser shards in {folder}: DeepSpeed "
                              "checkpoints need a filesystem shared by all nodes (set output.dir on one)")
    raise CheckpointError(f"{folder.parent} holds the optimiser shards of {found} DeepSpeed ranks, this launch has "
                          f"{world}: resume with --num_processes {found}, or start a new run from its weights with "
                          "model.checkpoint")


def load_optimizer(engine, folder: Path, lora: bool) -> None:
    """Every rank reads its shard back (collective)."""
    path, _ = engine.load_checkpoint(str(folder), tag=_TAG, load_module_strict=not lora,
                                     load_optimizer_states=True, load_lr_scheduler_states=False)
    if path is None:
        raise CheckpointError(f"{folder} holds no DeepSpeed optimiser state: resume from another checkpoint")


def autocast_context(acc, mixed_precision: str) -> Callable[[], ContextManager]:
    """The autocast the loss runs under (the reference must match the policy's precision, or the gap reads as
    KL): accelerate's own, except under DeepSpeed, where accelerate runs with mixed precision off."""
    if not is_deepspeed(acc):
        return acc.autocast
    if mixed_precision == "bf16":
        return lambda: torch.autocast(acc.device.type, dtype=torch.bfloat16)
    return nullcontext


def autocast_forward(module: torch.nn.Module, autocast: Callable[[], ContextManager]) -> None:
    """Run ``module``'s forward under ``autocast`` with fp32 outputs: what accelerate's ``prepare`` does to a DDP
    model under mixed precision, so every loss (MaskFocus, Mask-GRPO, pretraining) sees the same precision."""
    from accelerate.utils import convert_outputs_to_fp32
    inner = module.forward.__func__  # a method bound again below, so a deepcopy of the module calls its own

    def forward(self, *args, **kwargs):
        with autocast():
            return inner(self, *args, **kwargs)

    module.forward = MethodType(convert_outputs_to_fp32(forward), module)
