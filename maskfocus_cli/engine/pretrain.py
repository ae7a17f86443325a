"""Supervised pretraining of the built-in model (algorithm ``pretrain``).

Masked-token cross-entropy on rendered shapes scenes: draw GenEval-style metadata,
render a scene that satisfies it, tokenize, mask a cosine-distributed fraction of
tokens, predict them. Prompts are dropped (→ "") with ``prompt_dropout`` so the
model learns the unconditional branch that classifier-free guidance needs.

Counting and position captions can be made noisy (``data.caption_fidelity``; default
``CAPTION_FIDELITY``): only a share of those training scenes match their caption, the
rest show another count or relation, like web alt-text. Measured on this model, noise
does not leave a minority skill for RL to sharpen — it erases the skill (docs/shapes-rl.md,
fifth round) — so the shipped recipe trains on true captions with 4x the position scenes,
and takes its headroom from stopping half-way down the schedule (step 1000 of 2000).
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from maskfocus_cli.models.shapes import ShapesAdapter

#: relative share of each GenEval tag in the pretraining prompts
TAG_MIX = {"single_object": 2.0, "two_object": 3.0, "colors": 2.0, "color_attr": 4.0,
           "counting": 2.0, "position": 2.0}

#: share of training scenes of a tag that match their caption (the rest: another count/relation)
CAPTION_FIDELITY = {"counting": 0.3, "position": 0.3}


def noisy_scene_meta(meta: dict, rng: random.Random, fidelity: dict[str, float] | None = None) -> dict:
    """The metadata a training scene is rendered from: the caption's own, or a perturbed copy.

    A perturbed counting row shows another count (1–4); a perturbed position row shows
    another relation. The caption (``meta["prompt"]``) is never changed.
    """
    from maskfocus_cli.shapes import world
    share = (CAPTION_FIDELITY if fidelity is None else fidelity).get(meta["tag"])
    if share is None or rng.random() < share:
        return meta
    include = [dict(c) for c in meta["include"]]
    if meta["tag"] == "counting":
        include[0]["count"] = rng.choice([n for n in range(1, 5) if n != include[0]["count"]])
    else:
        for c in include:
            if "position" in c:
                rel, target = c["position"]
                c["position"] = [rng.choice([r for r in world.RELATIONS if r != rel]), target]
    return {**meta, "include": include}


def pretrain_mix(tag_weights: dict | None) -> dict[str, float]:
    """``data.tag_weights`` for pretraining: each named tag's share of ``TAG_MIX`` scaled by its weight.

    Relations are a threshold skill here: at position's default share (2 of 15) the base never
    learns them, at 4× it does (docs/shapes-rl.md), so the mix is a recipe knob.
    """
    from maskfocus_cli.engine.data import prompt_weights
    tags = list(TAG_MIX)
    weights = prompt_weights([(t, {"tag": t}) for t in tags], tag_weights or {}, "the pretraining mix")
    return dict(TAG_MIX) if weights is None else {t: TAG_MIX[t] * w for t, w in zip(tags, weights)}


def check_fidelity(fidelity: dict) -> dict[str, float]:
    """``data.caption_fidelity`` → {tag: share}; only tags ``noisy_scene_meta`` can perturb."""
    out = {}
    for tag, share in fidelity.items():
        if tag not in CAPTION_FIDELITY:
            raise ValueError(f"data.caption_fidelity names {tag!r}: only "
                             f"{', '.join(CAPTION_FIDELITY)} captions can be made noisy")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= float(share) <= 1.0:
            raise ValueError(f"data.caption_fidelity.{tag} = {share!r}: give a share between 0 and 1")
        out[tag] = float(share)
    return {**CAPTION_FIDELITY, **out}


class SceneStream:
    """Deterministic stream of (prompt, token grid) pairs for iteration ``it``."""

    def __init__(self, adapter: ShapesAdapter, seed: int, tag_mix: dict[str, float] | None = None,
                 fidelity: dict[str, float] | None = None) -> None:
        from maskfocus_cli.shapes import world
        self.adapter = adapter
        self.seed = seed
        self.fidelity = check_fidelity(fidelity or {})
        mix = tag_mix or TAG_MIX
        self.rows = {t: world.all_prompts("train", [t]) for t in mix}
        self.tags = list(mix)
        self.weights = [mix[t] for t in self.tags]

    def batch(self, it: int, size: int, prompt_dropout: float) -> tuple[list[str], torch.Tensor]:
        from maskfocus_cli.shapes import world
        from maskfocus_cli.shapes.render import render_batch
        rng = random.Random(f"{self.seed}:{it}")
        prompts, scenes = [], []
        for _ in range(size):
            tag = rng.choices(self.tags, self.weights)[0]
            meta = rng.choice(self.rows[tag])
            scenes.append(world.scene_for(noisy_scene_meta(meta, rng, self.fidelity), rng))
            prompts.append("" if rng.random() < prompt_dropout else meta["prompt"])
        tokens = self.adapter.tokenizer.encode(render_batch(scenes))
        return prompts, tokens


def background_code(adapter: ShapesAdapter) -> int:
    """The code of an empty canvas patch (most masked tokens are background)."""
    from maskfocus_cli.shapes.render import render_batch
    from maskfocus_cli.shapes.world import Scene
    return int(adapter.tokenizer.encode(render_batch([Scene(objects=())]))[0, 0])


def masked_ce_loss(adapter: ShapesAdapter, net: torch.nn.Module, prompts: list[str], tokens: torch.Tensor,
                   generator: torch.Generator, background: int | None = None) -> tuple[torch.Tensor, dict]:
    """Cross-entropy on a cosine-distributed random subset of positions (MaskGIT training)."""
    b, n = tokens.shape
    u = torch.rand(b, generator=generator)
    ratio = torch.cos(math.pi / 2 * u)
    count = (ratio * n).ceil().clamp(1, n).long()
    keys = torch.rand(b, n, generator=generator)
    ranks = keys.argsort(1).argsort(1)
    masked = ranks < count[:, None]
    tokens = tokens.to(adapter.device)
    masked = masked.to(adapter.device)
    inp = torch.where(masked, torch.full_like(tokens, adapter.mask_id), tokens)
    cond = adapter.encode_prompts(prompts)
    logits = net(inp, cond["text_ids"])
    loss = F.cross_entropy(logits[masked], tokens[masked])
    with torch.no_grad():
        hit = logits[masked].argmax(-1) == tokens[masked]
        stats = {"token_accuracy": float(hit.float().mean())}
        if background is not None:  # background dominates: object tokens are what matters
            obj = tokens[masked] != background
            stats["object_accuracy"] = float(hit[obj].float().mean()) if bool(obj.any()) else float("nan")
    return loss, stats
