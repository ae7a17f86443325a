"""GenEval's decision rules, once, over the ``Detector`` interface.

Follows the official ``evaluation/evaluate_images.py`` (djghosh13/geneval):

* keep detections with score > threshold (0.3; 0.9 for the ``counting`` tag),
  highest score first, at most 16 per class (no NMS: the official default
  ``max_overlap`` is 1.0, i.e. off);
* ``include`` clauses are ANDed: the top ``count`` boxes of the class must exist;
  if the clause has a ``color``, all of those boxes must have it; if it has a
  ``position`` [relation, i], every one of them must stand in that relation to
  every box matched by clause i (which must itself have matched);
* ``exclude`` clauses are ORed: fail if >= ``count`` boxes of the class survive;
* relative position: centre offset shrunk by 0.1 × (sum of the two boxes'
  sizes) per axis, divided by the norm of the raw offset; a component beyond
  ±0.5 decides left/right/above/below (image y points down).

Colours: the rules read ``Detection.color``. Detectors that do not know colours
(learned detectors: CLIP on crops) must fill them first; ``fill_colors`` does
that for a batch, and ``evaluate_batch`` runs detect → fill_colors → rules.
``evaluate_image`` raises ``ValueError`` if a colour clause meets a detection
without a colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from maskfocus_cli.bench.detection import Detection, Detector

COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown",
                           "black", "white")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
TAG_TITLES: dict[str, str] = {
    "single_object": "Single",
    "two_object": "Two",
    "counting": "Counting",
    "colors": "Colors",
    "position": "Position",
    "color_attr": "Color attr.",
}


@dataclass(frozen=True)
class GenEvalThresholds:
    score: float = 0.3  #: detections must score strictly above this
    counting_score: float = 0.9  #: ... or above this for the counting tag
    max_objects: int = 16  #: per class, after thresholding
    position: float = 0.1  #: centre-offset shrink, as a fraction of the summed box sizes


@dataclass(frozen=True)
class ImageResult:
    correct: bool
    reason: str  #: "" when correct; official-style reasons joined by newlines
    tag: str
    prompt: str = ""
    detections: dict = field(default_factory=dict)  #: class → kept detections as JSON dicts
    prompt_index: int | None = None  #: metadata row (GenEval's prompt folder); None = group by prompt text

    def to_json(self) -> dict:
        return {"tag": self.tag, "prompt": self.prompt, "correct": self.correct,
                "reason": self.reason, "details": self.detections}


# ------------------------------------------------------------------ metadata checks
def validate_metadata(meta: dict) -> None:
    """Raise ValueError unless ``meta`` is a GenEval metadata row these rules understand."""
    where = meta.get("prompt", meta) if isinstance(meta, dict) else meta
    if not isinstance(meta, dict) or "tag" not in meta:
        raise ValueError(f"GenEval metadata needs a 'tag' field: {where!r}")
    include = meta.get("include", [])
    for i, c in enumerate(include):
        if not isinstance(c, dict) or "class" not in c or "count" not in c:
            raise ValueError(f"include clause {i} of {where!r} needs 'class' and 'count'")
        if int(c["count"]) < 1:
            raise ValueError(f"include clause {i} of {where!r} has count {c['count']} (must be >= 1)")
        if "color" in c and c["color"] not in COLORS:
            raise ValueError(f"include clause {i} of {where!r} has unknown colour {c['color']!r}; "
                             f"GenEval colours are {', '.join(COLORS)}")
        if "position" in c:
            pos = c["position"]
            if (not isinstance(pos, (list, tuple)) or len(pos) != 2 or pos[0] not in RELATIONS
                    or not isinstance(pos[1], int) or not 0 <= pos[1] < i):
                raise ValueError(f"include clause {i} of {where!r} has position {pos!r}; expected "
                                 f"[relation, index of an earlier clause] with relation in {RELATIONS}")
    for i, c in enumerate(meta.get("exclude", [])):
        if not isinstance(c, dict) or "class" not in c or "count" not in c:
            raise ValueError(f"exclude clause {i} of {where!r} needs 'class' and 'count'")


# ------------------------------------------------------------------------ geometry
def relative_position(box_a: Sequence[float], box_b: Sequence[float], thr: float = 0.1) -> set[str]:
    """Relations of box A relative to box B (x0, y0, x1, y1), factoring in their sizes."""
    ax0, ay0, ax1, ay1 = (float(v) for v in box_a[:4])
    bx0, by0, bx1, by1 = (float(v) for v in box_b[:4])
    off = ((ax0 + ax1) / 2 - (bx0 + bx1) / 2, (ay0 + ay1) / 2 - (by0 + by1) / 2)
    dims = (abs(ax1 - ax0) + abs(bx1 - bx0), abs(ay1 - ay0) + abs(by1 - by0))
    revised = [math.copysign(max(abs(o) - thr * d, 0.0), o) for o, d in zip(off, dims)]
    if all(abs(r) < 1e-3 for r in revised):
        return set()
    norm = math.hypot(*off)
    dx, dy = revised[0] / norm, revised[1] / norm
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


# --------------------------------------------------------------------------- rules
def kept_detections(detections: Iterable[Detection], tag: str,
                    thr: GenEvalThresholds = GenEvalThresholds()) -> dict[str, list[Detection]]:
    """Per class: detections above the tag's threshold, best first, at most max_objects."""
    cut = thr.counting_score if tag == "counting" else thr.score
    by_class: dict[str, list[Detection]] = {}
    for d in detections:
        if d.score > cut:
            by_class.setdefault(d.cls, []).append(d)
    return {c: sorted(ds, key=lambda d: -d.score)[:thr.max_objects] for c, ds in by_class.items()}


def evaluate_image(detections: Sequence[Detection], meta: dict,
                   thr: GenEvalThresholds = GenEvalThresholds()) -> ImageResult:
    """Apply GenEval's rules for one image. Colours must already be on the detections."""
    validate_metadata(meta)
    objects = kept_detections(detections, meta["tag"], thr)
    correct = True
    reasons: list[str] = []
    matched: list[list[Detection] | None] = []
    for req in meta.get("include", []):
        cls, count = req["class"], int(req["count"])
        found = objects.get(cls, [])[:count]
        ok = True
        if len(found) < count:
            ok = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = [d.color for d in found]
                if any(c is None for c in colors):
                    raise ValueError(f"detections of {cls!r} have no colour; run the detector's "
                                     f"classify_colors first (see bench.geneval.fill_colors)")
                n_ok = colors.count(req["color"])
                if n_ok < count:
                    ok = False
                    others = ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    reasons.append(f"expected {req['color']} {cls}>={count}, found {n_ok} "
                                   f"{req['color']}; and {others}")
            if "position" in req and ok:
                rel, target = req["position"][0], int(req["position"][1])
                if matched[target] is None:
                    ok = False
                    reasons.append(f"no target for {cls} to be {rel}")
                else:
                    for obj in found:
                        for tgt in matched[target]:
                            true_rels = relative_position(obj.box, tgt.box, thr.position)
                            if rel not in true_rels:
                                ok = False
                                reasons.append(f"expected {cls} {rel} target, found "
                                               f"{' and '.join(sorted(true_rels))} target")
                                break
                        if not ok:
                            break
        correct = correct and ok
        matched.append(found if ok else None)
    for req in meta.get("exclude", []):
        cls, count = req["class"], int(req["count"])
        n = len(objects.get(cls, []))
        if n >= count:
            correct = False
            reasons.append(f"expected {cls}<{count}, found {n}")
    details = {c: [d.to_json() for d in ds] for c, ds in objects.items()}
    return ImageResult(correct=correct, reason="\n".join(reasons), tag=meta["tag"],
                       prompt=meta.get("prompt", ""), detections=details)


def fill_colors(detector: Detector, images: torch.Tensor,
                detections: list[list[Detection]]) -> list[list[Detection]]:
    """Ask the detector for colours only if some detection lacks one."""
    if any(d.color is None for dets in detections for d in dets):
        return detector.classify_colors(images, detections, list(COLORS))
    return detections


def evaluate_batch(detector: Detector, images: torch.Tensor, metas: Sequence[dict],
                   thr: GenEvalThresholds = GenEvalThresholds()) -> list[ImageResult]:
    """detect → fill colours → rules, for a batch of images with one metadata row each."""
    if len(metas) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(metas)} metadata rows")
    dets = fill_colors(detector, images, detector.detect(images))
    return [evaluate_image(d, m, thr) for d, m in zip(dets, metas)]


# ------------------------------------------------------------------------- summary
def summarize(results: Iterable[ImageResult]) -> dict:
    """GenEval's summary: per-tag image accuracy, and overall = unweighted mean over tags present.

    Returns {tag: accuracy for each tag present, "overall": float, "counts":
    {tag: {"correct", "total"}}, "images": n, "image_accuracy": float,
    "prompts": n, "prompt_accuracy": float (a prompt counts if any image is correct),
    "pass_at_n": {tag: share of the tag's metadata rows with at least one correct image, "overall":
    their unweighted mean}, "images_per_row": n (None if rows hold different numbers of images)}.
    pass@n over the mean is the headroom RL post-training can close by sharpening: what the model
    already draws in some of a prompt's samples.
    """
    results = list(results)
    counts: dict[str, dict[str, int]] = {}
    by_prompt: dict[tuple[str, str], bool] = {}
    by_row: dict[tuple, list[bool]] = {}  # pass@n counts each metadata row (its own n images) once
    for r in results:
        c = counts.setdefault(r.tag, {"correct": 0, "total": 0})
        c["total"] += 1
        c["correct"] += int(r.correct)
        key = (r.tag, r.prompt)
        by_prompt[key] = by_prompt.get(key, False) or r.correct
        by_row.setdefault((r.tag, r.prompt if r.prompt_index is None else r.prompt_index), []).append(r.correct)
    order = [t for t in TAGS if t in counts] + sorted(t for t in counts if t not in TAGS)
    out: dict = {t: counts[t]["correct"] / counts[t]["total"] for t in order}
    out["overall"] = sum(out[t] for t in order) / len(order) if order else 0.0
    out["counts"] = {t: counts[t] for t in order}
    out["images"] = len(results)
    out["image_accuracy"] = sum(r.correct for r in results) / len(results) if results else 0.0
    out["prompts"] = len(by_prompt)
    out["prompt_accuracy"] = sum(by_prompt.values()) / len(by_prompt) if by_prompt else 0.0
    passed: dict[str, list[bool]] = {}
    for (tag, _), oks in by_row.items():
        passed.setdefault(tag, []).append(any(oks))
    pass_at = {t: sum(passed[t]) / len(passed[t]) for t in order}
    pass_at["overall"] = sum(pass_at.values()) / len(order) if order else 0.0
    out["pass_at_n"] = pass_at
    sizes = {len(oks) for oks in by_row.values()}
    out["images_per_row"] = sizes.pop() if len(sizes) == 1 else None
    return out
