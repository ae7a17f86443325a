"""Official on-disk layouts of benchmark images, so our folders feed the official scorers and back.

GenEval (README of djghosh13/geneval)::

    OUT/00000/metadata.jsonl      the prompt's metadata row (one JSON object)
    OUT/00000/samples/0000.png    its images (the official scorer accepts any ``\\d+.png``)

T2I-CompBench (GORS_finetune/inference_eval.py)::

    OUT/samples/{prompt}_{idx:06}.png   idx is a running image counter over the whole run;
                                        the official scorers recover the prompt from the file name.

Every write goes to a temp file in the same folder and is moved into place with
os.replace, so an interrupted run never leaves a truncated PNG or metadata file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from maskfocus_cli.io.checkpoint import atomic_write_bytes
from maskfocus_cli.io.images import load_image, save_png, to_pil  # noqa: F401  (re-exported for the runners)

from .prompts import validate_geneval_row

_DIGITS_PNG = re.compile(r"^(\d+)\.png$")
_T2I_PNG = re.compile(r"^(.+)_(\d+)\.png$")
_PROMPT_DIR = re.compile(r"^[0-9]+$")


# ---------------------------------------------------------------- GenEval

def geneval_prompt_dir(out: str | Path, index: int) -> Path:
    return Path(out) / f"{index:05d}"


def geneval_sample_path(out: str | Path, index: int, sample: int) -> Path:
    return geneval_prompt_dir(out, index) / "samples" / f"{sample:04d}.png"


def write_geneval_metadata(out: str | Path, index: int, metadata: dict) -> Path:
    """Write OUT/<index:05>/metadata.jsonl holding the prompt's metadata row."""
    path = geneval_prompt_dir(out, index) / "metadata.jsonl"
    atomic_write_bytes(path, (json.dumps(metadata) + "\n").encode("utf-8"))
    return path


def write_geneval_sample(out: str | Path, index: int, sample: int,
                         image: torch.Tensor | Image.Image) -> Path:
    return save_png(image, geneval_sample_path(out, index, sample))


@dataclass(frozen=True)
class GenEvalPrompt:
    """One prompt folder of a GenEval images dir."""

    index: int
    metadata: dict
    images: tuple[Path, ...]  #: sorted by sample number


def _geneval_layout_error(root: Path, detail: str) -> ValueError:
    return ValueError(f"images folder is not in GenEval layout: expected 00000/metadata.jsonl and "
                      f"00000/samples/0000.png under {root} ({detail})")


def scan_geneval(images_dir: str | Path) -> list[GenEvalPrompt]:
    """Read back a GenEval images folder, validating its layout and every metadata file."""
    root = Path(images_dir)
    if not root.is_dir():
        raise ValueError(f"images folder not found: {root}")
    prompt_dirs = sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()),
                         key=lambda p: int(p.name))
    if not prompt_dirs:
        raise _geneval_layout_error(root, "no numbered prompt folders")
    items: list[GenEvalPrompt] = []
    for d in prompt_dirs:
        meta_path = d / "metadata.jsonl"
        if not meta_path.is_file():
            raise _geneval_layout_error(root, f"{meta_path} is missing")
        text = meta_path.read_text(encoding="utf-8").strip()
        try:
            # Official writer uses json.dump (one object, maybe no newline); a JSONL line is the same thing.
            metadata = json.loads(text.splitlines()[0] if text else "")
        except (json.JSONDecodeError, IndexError) as e:
            raise ValueError(f"{meta_path}: invalid GenEval metadata ({e}): it must hold one JSON object (tag, "
                             "include, prompt), as `maskfocus sample --layout geneval` writes it") from None
        if isinstance(metadata, dict) and set(metadata) == {"prompt"}:
            raise ValueError(f"{meta_path}: holds only a prompt, not GenEval metadata (tag, include): write the "
                             f"images with `maskfocus sample --prompts FILE.jsonl --layout geneval` from GenEval "
                             f"metadata rows, or with shapes-world prompts such as 'a photo of a red circle'")
        try:
            validate_geneval_row(metadata)
        except ValueError as e:
            raise ValueError(f"{meta_path}: invalid GenEval metadata ({e})") from None
        sample_dir = d / "samples"
        pngs = sorted(((int(m.group(1)), p) for p in (sample_dir.iterdir() if sample_dir.is_dir() else [])
                       if (m := _DIGITS_PNG.match(p.name)) and p.is_file()), key=lambda t: t[0])
        if not pngs:
            raise _geneval_layout_error(root, f"no samples/<number>.png in {d}")
        items.append(GenEvalPrompt(int(d.name), metadata, tuple(p for _, p in pngs)))
    return items


def geneval_run_files(root: str | Path) -> list[Path]:
    """The files a GenEval-layout writer puts under ``root``: <number>/metadata.jsonl and
    <number>/samples/<number>.png (nothing else in those folders is ours)."""
    root = Path(root)
    files: list[Path] = []
    if not root.is_dir():
        return files
    for d in sorted(p for p in root.iterdir() if _PROMPT_DIR.match(p.name) and p.is_dir()):
        if (d / "metadata.jsonl").is_file():
            files.append(d / "metadata.jsonl")
        if (d / "samples").is_dir():
            files += sorted(p for p in (d / "samples").iterdir() if _DIGITS_PNG.match(p.name) and p.is_file())
    return files


def remove_run_files(root: str | Path, files: list[Path]) -> None:
    """Delete ``files`` (under ``root``), then the folders below ``root`` they leave empty; a folder that
    still holds anything else (a file the user put there) stays with it."""
    root = Path(root)
    folders: set[Path] = set()
    for f in files:
        f.unlink(missing_ok=True)
        folders.update(p for p in f.parents if root in p.parents)
    for d in sorted(folders, key=lambda p: len(p.parts), reverse=True):  # deepest first
        try:
            d.rmdir()
        except OSError:
            pass  # not empty: keep it


# ---------------------------------------------------------------- T2I-CompBench

def t2i_sample_path(out: str | Path, prompt: str, idx: int) -> Path:
    if "/" in prompt or "\0" in prompt or os.sep in prompt:
        raise ValueError(f"prompt cannot be a T2I-CompBench file name (contains a path separator): {prompt!r}")
    return Path(out) / "samples" / f"{prompt}_{idx:06d}.png"


def write_t2i_sample(out: str | Path, prompt: str, idx: int, image: torch.Tensor | Image.Image) -> Path:
    return save_png(image, t2i_sample_path(out, prompt, idx))


@dataclass(frozen=True)
class T2ISample:
    idx: int
    prompt: str
    path: Path


def t2i_run_files(root: str | Path, categories: tuple[str, ...]) -> list[Path]:
    """The files a T2I-CompBench writer puts under ``root``: <category>/samples/{prompt}_{idx}.png."""
    files: list[Path] = []
    for c in categories:
        d = Path(root) / c / "samples"
        if d.is_dir():
            files += sorted(p for p in d.iterdir() if _T2I_PNG.match(p.name) and p.is_file())
    return files


def scan_t2i_compbench(images_dir: str | Path) -> list[T2ISample]:
    """Read back OUT/samples/{prompt}_{idx:06}.png (or the samples folder itself), sorted by idx.

    The prompt is everything before the last '_' (the official scripts split at the
    first '_', which is the same for every official prompt: none contains '_').
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise ValueError(f"images folder not found: {root}")
    sample_dir = root / "samples" if (root / "samples").is_dir() else root
    samples: dict[int, T2ISample] = {}
    for p in sample_dir.iterdir():
        if not p.is_file() or p.suffix.lower() != ".png":
            continue
        m = _T2I_PNG.match(p.name)
        if not m:
            raise ValueError(f"images folder is not in T2I-CompBench layout: {p.name} does not match "
                             f"samples/{{prompt}}_{{idx:06}}.png")
        idx = int(m.group(2))
        if idx in samples:
            raise ValueError(f"images folder has two images with index {idx}: {samples[idx].path.name} "
                             f"and {p.name}")
        samples[idx] = T2ISample(idx, m.group(1), p)
    if not samples:
        raise ValueError(f"images folder is not in T2I-CompBench layout: expected samples/{{prompt}}_"
                         f"{{idx:06}}.png under {root}")
    return [samples[i] for i in sorted(samples)]
