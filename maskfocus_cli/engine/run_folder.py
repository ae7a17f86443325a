"""What a run folder holds and the rules for continuing one.

OUT/checkpoints/step-N (each with trainer.json), OUT/abandoned/ (what a rewind or a restart set aside, never
deleted), and which recipe changes a resumed run may make: where and how long it runs, never what it computes.
"""

from __future__ import annotations

from pathlib import Path

from maskfocus_cli.config import flatten
from maskfocus_cli.io.checkpoint import CheckpointError


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")
             and p.name[5:].isdigit() and (p / "trainer.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def set_aside_later_checkpoints(run_dir: Path, ckpt: Path) -> list[Path]:
    """Rewinding a run to its own ``ckpt``: move the checkpoints after it to OUT/abandoned/ (kept, never
    deleted), so ``--resume latest`` cannot jump back onto the abandoned branch. Returns the new paths."""
    step = int(ckpt.name[5:])
    return [set_aside(d, run_dir) for d in checkpoint_dirs(run_dir) if int(d.name[5:]) > step]


def stale_checkpoints(dirs: list[Path], keep_last: int) -> list[Path]:
    """The oldest of ``dirs`` (sorted by step) beyond the newest ``keep_last``; 0 keeps every one
    (a held-out curve over the run needs them all: scripts/heldout_curve.py)."""
    return dirs[:-keep_last] if keep_last > 0 else []


def find_resume(run_dir: Path, resume: str | None) -> Path | None:
    """--resume latest|PATH → checkpoint folder (None = fresh run)."""
    if resume is None:
        return None
    if resume == "latest":
        found = checkpoint_dirs(run_dir)
        return found[-1] if found else None
    p = Path(resume)
    if not (p / "trainer.json").is_file():
        raise CheckpointError(f"--resume {resume}: not a training checkpoint (no trainer.json inside); "
                              "use --resume latest or a runs/NAME/checkpoints/step-N folder")
    return p


#: recipe keys a resumed run may change: how long and where it runs and what it writes, never what it computes
RESUME_FREE = ("train.iterations", "train.time_budget_minutes", "output.", "model.device", "data.eval_prompts",
               "data.num_eval_prompts", "data.num_validation_prompts", "eval_sampler")


#: reward options that say where and how patiently to ask, not what is scored: a reward server may move
#: (another host after pre-emption) between a run and its resume
REWARD_TRANSPORT = {"http": ("url", "timeout", "retries", "backoff")}


def _scored(recipe: dict) -> dict:
    """The recipe without reward transport options (see ``REWARD_TRANSPORT``)."""
    rewards = []
    for r in recipe.get("rewards") or ():
        if isinstance(r, dict) and r.get("name") in REWARD_TRANSPORT and isinstance(r.get("options"), dict):
            free = REWARD_TRANSPORT[r["name"]]
            r = {**r, "options": {k: v for k, v in r["options"].items() if k not in free}}
        rewards.append(r)
    return {**recipe, "rewards": rewards} if "rewards" in recipe else recipe


#: sampler fields that may be null in a recipe: the model family's own value (``models/sampler_defaults.py``)
FAMILY_FIELDS = ("steps", "guidance_scale", "gumbel_temperature", "negative_prompt")


def _sampled(recipe: dict) -> dict:
    """The recipe with null sampler fields as the run samples them: ``sampler`` from the model family,
    ``eval_sampler`` from ``sampler``. A run saved with explicit values (or before the fields could be null)
    then compares equal to the same settings left null."""
    from maskfocus_cli.engine.settings import with_added_fields
    from maskfocus_cli.models.sampler_defaults import family_sampler
    try:
        family = family_sampler(str((recipe.get("model") or {}).get("spec", "shapes")))
    except ValueError:
        return recipe
    sampler = with_added_fields(recipe.get("sampler") or {})  # absent: an earlier version's run
    for key in FAMILY_FIELDS:
        if sampler.get(key) is None:
            sampler[key] = getattr(family, key)
    out = {**recipe, "sampler": sampler}
    if isinstance(recipe.get("eval_sampler"), dict):
        ev = with_added_fields(recipe["eval_sampler"])
        out["eval_sampler"] = {**ev, **{k: sampler[k] for k in FAMILY_FIELDS if ev.get(k) is None}}
    return out


def recipe_changes(saved: dict, now: dict) -> list[str]:
    """'key: saved → now' for every field that differs and would change what a resumed run computes."""
    from maskfocus_cli.config import Recipe, to_dict
    # a field added after the run was saved: the run computed with its default (sampler fields: ``_sampled``)
    defaults = {k: v for k, v in flatten(to_dict(Recipe())).items() if not k.startswith(("sampler", "eval_sampler"))}
    a, b = ({**defaults, **flatten(_scored(_sampled(r)))} for r in (saved, now))
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not k.startswith(RESUME_FREE))
    return [f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in keys]


def inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def holds_run(run_dir: Path) -> bool:
    """A run folder with checkpoints: a fresh run there would overwrite and mix them. (Metrics without a
    checkpoint are a run that died before its first one: nothing to resume, so they are set aside.)"""
    return bool(checkpoint_dirs(run_dir))


def set_aside(path: Path, run_dir: Path) -> Path:
    """Move ``path`` to OUT/abandoned/ under a free name (kept, never deleted)."""
    dest = run_dir / "abandoned" / path.name
    k = 1
    while dest.exists():
        k += 1
        dest = run_dir / "abandoned" / f"{path.stem}-{k}{path.suffix}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    path.rename(dest)
    return dest
