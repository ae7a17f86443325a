"""GenEval as a training reward on real images: Mask2Former + CLIP colours + GenEval's own rules.

What MaskFocus's GenEval model trained on: each rollout image is judged by the
GenEval rules against the metadata row of its training prompt. Everything but
the detector is the ``shapes-geneval`` reward (``rewards/shapes_geneval.py``),
so binary scores (1 = GenEval correct) and partial credit (fraction of clauses
that hold) mean exactly the same thing in both worlds, and exactly what
``maskfocus evaluate --bench geneval`` reports.

Unlike the shapes world, free-form prompts cannot be parsed into clauses: every
prompt needs its GenEval metadata row (train on a GenEval-style .jsonl prompt
file). Weights are local folders (or hub ids when online); missing ones fail
when the reward is built, with the option to set.
"""

from __future__ import annotations

import os
from typing import Sequence

from maskfocus_cli.rewards.shapes_geneval import ShapesGenEvalReward


class GenEvalReward(ShapesGenEvalReward):
    """1/0 GenEval correctness per image (or the clause fraction with ``partial=True``) on real images."""

    #: scores by each prompt's GenEval metadata row: the trainer checks its prompt files have them up front
    needs_metadata = True

    def __init__(self, detector: str | os.PathLike = "facebook/mask2former-swin-small-coco-instance",
                 clip: str | os.PathLike = "openai", clip_arch: str = "ViT-L-14", device: str = "auto",
                 partial: bool = False, thresholds: dict | None = None, batch_size: int = 4,
                 count_credit: bool = False) -> None:
        """``detector``: Mask2Former COCO instance-segmentation folder; ``clip``: open_clip folder,
        checkpoint file for ``clip_arch``, or a pretrained tag (downloads); ``thresholds``: overrides of
        ``bench.geneval.GenEvalThresholds`` (score, counting_score, max_objects, position)."""
        from maskfocus_cli.bench.runner import geneval_detector
        from maskfocus_cli.models.loading import resolve_device

        super().__init__(partial=partial, thresholds=thresholds, count_credit=count_credit)  # thresholds + partial handling
        self.detector = geneval_detector(detector, clip, clip_arch, device=str(resolve_device(device)),
                                         score_threshold=min(self.thr.score, self.thr.counting_score),
                                         max_per_class=self.thr.max_objects, batch_size=batch_size,
                                         options=("reward option 'detector'", "reward option 'clip'"))

    def _metadata(self, prompts: Sequence[str], metadata: Sequence[dict | None] | None) -> list[dict]:
        metadata = [None] * len(prompts) if metadata is None else list(metadata)
        if len(metadata) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(metadata)} metadata entries")
        missing = [p for p, m in zip(prompts, metadata) if m is None]
        if missing:
            raise ValueError(f"reward 'geneval' needs the GenEval metadata row of every prompt, none for "
                             f"{missing[0]!r}; train on a GenEval .jsonl prompt file (rows with tag/include)")
        return metadata
