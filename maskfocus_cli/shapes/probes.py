"""Does a shapes model read word order? A teacher-forced probe.

Relations ("a circle left of a square") and attribute binding ("a red circle and a blue
square") are carried by word order: as a bag of words, "circle left of square" and
"square left of circle" are one prompt. The probe renders a training scene of the tag,
masks both objects' patches (the background stays visible, so the layout is given)
and compares the log-probability of the true patches under the caption and under the
caption with the relation flipped (position) or the colours swapped (color_attr).
About 0 nats: the model does not use the words' order, and RL would have to teach it.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from maskfocus_cli.models.shapes import ShapesAdapter

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
PROBED_TAGS = ("position", "color_attr")


def altered_caption(meta: dict) -> str:
    """The caption with the relation flipped (position) or the two colours swapped (color_attr)."""
    from maskfocus_cli.shapes import world
    alt = {**meta, "include": [dict(c) for c in meta["include"]]}
    if meta["tag"] == "position":
        rel, target = alt["include"][1]["position"]
        alt["include"][1]["position"] = [OPPOSITE[rel], target]
    elif meta["tag"] == "color_attr":
        first, second = meta["include"][0]["color"], meta["include"][1]["color"]
        alt["include"][0]["color"], alt["include"][1]["color"] = second, first
    else:
        raise ValueError(f"the word-order probe covers {', '.join(PROBED_TAGS)}, not {meta['tag']!r}")
    return world.prompt_for(alt)


@torch.no_grad()
def word_order_probe(adapter: "ShapesAdapter", tag: str, n_prompts: int = 64, scenes_per_prompt: int = 2,
                     seed: int = 0) -> dict:
    """Mean log-prob gap (nats) caption − altered caption over training scenes, and how often the caption wins."""
    from maskfocus_cli.shapes import world
    from maskfocus_cli.shapes.render import render_batch
    rng = random.Random(seed)
    rows = world.all_prompts("train", [tag])
    rows = rng.sample(rows, min(n_prompts, len(rows)))
    scenes, prompts = [], []
    for meta in rows:
        alt = altered_caption(meta)
        for _ in range(scenes_per_prompt):
            scenes.append(world.scene_for(meta, rng))
            prompts += [meta["prompt"], alt]
    tokens = adapter.tokenizer.encode(render_batch(scenes)).to(adapter.device)
    h, w = adapter.transformer.cfg.grid
    masked = torch.zeros(len(scenes), h, w, dtype=torch.bool)
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            masked[i, o.row:o.row + o.size, o.col:o.col + o.size] = True
    masked = masked.flatten(1).to(adapter.device)
    inp = torch.where(masked, torch.full_like(tokens, adapter.mask_id), tokens)
    inp, tok2, m2 = (x.repeat_interleave(2, 0) for x in (inp, tokens, masked))
    net = adapter.transformer.eval()
    logp = net(inp, adapter.text_ids(prompts).to(adapter.device)).log_softmax(-1)
    per_image = (logp.gather(-1, tok2[..., None])[..., 0] * m2).sum(1)
    gap = per_image[0::2] - per_image[1::2]
    return {"tag": tag, "gap_nats": float(gap.mean()), "caption_wins": float((gap > 0).float().mean()),
            "scenes": len(scenes)}
