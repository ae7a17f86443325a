"""Model specs (``shapes``, ``shapes:DIR``, ``amused:DIR`` …) → adapters.

The one place that turns what a user typed into a loaded model, so every
subcommand accepts the same specs and gives the same errors.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from maskfocus_cli.models.base import MaskedT2IAdapter

FAMILIES = ("shapes", "amused", "meissonic", "showo")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'family[:path]' → (family, path)."""
    family, _, path = spec.partition(":")
    family = family.strip().lower()
    if family not in FAMILIES:
        raise ValueError(f"unknown model spec {spec!r}: use one of shapes, shapes:DIR, amused:DIR, "
                         "meissonic:DIR, showo:DIR")
    return family, (path or None)


def absolute_spec(spec: str) -> str:
    """'family:relative/dir' → 'family:/absolute/dir' when the folder exists here (hub ids and the
    built-in model unchanged), so a record of it still points there from another working directory."""
    family, path = parse_spec(spec)
    if path and Path(path).expanduser().is_dir():
        return f"{family}:{Path(path).expanduser().resolve()}"
    return spec


def absolute_path(path: str | Path) -> str:
    """A local path made absolute (hub ids and tags unchanged), so a record of it still points there from
    another working directory."""
    p = Path(str(path)).expanduser()
    return str(p.resolve()) if p.exists() else str(path)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' → a usable device, or a ValueError the CLI shows in one line
    (the value comes from --device or a recipe's model.device, so the message names neither flag)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):  # torch's message lists every backend it was built with
        raise ValueError(f"device {device!r}: use auto | cpu | cuda | cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    return dev


def checkpoint_weights(checkpoint: str | Path) -> Path:
    """A training checkpoint folder (or a .safetensors file) → its transformer weights file."""
    p = Path(checkpoint)
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        raise ValueError(f"checkpoint not found: {checkpoint} (expected a checkpoint folder with "
                         "model.safetensors, e.g. runs/NAME/checkpoints/step-100)")
    return p


def load_model(spec: str = "shapes", checkpoint: str | Path | None = None, device: str = "auto",
               dtype: str = "fp32") -> MaskedT2IAdapter:
    """Load an adapter for ``spec``, optionally with fine-tuned weights from ``checkpoint``."""
    from maskfocus_cli.io.checkpoint import load_weights
    family, path = parse_spec(spec)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use fp32, bf16 or fp16")
    dev = resolve_device(device)
    if dev.type == "cpu" and dtype == "fp16":
        raise ValueError("--dtype fp16 is not supported on the CPU: use fp32 or bf16")
    if family == "shapes":
        from maskfocus_cli.models.shapes import load_shapes_model
        adapter = load_shapes_model(path)
    else:
        import importlib
        if path is None:
            raise ValueError(f"model spec {spec!r} names no folder: use {family}:PATH (the downloaded model "
                             f"folder or hub id) in --model or the recipe's model.spec")
        try:
            mod = importlib.import_module(f"maskfocus_cli.models.{family}")
        except ModuleNotFoundError:
            raise ValueError(f"--model {family}: this family is not supported in this version") from None
        adapter = mod.load(path, device=str(dev), dtype=DTYPES[dtype])
    if checkpoint is not None:
        weights = checkpoint_weights(checkpoint)
        if Path(checkpoint).is_dir():
            adapter.check_checkpoint(Path(checkpoint))
        load_weights(adapter.transformer, weights)
    nn.Module.to(adapter.transformer, dev, DTYPES[dtype])  # plain Module.to: no diffusers fp32-keep warning
    adapter.transformer.eval()
    adapter.transformer.requires_grad_(False)
    return adapter
