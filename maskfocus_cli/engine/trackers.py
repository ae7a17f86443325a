"""Experiment trackers (TensorBoard, W&B, MLflow, ...) through accelerate's tracking API.

``metrics.jsonl`` stays the run's record; a tracker gets the same rows as flat scalars (``reward/mean``,
``components/clip/mean``, ``time/rollout``, ...) at step = iteration, the recipe as its configuration and
each sample grid as an image, so runs on a cluster can be watched and compared in the tools people already
use. The trackers' own packages are the user's choice: none is a dependency.
"""

from __future__ import annotations

import importlib.util
import json
import math
import uuid
from pathlib import Path

#: the run's tracker identity (W&B run id), kept so a resumed run continues the same tracker run
ID_FILE = "tracker.json"


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def check_trackers(names: tuple) -> None:
    """An uninstalled tracker is a clear error before the run starts: accelerate would drop it with a debug
    message, and a day of training would go unwatched. (Each of ``config.TRACKERS`` is its package's name.)"""
    for name in names:
        if not installed(name):
            raise ValueError(f"output.log_with: {name} is not installed (pip install {name}), or drop it from "
                             "output.log_with")


def scalars(row: dict, prefix: str = "") -> dict[str, float]:
    """A metrics row → ``a/b/c`` numeric leaves; lists (the chosen steps) and nulls are left to metrics.jsonl,
    and so are non-finite numbers, which some trackers refuse."""
    out: dict[str, float] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, f"{name}/"))
        elif isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            out[name] = value
    return out


def hyperparameters(recipe: dict) -> dict:
    """The recipe as flat ``section/field`` values that every tracker accepts (lists, dicts and nulls as
    JSON text)."""
    from maskfocus_cli.config import flatten
    return {k.replace(".", "/"): v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
            for k, v in flatten(recipe).items()}


def run_id(run_dir: Path, fresh: bool) -> str:
    """The tracker run id of this run folder: new for a fresh run, the saved one for a resume (a resume
    continues the W&B run instead of opening a second one). Main process only."""
    path = run_dir / ID_FILE
    if not fresh and path.is_file():
        try:
            return str(json.loads(path.read_text())["run_id"])
        except (ValueError, KeyError, TypeError):
            pass  # a damaged file: a new tracker run, the training itself is unaffected
    rid = uuid.uuid4().hex[:12]
    from maskfocus_cli.io.checkpoint import atomic_write_json
    atomic_write_json(path, {"run_id": rid})
    return rid


def start(acc, names: tuple, project: str, recipe: dict, run_dir: Path, fresh: bool) -> None:
    """Open the trackers on the main process (accelerate's ``init_trackers`` is main-process only)."""
    if not names or not acc.is_main_process:
        return
    rid = run_id(run_dir, fresh)
    init = {"wandb": {"id": rid, "resume": "allow", "name": run_dir.name}} if "wandb" in names else {}
    acc.init_trackers(project, config=hyperparameters(recipe), init_kwargs=init)


def log_row(acc, row: dict, step: int) -> None:
    if acc.trackers:
        acc.log(scalars(row), step=step)


def log_image(acc, name: str, path: Path | None, step: int) -> None:
    """A sample grid to the trackers whose image call takes it in a known form (TensorBoard: an NHWC batch;
    W&B and SwanLab: a list of images); the others keep the grid in OUT/samples/ only."""
    if not acc.trackers or path is None:
        return
    import numpy as np
    from PIL import Image
    image = np.asarray(Image.open(path).convert("RGB"))
    for tracker in acc.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({name: image[None]}, step=step, dataformats="NHWC")
        elif tracker.name in ("wandb", "swanlab"):
            tracker.log_images({name: [image]}, step=step)
