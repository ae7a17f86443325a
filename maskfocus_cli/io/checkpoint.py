"""Atomic, safetensors-based persistence: weights, JSON, and training checkpoints.

Nothing a user made is ever lost: every file is written to a temp name in the same
folder and renamed into place, and a checkpoint folder is assembled under a temp
name and renamed as a whole, so a crash leaves either the old or the new version.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn


_UMASK = os.umask(0)
os.umask(_UMASK)


class CheckpointError(ValueError):
    """A checkpoint/weights file the user pointed at is missing or unreadable."""


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should look like any other file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    def w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    _atomic(Path(path), w)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | Path, error: type[Exception] = CheckpointError) -> dict:
    """A JSON object file, or ``error`` (a one-line user error) naming the file and what is wrong with it."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"missing file {path}") from None
    except UnicodeDecodeError:
        raise error(f"{path} is not a text file (damaged?)") from None
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise error(f"{path} holds a JSON {type(data).__name__ if data is not None else 'null'}, not an object "
                    "(damaged?)")
    return data


#: trainer.json fields → (accepted types, required): what readers of a checkpoint may rely on
TRAINER_FIELDS = {"iteration": (int, True), "algorithm": (str, False), "model": (str, False),
                  "elapsed_seconds": ((int, float), False), "recipe": (dict, False), "sampler": (dict, False),
                  "eval_sampler": (dict, False), "last_metrics": (dict, False)}


def read_trainer_info(ckpt: str | Path) -> dict:
    """A checkpoint's trainer.json, checked field by field, so a damaged one is a one-line error naming the
    field instead of a crash (or, worse, a resume from a nonsense iteration)."""
    path = Path(ckpt) / "trainer.json"
    info = read_json(path)
    for key, (types, required) in TRAINER_FIELDS.items():
        if key not in info:
            if required:
                raise CheckpointError(f"{path} has no {key!r} (damaged?): use another checkpoint")
            continue
        value = info[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise CheckpointError(f"{path}: {key!r} is {value!r}, not a {_type_names(types)} (damaged?): use "
                                  "another checkpoint")
    for section, value in (info.get("recipe") or {}).items():  # the recipe's sections: mappings (rewards: a list)
        if not isinstance(value, list if section == "rewards" else (dict, type(None))):
            raise CheckpointError(f"{path}: the recorded recipe's {section!r} is {value!r} (damaged?): use another "
                                  "checkpoint")
    if info["iteration"] < 0:
        raise CheckpointError(f"{path}: 'iteration' is {info['iteration']}, below 0 (damaged?): use another "
                              "checkpoint")
    from maskfocus_cli.config import TrainConfig
    if info.get("algorithm", "maskfocus") not in TrainConfig.__dataclass_fields__["algorithm"].metadata["choices"]:
        raise CheckpointError(f"{path}: unknown algorithm {info['algorithm']!r} (damaged?): use another checkpoint")
    return info


def _type_names(types) -> str:
    names = {int: "whole number", float: "number", str: "string", dict: "JSON object"}
    return " or ".join(names[t] for t in (types if isinstance(types, tuple) else (types,)))


def save_weights(state: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    _atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]}); "
                              "re-export it or point to another checkpoint") from None


def load_weights(module: nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load safetensors into a module with strict key/shape checks and a readable error."""
    state = read_weights(path)
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if strict and (missing or unexpected or bad_shape):
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[0]})")
        if bad_shape:
            k = bad_shape[0]
            parts.append(f"shape mismatch for {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise CheckpointError(f"{path} does not fit this model: {'; '.join(parts)} "
                              "(is it a checkpoint of another architecture?)")
    module.load_state_dict(state, strict=strict)


def atomic_dir(final: Path, fill) -> None:
    """Create folder ``final`` atomically: build it under a temp name, then rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        fill(tmp)
        os.chmod(tmp, 0o777 & ~_UMASK)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
