"""Prompt sources for training and evaluation: ``shapes:SPLIT``, .txt, GenEval .jsonl."""

from __future__ import annotations

import json
from pathlib import Path


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
    for i, line in enumerate(path.read_text().splitlines(), 1):
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
        raise ValueError(f"{source} holds no prompts")
    return rows
