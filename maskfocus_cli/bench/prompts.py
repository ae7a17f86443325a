"""Benchmark prompt files: GenEval metadata (JSONL) and T2I-CompBench prompt lists.

The project ships no copy of either file (licence hygiene and DESIGN.md §4): the
user passes a path, or we use a cached copy of the official file, downloading it
once from the official repository when the network allows. Every malformed row
is reported with file and line number, because a silently skipped prompt
changes a benchmark score without anyone noticing.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from maskfocus_cli.engine.data import read_utf8

GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
#: GenEval's colour vocabulary, in the order of its evaluate_images.py (CLIP zero-shot classes).
GENEVAL_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
GENEVAL_RELATIONS = ("left of", "right of", "above", "below")
T2I_COMPBENCH_CATEGORIES = ("color", "shape", "texture", "spatial", "3d_spatial", "non_spatial",
                            "numeracy", "complex")

GENEVAL_URL = "https://raw.githubusercontent.com/djghosh13/geneval/main/prompts/evaluation_metadata.jsonl"
#: where the official GenEval metadata is cached, under ``cache_dir()``
GENEVAL_CACHED = "geneval/evaluation_metadata.jsonl"
T2I_COMPBENCH_URL = ("https://raw.githubusercontent.com/Karine-Huang/T2I-CompBench/main/"
                     "examples/dataset/{name}.txt")
DOWNLOAD_TIMEOUT_S = 10.0

_CLAUSE_KEYS = {"include": {"class", "count", "color", "position"}, "exclude": {"class", "count"}}


def cache_dir() -> Path:
    """Folder holding cached official benchmark files: $MASKFOCUS_CACHE/benchmarks or ~/.cache/maskfocus/benchmarks."""
    root = os.environ.get("MASKFOCUS_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "maskfocus"
    return base / "benchmarks"


def _download(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Fetch ``url`` to ``dest`` atomically (tests monkeypatch this: they never touch the network)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (fixed https URLs)
        data = resp.read()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_benchmark_file(relpath: str, url: str, option: str) -> Path:
    """Return the cached copy of an official file, downloading it on first use.

    ``option`` names the CLI flag that bypasses the cache, so the error tells the
    user both fixes (place the file by hand, or point the flag at a copy).
    """
    dest = cache_dir() / relpath
    if dest.is_file():
        return dest
    try:
        _download(url, dest)
    except Exception as e:  # network errors come in many types (URLError, timeout, OSError, HTTPError)
        raise ValueError(
            f"could not download {url} ({type(e).__name__}: {e}); download it by hand to {dest} "
            f"or pass {option} PATH") from e
    return dest


# ---------------------------------------------------------------- GenEval

def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def validate_geneval_row(row: object, colors: Sequence[str] | None = None) -> None:
    """Raise ValueError describing the first problem with one GenEval metadata row."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    tag = row.get("tag")
    if tag not in GENEVAL_TAGS:
        raise ValueError(f"'tag' must be one of {', '.join(GENEVAL_TAGS)}, got {tag!r}")
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("'prompt' must be a non-empty string")
    include = row.get("include")
    if not isinstance(include, list) or not include:
        raise ValueError("'include' must be a non-empty list of clauses")
    for key in ("include", "exclude"):
        clauses = row.get(key, [])
        if not isinstance(clauses, list):
            raise ValueError(f"'{key}' must be a list of clauses")
        for i, clause in enumerate(clauses):
            where = f"{key}[{i}]"
            if not isinstance(clause, dict):
                raise ValueError(f"{where} must be an object")
            unknown = set(clause) - _CLAUSE_KEYS[key]
            if unknown:
                raise ValueError(f"{where} has unknown key(s) {sorted(unknown)}; "
                                 f"allowed: {sorted(_CLAUSE_KEYS[key])}")
            if not isinstance(clause.get("class"), str) or not clause["class"].strip():
                raise ValueError(f"{where}.class must be a non-empty string")
            if not _is_count(clause.get("count")):
                raise ValueError(f"{where}.count must be an integer >= 1, got {clause.get('count')!r}")
            if "color" in clause:
                c = clause["color"]
                if not isinstance(c, str) or (colors is not None and c not in colors):
                    allowed = f" (one of {', '.join(colors)})" if colors is not None else ""
                    raise ValueError(f"{where}.color must be a colour name{allowed}, got {c!r}")
            if "position" in clause:
                pos = clause["position"]
                if (not isinstance(pos, list) or len(pos) != 2 or pos[0] not in GENEVAL_RELATIONS
                        or not isinstance(pos[1], int) or isinstance(pos[1], bool)):
                    raise ValueError(f"{where}.position must be [relation, clause index] with relation in "
                                     f"{list(GENEVAL_RELATIONS)}, got {pos!r}")
                if not 0 <= pos[1] < i:
                    raise ValueError(f"{where}.position refers to include[{pos[1]}], which must be an "
                                     f"earlier include clause")


def load_geneval_metadata(path: str | Path | None = None,
                          colors: Sequence[str] | None = None) -> list[dict]:
    """Read GenEval's evaluation_metadata.jsonl (one prompt per line) and validate every row.

    Without ``path`` the cached official file is used (downloaded on first use).
    ``colors``, when given, restricts ``include[].color`` to that vocabulary.
    """
    if path is None:
        path = cached_benchmark_file(GENEVAL_CACHED, GENEVAL_URL, "--metadata")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"GenEval metadata file not found: {path}; pass --metadata PATH to an "
                         f"evaluation_metadata.jsonl")
    rows: list[dict] = []
    for lineno, line in enumerate(read_utf8(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        try:
            validate_geneval_row(row, colors)
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no prompts found (expected one JSON object per line)")
    return rows


# ---------------------------------------------------------------- T2I-CompBench

def _read_prompt_lines(path: Path) -> list[str]:
    # Official readers take the part before a tab and strip the newline; blank lines carry no prompt.
    lines = read_utf8(path).splitlines()
    prompts = [ln.split("\t")[0].strip() for ln in lines]
    return [p for p in prompts if p]


def load_t2i_compbench(category: str, path: str | Path | None = None) -> list[str]:
    """Prompts of one T2I-CompBench category (``{category}_val.txt``, one prompt per line)."""
    if category not in T2I_COMPBENCH_CATEGORIES:
        raise ValueError(f"unknown T2I-CompBench category {category!r}; choose one of "
                         f"{', '.join(T2I_COMPBENCH_CATEGORIES)}")
    if path is None:
        name = f"{category}_val"
        path = cached_benchmark_file(f"t2i-compbench/{name}.txt", T2I_COMPBENCH_URL.format(name=name),
                                     "--prompts")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"T2I-CompBench prompt file not found: {path}; pass --prompts PATH to a "
                         f"{category}_val.txt")
    prompts = _read_prompt_lines(path)
    if not prompts:
        raise ValueError(f"{path}: no prompts found (expected one prompt per line)")
    return prompts


def complex_prompt_key(prompt: str) -> str:
    """How the official 3-in-1 script matches complex prompts across files: text before the first '.', lowercased."""
    return prompt.strip().split(".")[0].lower()


def load_complex_kinds(spatial_path: str | Path | None = None,
                       action_path: str | Path | None = None) -> dict[str, str]:
    """Map complex prompts (by :func:`complex_prompt_key`) to 'spatial' or 'action'.

    The official 3-in-1 averages BLIP-VQA with the spatial score for prompts in
    complex_val_spatial.txt, with CLIPScore for complex_val_action.txt, and all
    three for the rest; prompts absent from the map get the three-way mean.
    """
    kinds: dict[str, str] = {}
    for kind, p in (("action", action_path), ("spatial", spatial_path)):  # spatial wins, as officially
        name = f"complex_val_{kind}"
        if p is None:
            p = cached_benchmark_file(f"t2i-compbench/{name}.txt", T2I_COMPBENCH_URL.format(name=name),
                                      f"--complex-{kind}")
        p = Path(p)
        if not p.is_file():
            raise ValueError(f"file not found: {p}; pass --complex-{kind} PATH to a {name}.txt")
        for prompt in _read_prompt_lines(p):
            kinds[complex_prompt_key(prompt)] = kind
    return kinds
