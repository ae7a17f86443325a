"""GenEval reward on the shapes world: the exact shapes detector + GenEval's own rules.

Binary (default): 1.0 if ``bench.geneval.evaluate_image`` judges the image correct,
else 0.0 -- the same decision the ``shapes`` benchmark reports, so the training
reward and the evaluation metric cannot drift apart.

Partial credit (``partial=True``): the fraction of the prompt's clauses that hold,
over *all* clauses, include and exclude:

    score = (#include clauses satisfied + #exclude clauses not violated)
            / (#include clauses + #exclude clauses)

An include clause is judged by GenEval's rules on a metadata row holding that
clause plus, re-indexed, the clauses its ``position`` refers to (GenEval fails a
position clause whose target clause failed, and so does this); an exclude clause
("fewer than n") by a row holding only it. Excludes count because otherwise
drawing too many objects (``"three circles"`` answered with five) would earn full
credit. Every row keeps the prompt's tag, so counting keeps its 0.9 threshold.
Score 1.0 exactly when the binary reward is 1.

Count credit (``partial=True, count_credit=True``): a plain include clause asking for
n > 1 objects (no colour, no position) earns min(found, n)/n instead of 0/1, found
counted under the same thresholds (0.9 for counting). A base that draws one or two
clean shapes of the three asked rarely meets the binary clause, so most of its groups
are all-zero; the graded clause ranks 2 of 3 above 1 of 3. The exclude clause still
pays nothing for drawing too many. (On the shapes world it did not raise held-out
counting: docs/shapes-rl.md, seventh round.)

Metadata: the GenEval row of each image; ``None`` entries are parsed from the
prompt with ``shapes.world.parse_prompt``. No weights needed.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch


def _with_targets(include: list[dict], i: int) -> list[dict]:
    """Clause ``i`` last, preceded by the clauses its position chain points to, indices remapped."""
    chain = [i]
    while "position" in include[chain[-1]]:
        chain.append(int(include[chain[-1]]["position"][1]))
    chain.reverse()  # targets first
    new_index = {old: new for new, old in enumerate(chain)}
    out = []
    for old in chain:
        c = dict(include[old])
        if "position" in c:
            c["position"] = [c["position"][0], new_index[int(c["position"][1])]]
        out.append(c)
    return out


class ShapesGenEvalReward:
    """1/0 GenEval correctness per image (or the clause fraction with ``partial=True``)."""

    def __init__(self, partial: bool = False, thresholds: dict | None = None,
                 count_credit: bool = False) -> None:
        """``thresholds``: overrides of ``bench.geneval.GenEvalThresholds`` fields
        (score, counting_score, max_objects, position); ``count_credit``: graded plain
        count clauses (needs ``partial``)."""
        from maskfocus_cli.bench.geneval import GenEvalThresholds
        from maskfocus_cli.shapes.detector import ShapesDetector

        fields = {f.name for f in dataclasses.fields(GenEvalThresholds)}
        unknown = set(thresholds or {}) - fields
        if unknown:
            raise ValueError(f"unknown GenEval threshold(s) {sorted(unknown)}; known: {sorted(fields)}")
        self.thr = GenEvalThresholds(**(thresholds or {}))
        self.partial = bool(partial)
        if count_credit and not self.partial:
            raise ValueError("count_credit grades clauses of the partial score: set partial: true as well")
        self.count_credit = bool(count_credit)
        self.detector = ShapesDetector()

    def _metadata(self, prompts: Sequence[str], metadata: Sequence[dict | None] | None) -> list[dict]:
        from maskfocus_cli.shapes.world import parse_prompt

        metadata = [None] * len(prompts) if metadata is None else metadata
        if len(metadata) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(metadata)} metadata entries")
        try:
            return [m if m is not None else parse_prompt(p) for p, m in zip(prompts, metadata)]
        except ValueError as e:  # say which part needs the wording: sampling takes any known words
            raise ValueError(f"the shapes-geneval reward scores a prompt by its GenEval clauses: {e} (write "
                             "prompts as the shapes world's GenEval templates, or give .jsonl rows with "
                             "include/exclude clauses)") from None

    def _partial_score(self, detections, meta: dict) -> float:
        from maskfocus_cli.bench.geneval import evaluate_image, kept_detections

        include, exclude = list(meta.get("include", [])), list(meta.get("exclude", []))
        if not include and not exclude:
            return float(evaluate_image(detections, meta, self.thr).correct)
        base = {"tag": meta["tag"], "prompt": meta.get("prompt", "")}
        ok = 0.0
        kept = kept_detections(detections, meta["tag"], self.thr) if self.count_credit else {}
        for i, c in enumerate(include):
            n = int(c["count"])
            if self.count_credit and n > 1 and "color" not in c and "position" not in c:
                ok += min(len(kept.get(c["class"], [])), n) / n
                continue
            row = {**base, "include": _with_targets(include, i), "exclude": []}
            ok += evaluate_image(detections, row, self.thr).correct
        for c in exclude:
            ok += evaluate_image(detections, {**base, "include": [], "exclude": [c]}, self.thr).correct
        return ok / (len(include) + len(exclude))

    def __call__(self, images: torch.Tensor, prompts: Sequence[str],
                 metadata: Sequence[dict | None] | None = None) -> torch.Tensor:
        from maskfocus_cli.bench.geneval import evaluate_image, fill_colors, validate_metadata

        if len(prompts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        metas = self._metadata(prompts, metadata)
        for m in metas:
            validate_metadata(m)
        detections = fill_colors(self.detector, images, self.detector.detect(images))
        if self.partial:
            scores = [self._partial_score(d, m) for d, m in zip(detections, metas)]
        else:
            scores = [float(evaluate_image(d, m, self.thr).correct) for d, m in zip(detections, metas)]
        return torch.tensor(scores, dtype=torch.float32)
