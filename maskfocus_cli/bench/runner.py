"""Benchmark runs: generate (or read) images in the official layout, score them in batches, resume.

Two modes per benchmark, one scoring path:

* generate-and-score: prompts × seeds → images through ``engine.generate``,
  written in the official layout and scored straight from memory (after the same
  8-bit rounding a PNG applies, so re-scoring the written files gives the same
  numbers);
* score-only: read an images folder in the official layout (made by any tool)
  and score it.

Every scored image is appended to ``OUT/results.jsonl`` as it is scored; a
re-run reads that file back and skips images already there, so a killed
evaluation resumes where it stopped. ``OUT/run.json`` records what scored (and
what generated) the rows, and a re-run with a different scorer or generator
fails instead of mixing two runs in one summary. Images or rows in OUT that the
re-run would not make (an earlier run with more prompts or images) are refused
too, and ``fresh`` removes everything an earlier run wrote there (its images in
either layout, results, summary, run info), so OUT always holds exactly one run.

Functions here are plain Python (no click): the CLI is a thin shell over them,
and ``shapes_benchmark`` lets the trainer and scripts score a model in-process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from maskfocus_cli.bench.detection import Detector
from maskfocus_cli.bench.geneval import GenEvalThresholds, ImageResult, evaluate_batch, summarize
from maskfocus_cli.bench.layout import (geneval_prompt_dir, geneval_run_files, geneval_sample_path, load_image,
                                        remove_run_files, scan_geneval, scan_t2i_compbench, t2i_run_files,
                                        t2i_sample_path, write_geneval_metadata, save_png)
from maskfocus_cli.bench.prompts import T2I_COMPBENCH_CATEGORIES
from maskfocus_cli.engine.generate import generate, make_jobs
from maskfocus_cli.engine.sampling import PromptEncoder, Router, SamplerSettings
from maskfocus_cli.io.checkpoint import atomic_write_bytes, atomic_write_json
from maskfocus_cli.models.base import MaskedT2IAdapter

RESULTS = "results.jsonl"
SUMMARY = "summary.json"
RUN_INFO = "run.json"
DEFAULT_N = {"geneval": 4, "shapes": 4, "t2i-compbench": 10}

Progress = Callable[[int, int], None]  #: (images done, images to do in this run)


@dataclass(frozen=True)
class Generation:
    """How to make images: a loaded model and its sampling settings."""

    adapter: MaskedT2IAdapter
    settings: SamplerSettings
    n: int = 4  #: images per prompt
    seed: int = 0  #: image j of a prompt uses seed + j (its k-th repeat: seed + k·n + j)
    batch_size: int = 64  #: images per sampling batch
    router: Router | None = None  #: rollout-style routing (a diagnostic; benchmarks use the standard step)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"--n must be at least 1 (got {self.n})")

    def describe(self) -> dict:
        return generation_facts(self.settings, self.n, self.seed, self.batch_size, self.router is not None)


def generation_facts(settings: SamplerSettings, n: int, seed: int, batch_size: int, routed: bool) -> dict:
    """What makes a run's images what they are (recorded in run.json, compared on resume). Known before any
    model loads, so a stale --out is refused first."""
    # "routing" only when on: results written without it keep resuming under the same run info
    # (with the batch size: a routed image depends on its batch's median entropy)
    routing = {"routing": True, "batch_size": batch_size} if routed else {}
    return {"sampler": dataclasses.asdict(settings), "n": n, "seed": seed, **routing}


def check_same_run(out: Path, run_info: dict) -> None:
    """Refuse an OUT holding results of a different run, before scorers and models load (minutes for real
    ones); the results store checks again when it opens."""
    _check_run_info(Path(out) / RUN_INFO, run_info)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """What a PNG round trip does to a [0, 1] image: clamp and round to 1/255 steps."""
    return (images.detach().float().clamp(0, 1) * 255).round() / 255


# ------------------------------------------------------------------ results store
class ResultsStore:
    """``OUT/results.jsonl``: one row per scored image, keyed by ``key_fields``, appended as scored."""

    def __init__(self, out: Path, key_fields: tuple[str, ...], run_info: dict, fresh: bool = False) -> None:
        self.path = out / RESULTS
        self.key_fields = key_fields
        info_path = out / RUN_INFO
        if fresh:
            for path in (self.path, info_path, out / SUMMARY):
                path.unlink(missing_ok=True)
        self.rows: dict[tuple, dict] = {}
        if self.path.is_file():
            _check_run_info(info_path, run_info)
            rows = read_results(self.path)
            for row in rows:
                self.rows[self.key(row)] = row
            if not self.path.read_bytes().endswith(b"\n") or len(rows) != _count_lines(self.path):
                # a killed run left a partial last line: rewrite without it so appends start on a fresh line
                atomic_write_bytes(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                      for r in rows).encode("utf-8"))
        else:
            info_path.unlink(missing_ok=True)
        merged = _read_json_or_empty(info_path)
        merged.update(run_info)
        atomic_write_json(info_path, merged)

    def key(self, row: dict) -> tuple:
        try:
            return tuple(row[k] for k in self.key_fields)
        except KeyError as e:
            raise ValueError(f"{self.path}: a row has no {e.args[0]!r} field; delete the file or pass --fresh") \
                from None

    def refuse_others(self, keys: Iterable[tuple]) -> None:
        """Refuse rows of images this run does not have: the summary would skip them, but anyone reading
        results.jsonl (or scoring the folder again) would take them for this run's."""
        keys = set(keys)
        extra = [k for k in self.rows if k not in keys]
        if extra:
            raise ValueError(f"{self.path} holds results of {len(extra)} images that are not part of this run "
                             f"(e.g. {extra[0]}); choose a new --out or pass --fresh to discard them")

    def __contains__(self, key: tuple) -> bool:
        return key in self.rows

    def add(self, rows: Sequence[dict]) -> None:
        """Append rows and flush, so a kill loses at most the batch being scored."""
        with self.path.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                self.rows[self.key(row)] = row
            f.flush()
            os.fsync(f.fileno())


def read_results(path: str | Path) -> list[dict]:
    """Rows of a results.jsonl; a truncated last line (a killed run) is dropped, any other bad line is an error."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise json.JSONDecodeError("not an object", line, 0)
        except json.JSONDecodeError:
            if i == len(lines):
                break
            raise ValueError(f"{path} line {i}: not a JSON object; delete the file or pass --fresh") from None
        rows.append(row)
    return rows


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _read_json_or_empty(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


#: generator fields recorded only since a later version, with the value earlier runs used (they keep resuming)
_GENERATOR_DEFAULTS = {"dtype": "fp32"}


def _local_paths_absolute(info: dict) -> dict:
    """Run records name models and weights by path; records written before paths were made absolute
    still match when resumed from their directory."""
    from maskfocus_cli.models.loading import absolute_path, absolute_spec
    out = dict(info)
    for k in ("checkpoint", "detector", "clip", "blip"):
        if isinstance(out.get(k), str):
            out[k] = absolute_path(out[k])
    if isinstance(out.get("model"), str):
        out["model"] = absolute_spec(out["model"])
    return out


def _differences(a, b, limit: int = 3) -> str:
    """'k: recorded → this run' for the (nested) fields that differ, long values shortened."""
    from maskfocus_cli.config import flatten

    def short(v) -> str:
        text = json.dumps(v)
        return text if len(text) <= 60 else text[:57] + '..."'
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return f"{short(a)} → {short(b)}"
    fa, fb = flatten(a), flatten(b)
    keys = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return "; ".join(f"{k}: {short(fa.get(k))} → {short(fb.get(k))}" for k in keys[:limit]) + more


def _check_run_info(path: Path, run_info: dict) -> None:
    old = _read_json_or_empty(path)
    for key in ("bench", "scorer", "generator"):
        if key in old and key in run_info:
            a, b = old[key], run_info[key]
            if isinstance(a, dict) and isinstance(b, dict):
                a, b = _local_paths_absolute(a), _local_paths_absolute(b)
            if key == "generator" and isinstance(a, dict) and isinstance(b, dict):
                a, b = {**_GENERATOR_DEFAULTS, **a}, {**_GENERATOR_DEFAULTS, **b}
                from maskfocus_cli.engine.settings import with_added_fields
                for d in (a, b):
                    if "sampler" in d:
                        d["sampler"] = with_added_fields(d["sampler"])
                if "batch_size" not in a:  # recorded before routed runs recorded their batch size
                    b = {k: v for k, v in b.items() if k != "batch_size"}
            if a != b:
                raise ValueError(f"{path.parent} holds results of a different run ({key} differs: "
                                 f"{_differences(a, b)}); choose a new --out or pass --fresh to discard them")


def _claim_out(out: Path, planned: set[Path], fresh: bool) -> None:
    """Before generating into OUT: its images (either layout) must be this run's to make.

    Images no evaluate run recorded (no generator in run.json) are someone else's: refused, never
    overwritten or deleted. An earlier run's images that this run would not make (fewer prompts or
    images) are refused, as stale ones would pass for this run's; with ``fresh`` all of the earlier
    run's images go, so OUT afterwards holds exactly the new run.
    """
    found = geneval_run_files(out) + t2i_run_files(out, T2I_COMPBENCH_CATEGORIES)
    if not found:
        return
    example = found[0].relative_to(out)
    if "generator" not in _read_json_or_empty(out / RUN_INFO):
        why = f"its {RUN_INFO} is damaged, so they cannot be matched to a run" if (out / RUN_INFO).is_file() \
            else "no evaluate run recorded them"
        raise ValueError(f"--out {out} holds images (e.g. {example}) and {why}: choose a new --out or empty it")
    if fresh:
        remove_run_files(out, found)
        return
    stale = [f for f in found if f not in planned]
    if stale:
        raise ValueError(f"--out {out} holds images of an earlier run that are not part of this one (e.g. "
                         f"{stale[0].relative_to(out)}); pass --fresh to replace that run or choose a new --out")


class _Timer:
    """Images scored and seconds spent scoring (detector + rules), for images/s."""

    def __init__(self) -> None:
        self.images, self.seconds = 0, 0.0

    def rate(self) -> float | None:
        return round(self.images / self.seconds, 2) if self.images and self.seconds > 0 else None


class _Sink:
    """Where scored rows go, in one place for every runner: the results store, the
    caller's per-row hook and the progress callback."""

    def __init__(self, store: ResultsStore, total: int, on_row: Callable[[dict], None] | None,
                 on_progress: Progress | None) -> None:
        self.store, self.total, self.on_row, self.on_progress, self.done = store, total, on_row, on_progress, 0
        if on_progress:
            on_progress(0, total)

    def add(self, rows: Sequence[dict]) -> None:
        self.store.add(rows)
        if self.on_row is not None:
            for r in rows:
                self.on_row(r)
        self.done += len(rows)
        if self.on_progress:
            self.on_progress(self.done, self.total)


def _score_files(items: Sequence, batch_size: int, score: Callable[[torch.Tensor, Sequence], list[dict]],
                 timer: "_Timer", sink: _Sink) -> None:
    """Score saved images in chunks; each chunk's PNGs are stacked by size (reading counts as scoring)."""
    for chunk in _batched(items, batch_size):
        t0 = time.perf_counter()
        groups = list(_stack_by_size([it.path for it in chunk]))
        timer.seconds += time.perf_counter() - t0
        rows: list[dict | None] = [None] * len(chunk)
        for idx, images in groups:
            for i, r in zip(idx, score(images, [chunk[i] for i in idx])):
                rows[i] = r
        sink.add(rows)


def _batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _stack_by_size(paths: Sequence[Path]) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Load images and stack those of equal size together (positions in ``paths``, tensor)."""
    groups: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
    for i, p in enumerate(paths):
        try:
            img = load_image(p)
        except OSError as e:
            raise ValueError(f"cannot read image {p}: {e} (damaged? re-generate it, or remove its sample folder)") \
                from None
        groups.setdefault(tuple(img.shape), []).append((i, img))
    for members in groups.values():
        yield [i for i, _ in members], torch.stack([im for _, im in members])


# ------------------------------------------------------------------ GenEval-like (geneval, shapes)
@dataclass(frozen=True)
class GenEvalItem:
    """One image of a GenEval-layout run: prompt folder index, sample number, metadata row, PNG path."""

    prompt_index: int
    image_index: int
    meta: dict
    path: Path
    seed: int | None = None


def _geneval_row(item: GenEvalItem, result: ImageResult, root: Path) -> dict:
    try:
        rel = str(item.path.relative_to(root))
    except ValueError:
        rel = str(item.path)
    row = {"prompt_index": item.prompt_index, "image_index": item.image_index, "path": rel,
           "tag": result.tag, "prompt": result.prompt, "correct": result.correct, "reason": result.reason,
           "detections": result.detections}
    if item.seed is not None:
        row["seed"] = item.seed
    return row


def _score_geneval(detector: Detector, images: torch.Tensor, items: Sequence[GenEvalItem], root: Path,
                   thr: GenEvalThresholds, timer: _Timer) -> list[dict]:
    t0 = time.perf_counter()
    results = evaluate_batch(detector, images, [it.meta for it in items], thr)
    timer.seconds += time.perf_counter() - t0
    timer.images += len(items)
    return [_geneval_row(it, r, root) for it, r in zip(items, results)]


def row_to_result(row: dict) -> ImageResult:
    return ImageResult(correct=bool(row["correct"]), reason=row.get("reason", ""), tag=row["tag"],
                       prompt=row.get("prompt", ""), detections=row.get("detections", {}),
                       prompt_index=row.get("prompt_index"))


def geneval_summary(rows: Iterable[dict], bench: str, info: dict | None = None) -> dict:
    """GenEval's summary (overall = mean of per-tag accuracies) of results rows, plus run facts."""
    return {"bench": bench, **summarize(row_to_result(r) for r in rows), **(info or {})}


def _check_prompt(store: ResultsStore, key: tuple, prompt: str) -> None:
    old = store.rows.get(key)
    if old is not None and old.get("prompt") != prompt:
        raise ValueError(f"{store.path} scored {old.get('prompt')!r} for image {key}, but the prompt is now "
                         f"{prompt!r}; choose a new --out or pass --fresh")


def _write_all_metadata(out: Path, metadata: Sequence[dict], fresh: bool) -> None:
    for i, meta in enumerate(metadata):
        path = geneval_prompt_dir(out, i) / "metadata.jsonl"
        if path.is_file() and not fresh:
            try:
                old = json.loads(path.read_text(encoding="utf-8").strip().splitlines()[0])
            except (json.JSONDecodeError, IndexError):
                old = None
            if old == meta:
                continue
            raise ValueError(f"{path} holds a different prompt than this run's prompt {i} ({meta['prompt']!r}); "
                             f"choose a new --out or pass --fresh")
        write_geneval_metadata(out, i, meta)


def _encode_all(adapter: MaskedT2IAdapter, prompts: set[str], chunk: int = 64) -> PromptEncoder:
    """Every prompt encoded once, up front (in chunks: a large text encoder need not take them all at
    once), so that one the model cannot read fails before anything is written; sampling then reuses the
    cache instead of encoding again."""
    encoder, todo = PromptEncoder(adapter), sorted(prompts)
    for lo in range(0, len(todo), chunk):
        encoder(todo[lo:lo + chunk])
    return encoder


def run_geneval_like(out: str | Path, metadata: Sequence[dict], detector: Detector, generation: Generation, *,
                     bench: str = "geneval", thresholds: GenEvalThresholds = GenEvalThresholds(),
                     scorer_info: dict | None = None, model_info: dict | None = None, fresh: bool = False,
                     on_progress: Progress | None = None,
                     on_row: Callable[[dict], None] | None = None) -> tuple[list[dict], dict]:
    """Generate ``generation.n`` images per metadata row into OUT (GenEval layout), score, summarise.

    Returns (rows of this run's images in prompt/image order, summary); writes
    OUT/results.jsonl and OUT/summary.json.
    """
    out = Path(out)
    run_info = {"bench": bench, "scorer": scorer_info or {}, "generator": {**(model_info or {}),
                                                                           **generation.describe()}}
    jobs = make_jobs([m["prompt"] for m in metadata], generation.n, generation.seed, list(metadata))
    # a prompt the model cannot read (e.g. an unknown word) fails before OUT is touched
    encoder = _encode_all(generation.adapter, {m["prompt"] for m in metadata} | {generation.settings.negative_prompt})
    _claim_out(out, {geneval_prompt_dir(out, i) / "metadata.jsonl" for i in range(len(metadata))}
               | {geneval_sample_path(out, j.prompt_index, j.image_index) for j in jobs}, fresh)
    store = ResultsStore(out, ("prompt_index", "image_index"), run_info, fresh)
    store.refuse_others((j.prompt_index, j.image_index) for j in jobs)
    _write_all_metadata(out, metadata, fresh)
    for j in jobs:
        _check_prompt(store, (j.prompt_index, j.image_index), j.prompt)
    todo = [j for j in jobs if (j.prompt_index, j.image_index) not in store]
    timer, sink = _Timer(), _Sink(store, len(todo), on_row, on_progress)
    if todo:
        for batch in generate(generation.adapter, todo, generation.settings, generation.batch_size,
                              generation.router, encoder):
            images = quantize(batch.images)
            items = []
            for k, job in enumerate(batch.jobs):
                path = geneval_sample_path(out, job.prompt_index, job.image_index)
                save_png(images[k], path)
                items.append(GenEvalItem(job.prompt_index, job.image_index, job.meta, path, job.seed))
            sink.add(_score_geneval(detector, images, items, out, thresholds, timer))
    rows = [store.rows[(j.prompt_index, j.image_index)] for j in jobs]
    info = {**(model_info or {}), **generation.describe(), "images_per_second_scored": timer.rate(),
            "newly_scored": timer.images}
    summary = geneval_summary(rows, bench, info)
    from maskfocus_cli.bench.report import write_summary
    write_summary(out / SUMMARY, summary)
    return rows, summary


def generator_facts(images_dir: Path) -> dict:
    """How an evaluate run made the images in ``images_dir`` (model, checkpoint, sampler, n, seed), from its
    run.json; empty for images from elsewhere. Re-scoring keeps them in the summary, so ``--compare`` still
    notices when two runs' samples differ."""
    facts = _read_json_or_empty(images_dir / RUN_INFO).get("generator")
    return dict(facts) if isinstance(facts, dict) else {}


def score_geneval_dir(images_dir: str | Path, detector: Detector, *, out: str | Path | None = None,
                      bench: str = "geneval", thresholds: GenEvalThresholds = GenEvalThresholds(),
                      scorer_info: dict | None = None, batch_size: int = 16, fresh: bool = False,
                      on_progress: Progress | None = None,
                      on_row: Callable[[dict], None] | None = None) -> tuple[list[dict], dict]:
    """Score a GenEval-layout images folder (any generator); results go to ``out`` (default: the folder)."""
    if batch_size < 1:
        raise ValueError(f"--score-batch-size must be at least 1 (got {batch_size})")
    root = Path(images_dir)
    prompts = scan_geneval(root)
    out = Path(out) if out is not None else root
    made = generator_facts(root)  # before the store opens: --fresh in place rewrites run.json
    store = ResultsStore(out, ("prompt_index", "image_index"),
                         {"bench": bench, "scorer": scorer_info or {}, **({"generator": made} if made else {})}, fresh)
    items = [GenEvalItem(p.index, int(path.stem), p.metadata, path) for p in prompts for path in p.images]
    store.refuse_others((it.prompt_index, it.image_index) for it in items)
    for it in items:
        _check_prompt(store, (it.prompt_index, it.image_index), it.meta["prompt"])
    todo = [it for it in items if (it.prompt_index, it.image_index) not in store]
    timer = _Timer()
    _score_files(todo, batch_size, lambda images, its: _score_geneval(detector, images, its, root, thresholds, timer),
                 timer, _Sink(store, len(todo), on_row, on_progress))
    rows = [store.rows[(it.prompt_index, it.image_index)] for it in items]
    summary = geneval_summary(rows, bench, {**made, "images_dir": str(root),
                                            "images_per_second_scored": timer.rate(), "newly_scored": timer.images})
    from maskfocus_cli.bench.report import write_summary
    write_summary(out / SUMMARY, summary)
    return rows, summary


def shapes_benchmark(adapter: MaskedT2IAdapter, n_prompts: int = 192, n_images: int = 4,
                     settings: SamplerSettings | None = None, seed: int = 0, *, prompt_seed: int = 0,
                     batch_size: int = 64, metadata: Sequence[dict] | None = None,
                     thresholds: GenEvalThresholds = GenEvalThresholds()) -> dict:
    """GenEval rules on held-out shapes prompts, in process (no files): the summary dict.

    Same prompts, seeds, rounding and rules as ``maskfocus evaluate --bench shapes``
    with ``--num-prompts n_prompts --prompt-seed prompt_seed --n n_images --seed seed``,
    so the numbers match the CLI's.
    """
    from maskfocus_cli.shapes.detector import ShapesDetector
    from maskfocus_cli.shapes.world import make_metadata

    if n_images < 1:
        raise ValueError(f"n_images must be at least 1 (got {n_images})")
    settings = settings or SamplerSettings()
    if metadata is None:
        if n_prompts < 1:
            raise ValueError(f"n_prompts must be at least 1 (got {n_prompts})")
        metadata = make_metadata(n_prompts, prompt_seed, split="heldout")
    detector, timer = ShapesDetector(), _Timer()
    jobs = make_jobs([m["prompt"] for m in metadata], n_images, seed, list(metadata))
    results: list[ImageResult] = []
    for batch in generate(adapter, jobs, settings, batch_size):
        t0 = time.perf_counter()
        scored = evaluate_batch(detector, quantize(batch.images), [j.meta for j in batch.jobs], thresholds)
        results += [dataclasses.replace(r, prompt_index=j.prompt_index) for r, j in zip(scored, batch.jobs)]
        timer.seconds += time.perf_counter() - t0
        timer.images += len(batch.jobs)
    return {"bench": "shapes", **summarize(results), "sampler": dataclasses.asdict(settings), "n": n_images,
            "seed": seed, "images_per_second_scored": timer.rate()}


def shapes_metadata(n_prompts: int, prompt_seed: int) -> list[dict]:
    """The shapes bench's default prompts: tag-balanced held-out rows."""
    from maskfocus_cli.shapes.world import make_metadata
    if n_prompts < 1:
        raise ValueError(f"--num-prompts must be at least 1 (got {n_prompts})")
    return make_metadata(n_prompts, prompt_seed, split="heldout")


# ------------------------------------------------------------------ detectors for real images
def geneval_detector(detector: str | os.PathLike, clip: str | os.PathLike, clip_arch: str = "ViT-L-14",
                     device: str = "cpu", score_threshold: float = 0.3, max_per_class: int = 16,
                     batch_size: int = 4, options: tuple[str, str] = ("--detector", "--clip")) -> Detector:
    """Mask2Former + open_clip colours, GenEval's detector pair for real images.

    ``clip`` is an open_clip folder (open_clip_config.json + weights), a checkpoint
    file for ``clip_arch``, or a pretrained tag such as 'openai' (needs network).
    Weights are loaded before anything is generated, so missing ones fail fast;
    ``options`` are the names the errors tell the user to set (detector, clip).
    """
    from maskfocus_cli.bench.detectors import ClipColorClassifier, Mask2FormerDetector

    det = Mask2FormerDetector(detector, device=device, score_threshold=score_threshold,
                              max_per_class=max_per_class, batch_size=batch_size, option=options[0])
    clip_path = Path(str(clip)).expanduser()
    if clip_path.is_dir():
        det.color_classifier = ClipColorClassifier(clip_path, device=device, option=options[1])
    else:
        det.color_classifier = ClipColorClassifier(clip_arch, pretrained=clip, device=device, option=options[1])
    return det


# ------------------------------------------------------------------ T2I-CompBench
@dataclass(frozen=True)
class T2IItem:
    category: str
    idx: int
    prompt: str
    path: Path
    prompt_index: int | None = None
    image_index: int | None = None
    seed: int | None = None


def _t2i_rows(scorer, images: torch.Tensor, items: Sequence[T2IItem], root: Path, timer: _Timer) -> list[dict]:
    t0 = time.perf_counter()
    scores = scorer.score(images, [it.prompt for it in items])
    timer.seconds += time.perf_counter() - t0
    timer.images += len(items)
    rows = []
    for it, s in zip(items, scores):
        try:
            rel = str(it.path.relative_to(root))
        except ValueError:
            rel = str(it.path)
        row = {"category": it.category, "idx": it.idx, "prompt": it.prompt, "score": float(s), "path": rel}
        for k in ("prompt_index", "image_index", "seed"):
            if getattr(it, k) is not None:
                row[k] = getattr(it, k)
        rows.append(row)
    return rows


def t2i_summary(rows: Iterable[dict], info: dict | None = None) -> dict:
    """Mean score per category (T2I-CompBench reports no overall number), image and prompt counts."""
    by_cat: dict[str, list[dict]] = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r)
    order = [c for c in T2I_COMPBENCH_CATEGORIES if c in by_cat] + sorted(
        c for c in by_cat if c not in T2I_COMPBENCH_CATEGORIES)
    out: dict = {"bench": "t2i-compbench"}
    for c in order:
        out[c] = sum(r["score"] for r in by_cat[c]) / len(by_cat[c])
    out["counts"] = {c: {"images": len(by_cat[c]), "prompts": len({r["prompt"] for r in by_cat[c]})}
                     for c in order}
    out["images"] = sum(len(v) for v in by_cat.values())
    out.update(info or {})
    return out


def _t2i_store(out: Path, run_info: dict, fresh: bool) -> ResultsStore:
    return ResultsStore(out, ("category", "idx"), run_info, fresh)


def run_t2i_compbench(out: str | Path, prompts_by_category: dict[str, Sequence[str]],
                      scorers: dict[str, object], generation: Generation, *, scorer_info: dict | None = None,
                      model_info: dict | None = None, fresh: bool = False, on_progress: Progress | None = None,
                      on_row: Callable[[dict], None] | None = None) -> tuple[list[dict], dict]:
    """Generate n images per prompt into OUT/<category>/samples/{prompt}_{idx:06}.png, score, summarise.

    ``idx`` runs over the category's images (prompt p, image j → p·n + j), as the
    official inference script numbers them. ``scorers[category]`` has ``score(images, prompts)``.
    """
    out = Path(out)
    run_info = {"bench": "t2i-compbench", "scorer": scorer_info or {},
                "generator": {**(model_info or {}), **generation.describe()}}
    n = generation.n
    plan = [(cat, make_jobs(list(prompts), n, generation.seed)) for cat, prompts in prompts_by_category.items()]
    # a prompt the model cannot read fails before OUT is touched
    encoder = _encode_all(generation.adapter, {p for prompts in prompts_by_category.values() for p in prompts}
                          | {generation.settings.negative_prompt})
    # prompts must be usable as file names
    planned = {t2i_sample_path(out / cat, j.prompt, j.prompt_index * n + j.image_index) for cat, jobs in plan
               for j in jobs}
    _claim_out(out, planned, fresh)
    store = _t2i_store(out, run_info, fresh)
    store.refuse_others((cat, j.prompt_index * n + j.image_index) for cat, jobs in plan for j in jobs)
    for cat, jobs in plan:
        for j in jobs:
            _check_prompt(store, (cat, j.prompt_index * n + j.image_index), j.prompt)
    total = sum(1 for cat, jobs in plan for j in jobs if (cat, j.prompt_index * n + j.image_index) not in store)
    timer, sink = _Timer(), _Sink(store, total, on_row, on_progress)
    all_keys: list[tuple] = []
    for cat, jobs in plan:
        all_keys += [(cat, j.prompt_index * n + j.image_index) for j in jobs]
        todo = [j for j in jobs if (cat, j.prompt_index * n + j.image_index) not in store]
        if not todo:
            continue
        for batch in generate(generation.adapter, todo, generation.settings, generation.batch_size,
                              generation.router, encoder):
            images = quantize(batch.images)
            items = []
            for k, job in enumerate(batch.jobs):
                idx = job.prompt_index * n + job.image_index
                path = save_png(images[k], t2i_sample_path(out / cat, job.prompt, idx))
                items.append(T2IItem(cat, idx, job.prompt, path, job.prompt_index, job.image_index, job.seed))
            sink.add(_t2i_rows(scorers[cat], images, items, out, timer))
    rows = [store.rows[k] for k in all_keys]
    summary = t2i_summary(rows, {**(model_info or {}), **generation.describe(),
                                 "images_per_second_scored": timer.rate(), "newly_scored": timer.images})
    from maskfocus_cli.bench.report import write_summary
    write_summary(out / SUMMARY, summary)
    return rows, summary


def t2i_category_dirs(images_dir: str | Path, categories: Sequence[str]) -> dict[str, Path]:
    """Where each category's images are: DIR itself (one category) or DIR/<category>/ for several."""
    root = Path(images_dir)
    if not root.is_dir():
        raise ValueError(f"images folder not found: {root}")
    flat = (root / "samples").is_dir() or any(p.suffix.lower() == ".png" for p in root.iterdir())
    if flat:
        if len(categories) != 1:
            raise ValueError(f"{root} holds one category's images (samples/{{prompt}}_{{idx:06}}.png): pass "
                             f"exactly one --category")
        return {categories[0]: root}
    found = {c: root / c for c in categories if (root / c).is_dir()}
    if not found:
        raise ValueError(f"images folder is not in T2I-CompBench layout: expected samples/{{prompt}}_{{idx:06}}"
                         f".png or <category>/samples/... under {root}")
    return found


def score_t2i_dir(images_dir: str | Path, scorers: dict[str, object], *, out: str | Path | None = None,
                  scorer_info: dict | None = None, batch_size: int = 16, fresh: bool = False,
                  on_progress: Progress | None = None,
                  on_row: Callable[[dict], None] | None = None) -> tuple[list[dict], dict]:
    """Score T2I-CompBench-layout images for the categories in ``scorers`` (see ``t2i_category_dirs``)."""
    if batch_size < 1:
        raise ValueError(f"--score-batch-size must be at least 1 (got {batch_size})")
    root = Path(images_dir)
    dirs = t2i_category_dirs(root, list(scorers))
    out = Path(out) if out is not None else root
    made = generator_facts(root)  # before the store opens: --fresh in place rewrites run.json
    store = _t2i_store(out, {"bench": "t2i-compbench", "scorer": scorer_info or {},
                             **({"generator": made} if made else {})}, fresh)
    items = [T2IItem(cat, s.idx, s.prompt, s.path) for cat, d in dirs.items() for s in scan_t2i_compbench(d)]
    store.refuse_others((it.category, it.idx) for it in items)
    for it in items:
        _check_prompt(store, (it.category, it.idx), it.prompt)
    todo = [it for it in items if (it.category, it.idx) not in store]
    timer, sink = _Timer(), _Sink(store, len(todo), on_row, on_progress)
    for cat in dirs:
        _score_files([it for it in todo if it.category == cat], batch_size,
                     lambda images, its, cat=cat: _t2i_rows(scorers[cat], images, its, root, timer), timer, sink)
    rows = [store.rows[(it.category, it.idx)] for it in items]
    summary = t2i_summary(rows, {**made, "images_dir": str(root),
                                 "images_per_second_scored": timer.rate(), "newly_scored": timer.images})
    from maskfocus_cli.bench.report import write_summary
    write_summary(out / SUMMARY, summary)
    return rows, summary
