"""Prompt sources for training and evaluation: ``shapes:SPLIT``, .txt, GenEval .jsonl."""

from __future__ import annotations

import json
from pathlib import Path


def read_utf8(path: str | Path, option: str = "") -> str:
    """The text of a UTF-8 file, without the byte-order mark Windows editors put first (it would
    glue itself to the first prompt's first word); any other encoding is a one-line user error naming
    the file (a bare UnicodeDecodeError does not say which file is wrong)."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        name = f"{option} {path}" if option else str(path)
        raise ValueError(f"{name} is not UTF-8 text (save it as UTF-8)") from None


def load_prompt_source(source: str) -> list[tuple[str, dict | None]]:
    """(prompt, metadata-or-None) pairs from a source string.

    ``shapes:train`` / ``shapes:heldout``: the shapes world's GenEval-style prompt split,
    600 rows balanced over the six tags;
    ``*.jsonl``: GenEval metadata rows (``prompt`` + clauses); anything else: one prompt a line.
    """
    if source.startswith("shapes:"):
        from maskfocus_cli.shapes import world
        split = source.split(":", 1)[1]
        if split not in ("train", "heldout"):
            raise ValueError(f"prompt source {source!r}: use shapes:train or shapes:heldout")
        # tag-balanced (the raw split is mostly colour-attribution prompts), fixed order
        return [(r["prompt"], r) for r in world.make_metadata(600, seed=0, split=split)]
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"prompt file not found: {source} (give a .txt with one prompt per line, a GenEval "
                         ".jsonl, or shapes:train)")
    rows: list[tuple[str, dict | None]] = []
    for i, line in enumerate(read_utf8(path).splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if path.suffix == ".jsonl" or line.startswith("{"):
            try:
                row = json.loads(line)
                rows.append((str(row["prompt"]), row))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{source} line {i}: not a JSON object with a 'prompt' field") from None
        else:
            rows.append((line, None))
    if not rows:
        raise ValueError(f"{source} holds no prompts: write one prompt per line (or GenEval metadata rows in a "
                         ".jsonl)")
    return rows


def distinct_prompts(source: str, limit: int) -> list[tuple[str, dict | None]]:
    """The first ``limit`` distinct prompts of a source (shapes:heldout repeats prompts to balance its tags: a
    grid row twice says nothing new), for sample grids and validation."""
    rows, seen = [], set()
    for p, m in load_prompt_source(source):
        if p not in seen and len(rows) < limit:
            seen.add(p)
            rows.append((p, m))
    return rows


def prompt_weights(rows: list[tuple[str, dict | None]], tag_weights: dict,
                   source: str = "the prompt source") -> list[float] | None:
    """Per-prompt draw weights from ``data.tag_weights`` (None = uniform, the default).

    A curriculum knob: spend rollouts on the skills that are still failing (an image of a
    prompt the model already always gets right is a zero-variance group, i.e. no signal).
    Tags not named weigh 1; naming a tag the source does not have is an error, so a
    typo cannot silently leave the mix uniform.
    """
    if not tag_weights:
        return None
    present = {(m or {}).get("tag") for _, m in rows} - {None}
    unknown = sorted(set(tag_weights) - present)
    if unknown:
        raise ValueError(f"data.tag_weights names tag(s) {unknown} that {source} does not have "
                         f"(its tags: {sorted(present) or 'none'})")
    for tag, w in tag_weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0 or w == float("inf"):
            raise ValueError(f"data.tag_weights.{tag} = {w!r}: give a finite number >= 0")
    weights = [float(tag_weights.get((m or {}).get("tag"), 1.0)) for _, m in rows]
    if not any(weights):
        raise ValueError("data.tag_weights gives every training prompt weight 0: leave at least one tag above 0")
    return weights
