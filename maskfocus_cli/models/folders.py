"""Pretrained-folder plumbing shared by the real-model adapters (aMUSEd, Meissonic, Show-o).

All three ship as diffusers-style pipeline folders (one sub-folder per component).
This module turns a user's ``PATH_OR_ID`` into a local folder (a hub id only when
the network allows), checks the layout with a message that lists what was
expected, and reads component weights with strict key/shape checks, so a folder
of another architecture fails loudly instead of loading half-random weights.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from maskfocus_cli.io.checkpoint import read_json


HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ModelFolderError(ValueError):
    """A model folder (or hub id) the user named is missing, incomplete or of another model."""


def resolve_folder(path_or_id: str, family: str, expected: Iterable[str],
                   allow_patterns: list[str] | None = None) -> Path:
    """A local folder, or a hub snapshot when ``path_or_id`` is a hub id and the hub is reachable.

    ``expected`` lists the entries the folder must contain (checked by ``check_layout``).
    """
    expected = list(expected)
    p = Path(path_or_id).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelFolderError(f"--model {family}:{path_or_id} is a file; point to the model folder "
                                   f"(containing {', '.join(expected)})")
        return check_layout(p, family, expected)
    if not HUB_ID.match(path_or_id):
        raise ModelFolderError(f"--model {family}:{path_or_id}: no such folder (expected a folder containing "
                               f"{', '.join(expected)}, or a hub id such as owner/name)")
    try:
        from huggingface_hub import snapshot_download
        local = snapshot_download(path_or_id, allow_patterns=allow_patterns)
    except Exception as e:  # offline, unknown repo, gated, ... : all mean "give us a folder"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFolderError(f"--model {family}:{path_or_id}: not a local folder and the hub id could not "
                               f"be fetched ({first[:160]}); download it and pass the folder") from None
    return check_layout(Path(local), family, expected)


def check_layout(folder: Path, family: str, expected: Iterable[str]) -> Path:
    """Raise a ModelFolderError listing every missing entry of the expected layout."""
    expected = list(expected)
    missing = [e for e in expected if not (folder / e).exists()]
    if missing:
        raise ModelFolderError(f"{folder} is not a {family} model folder: missing {', '.join(missing)} "
                               f"(expected {', '.join(expected)})")
    return folder


def read_config(path: Path) -> dict:
    return read_json(path, ModelFolderError)


def expect_class(config: dict, path: Path, wanted: str | tuple[str, ...], family: str,
                 key: str = "_class_name") -> None:
    """The component config names the class we are about to build, or a clear error."""
    wanted = (wanted,) if isinstance(wanted, str) else wanted
    got = config.get(key)
    if isinstance(got, list):  # transformers' "architectures"
        got = got[0] if got else None
    if got not in wanted:
        raise ModelFolderError(f"{path} describes a {got or 'model of unknown class'}, not the "
                               f"{' / '.join(wanted)} a {family} model needs (is this a checkpoint of "
                               "another architecture?)")


def weight_variant(component: Path, stem: str) -> str | None:
    """The variant (``fp16`` of ``STEM.fp16.safetensors``) to ask ``from_pretrained`` for when a component holds
    only variant weights, else None (plain or sharded weights, or nothing: from_pretrained then says so)."""
    if (component / f"{stem}.safetensors").is_file() or (component / f"{stem}.safetensors.index.json").is_file():
        return None
    # STEM.fp16.safetensors, STEM.fp16-00001-of-00002.safetensors, STEM.safetensors.index.fp16.json
    pattern = re.compile(rf"^{re.escape(stem)}\."
                         r"(?:([^.-]+)(?:-\d+-of-\d+)?\.safetensors|safetensors\.index\.([^.]+)\.json)$")
    for p in sorted(component.iterdir()) if component.is_dir() else []:
        m = pattern.match(p.name)
        if m:
            return m.group(1) or m.group(2)
    return None


def load_component(what: str, folder: Path, load, **kwargs):
    """``load(folder, **kwargs)`` (a ``from_pretrained``) with its failures as one line naming the component:
    diffusers / transformers raise OSError, ValueError or worse for a missing or broken file."""
    try:
        return load(folder, **kwargs)
    except ModelFolderError:
        raise
    except (OSError, ValueError, OverflowError, KeyError) as e:  # what a missing or broken file raises
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelFolderError(f"{folder}: cannot load the {what} ({type(e).__name__}: {first}); the pipeline "
                               "folder is incomplete or broken — download that component again") from None


def weight_files(component: Path, stem: str) -> list[Path]:
    """Safetensors files of a component: single file, sharded index, or (fallback) a variant."""
    single = component / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    index = component / f"{stem}.safetensors.index.json"
    if index.is_file():
        names = sorted(set(read_config(index).get("weight_map", {}).values()))
        return [component / n for n in names]
    variants = sorted(component.glob(f"{stem}.*.safetensors"))
    if variants:
        return variants[:1]
    raise ModelFolderError(f"{component} has no weights (expected {stem}.safetensors or a sharded "
                           f"{stem}.safetensors.index.json)")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    if not Path(path).is_file():
        raise ModelFolderError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error type, OSError or RuntimeError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelFolderError(f"{path} is not a readable safetensors file ({first})") from None


def save_folder_atomically(final: Path, fill) -> None:
    """Build a folder under a temp name next to ``final`` and rename it into place."""
    import os
    import shutil
    import tempfile
    final = Path(final)
    if final.exists() and any(final.iterdir()):
        raise ValueError(f"{final} already exists and is not empty: choose a new output folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        fill(tmp)
        if final.exists():
            final.rmdir()
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_state_strict(module: nn.Module, files: list[Path]) -> None:
    """Load safetensors files into ``module``; every key and shape must match exactly."""
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(read_safetensors(f))
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[0]})")
        if bad:
            parts.append(f"shape mismatch for {bad[0]}: file {tuple(state[bad[0]].shape)} vs "
                         f"model {tuple(own[bad[0]].shape)}")
        raise ModelFolderError(f"{files[0].parent} does not fit the architecture in its config.json: "
                               f"{'; '.join(parts)} (is it a checkpoint of another architecture?)")
    # assign: the module may have been built on the meta device (no memory for random init)
    module.load_state_dict(state, strict=True, assign=True)


def check_device_dtype(device: str, dtype: torch.dtype) -> None:
    """fp16 matmuls are not implemented on the CPU: fail before loading gigabytes."""
    if torch.device(device).type == "cpu" and dtype == torch.float16:
        raise ValueError("float16 is not supported on the CPU: use --dtype fp32 or bf16 (or a CUDA --device)")
