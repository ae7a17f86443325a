"""Critical-step selection (MaskFocus, DESIGN §3.2).

Step-level information gain: embed x̂0_t (the model's full-image guess at step t)
and the final grid, s_t = cos(e_t, e_final), g_t = |s_{t+1} − s_t| with s_T = 1
(x̂0 of the last step *is* the final grid, so the last gain is 0). The steps whose
decisions move the guess most are the critical ones. Embedders and selectors
are strategy objects behind one small interface each, so ablations are new
objects, not flags.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from maskfocus_cli.engine.sampling import Trajectory
from maskfocus_cli.models.base import MaskedT2IAdapter


# --------------------------------------------------------------------------- embedders
class StepEmbedder(Protocol):
    """(M, N) token grids → (M, D) vectors whose cosine measures image similarity."""

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor: ...


class CodebookEmbedder:
    """VQ codebook entries of the grid (the official choice): no decode, no extra model."""

    def __init__(self, adapter: MaskedT2IAdapter) -> None:
        self.adapter = adapter

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.adapter.code_embeddings(tokens).flatten(1).float()


class PixelEmbedder:
    """Decoded pixels, shifted to [-0.5, 0.5] so cosine is not dominated by overall brightness.

    (A fixed shift, not per-image centring: a uniform image must stay a non-zero vector.)
    """

    def __init__(self, adapter: MaskedT2IAdapter) -> None:
        self.adapter = adapter

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.adapter.decode(tokens).flatten(1).float() - 0.5


class ClipEmbedder:
    """Decoded images embedded by an open_clip image tower (weights from a local file)."""

    def __init__(self, adapter: MaskedT2IAdapter, model: str = "ViT-B-32", weights: str | None = None,
                 clip_model=None, batch_size: int = 64) -> None:
        self.adapter = adapter
        self.batch_size = batch_size
        if clip_model is None:
            if weights is None:
                raise ValueError("embed clip needs open_clip weights: give a local open_clip checkpoint for "
                                 f"{model} (e.g. open_clip_pytorch_model.bin) with --clip-weights PATH "
                                 "(recipes: critical.clip_weights), or use the codebook embedding")
            import open_clip
            from pathlib import Path
            if not Path(weights).is_file():
                raise ValueError(f"--clip-weights {weights}: file not found")
            if model not in open_clip.list_models():
                raise ValueError(f"unknown open_clip architecture {model!r} (e.g. ViT-B-32, ViT-L-14, ViT-H-14; "
                                 "python -c 'import open_clip; print(open_clip.list_models())' lists them all)")
            try:
                clip_model = open_clip.create_model(model, pretrained=weights)
            except Exception as e:  # noqa: BLE001 - an unreadable or mismatched file: a user problem
                raise ValueError(f"cannot load open_clip {model!r} weights from {weights}: not an open_clip "
                                 f"checkpoint of that architecture ({type(e).__name__}); give the matching "
                                 "open_clip_pytorch_model.bin") from None
        self.clip = clip_model.eval().to(adapter.device)
        size = getattr(self.clip.visual, "image_size", 224)
        self.size = size if isinstance(size, int) else size[0]
        self.mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        self.std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        out = []
        dev = next(self.clip.parameters()).device
        mean, std = self.mean.to(dev), self.std.to(dev)
        for i in range(0, tokens.shape[0], self.batch_size):
            img = self.adapter.decode(tokens[i:i + self.batch_size]).float().to(dev)
            img = F.interpolate(img, size=(self.size, self.size), mode="bicubic", align_corners=False)
            out.append(self.clip.encode_image((img - mean) / std).float().cpu())
        return torch.cat(out)


def make_embedder(name: str, adapter: MaskedT2IAdapter, clip_model: str = "ViT-B-32",
                  clip_weights: str | None = None) -> StepEmbedder:
    if name == "codebook":
        return CodebookEmbedder(adapter)
    if name == "pixels":
        return PixelEmbedder(adapter)
    if name == "clip":
        return ClipEmbedder(adapter, clip_model, clip_weights)
    raise ValueError(f"unknown embedder {name!r}: use codebook, pixels or clip")


# --------------------------------------------------------------------------- information gain
def step_similarity(x0: torch.Tensor, final: torch.Tensor, embed: StepEmbedder) -> torch.Tensor:
    """(T, B, N) x̂0 per step + (B, N) final grid → (B, T) cosine similarity s_t."""
    e_final = embed(final)
    # one step at a time: peak memory stays O(B·D) whatever T is (embeddings can be large)
    # in float64: float32 rounding over thousands of dimensions gave s = 1.00001 (a gain where there is none)
    e_final = e_final.double()
    return torch.stack([F.cosine_similarity(embed(x0[t]).double(), e_final, dim=-1).clamp(-1.0, 1.0).float()
                        for t in range(x0.shape[0])], dim=1)


def information_gain(similarity: torch.Tensor) -> torch.Tensor:
    """s (…, T) → g (…, T) with g_t = |s_{t+1} − s_t| and s_T = 1."""
    ones = torch.ones_like(similarity[..., :1])
    return (torch.cat([similarity[..., 1:], ones], -1) - similarity).abs()


def shared_gain(similarity: torch.Tensor) -> torch.Tensor:
    """(B, T) per-image similarity → (T,) gain of the batch-mean similarity.

    The official reduction for one shared step set: average s_t over the images first, then
    take |Δ|. (The mean of per-image |Δ| differs: an image whose guess dips and recovers adds
    its wobble twice instead of cancelling; on the shipped shapes base the two pick different
    sets in most batches.)
    """
    return information_gain(similarity.mean(0))


def trajectory_gain(traj: Trajectory, embed: StepEmbedder) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample similarity and gain, both (B, T)."""
    s = step_similarity(traj.x0, traj.final, embed)
    return s, information_gain(s)


# --------------------------------------------------------------------------- selectors
class StepSelector(Protocol):
    """Chooses which of T steps get the policy update; returns sorted step indices."""

    needs_gain: bool

    def select(self, total: int, k: int, gain: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """gain: (T,) for one shared set (or None when not needed) → (k',) sorted long."""
        ...


def _check_k(total: int, k: int) -> int:
    if k < 1:
        raise ValueError(f"k must be at least 1 (got {k})")
    if k > total:
        raise ValueError(f"cannot pick {k} critical steps out of {total} sampling steps: lower --top-k / "
                         f"critical.k or raise the step count")
    return k


def candidate_steps(total: int, k: int) -> int:
    """How many leading steps may be picked: 0 … T−3, or all T when k leaves no other choice.

    Shared by the information-gain and random selectors, so the random-steps ablation
    differs from MaskFocus in the choice among the same candidates only, not by also
    drawing the last two steps (whose re-masked loss scores one or two tokens)."""
    return total - 2 if total - 2 >= k else total


class InfoGainSelector:
    """MaskFocus: top-k gain over steps 0 … T−3; ties go to the earlier step (stable sort).

    The last two steps are no candidates, as in the official code (its list of differences
    stops at T−3): there x̂0 differs from the final grid only in the one or two tokens still
    masked, so their gain is the jump to the exact final grid (s = 1), and the re-mask loss
    would score one or two tokens. With the batch-mean similarity, step T−2 otherwise won
    478 of 517 batches on the shipped shapes base (docs/shapes-rl.md, ninth round).
    They are used only when k leaves no other choice.
    """

    needs_gain = True

    def select(self, total, k, gain, generator):
        _check_k(total, k)
        g = gain.float().clone()
        g[candidate_steps(total, k):] = float("-inf")
        order = torch.sort(g, descending=True, stable=True).indices
        return order[:k].sort().values


class RandomSelector:
    """k distinct steps drawn uniformly from MaskFocus's candidates (0 … T−3)."""

    needs_gain = False

    def select(self, total, k, gain, generator):
        _check_k(total, k)
        return torch.randperm(candidate_steps(total, k), generator=generator)[:k].sort().values


class UniformSelector:
    """k evenly spaced steps: the centres of k equal bins of [0, T)."""

    needs_gain = False

    def select(self, total, k, gain, generator):
        _check_k(total, k)
        return ((torch.arange(k, dtype=torch.float64) + 0.5) * total / k).floor().long()


class FirstSelector:
    needs_gain = False

    def select(self, total, k, gain, generator):
        return torch.arange(_check_k(total, k))


class LastSelector:
    needs_gain = False

    def select(self, total, k, gain, generator):
        return torch.arange(total - _check_k(total, k), total)


class AllSelector:
    needs_gain = False

    def select(self, total, k, gain, generator):
        return torch.arange(total)


SELECTORS = {"info-gain": InfoGainSelector, "random": RandomSelector, "uniform": UniformSelector,
             "first": FirstSelector, "last": LastSelector, "all": AllSelector}


def make_selector(name: str) -> StepSelector:
    if name not in SELECTORS:
        raise ValueError(f"unknown step selector {name!r}: use one of {', '.join(SELECTORS)}")
    return SELECTORS[name]()


def select_steps(selector: StepSelector, total: int, k: int, gain: torch.Tensor | None, reduction: str,
                 generator: torch.Generator, batch_size: int | None = None) -> torch.Tensor:
    """Apply a selector with a reduction.

    batch:  one shared step set from the row-mean of ``gain`` → (k,); for the official
            reduction pass ``shared_gain(similarity)[None]``
    sample: a step set per image → (B, k); B from ``gain`` or, for gain-free
            selectors, from ``batch_size``
    """
    if reduction == "batch":
        g = gain.mean(0) if gain is not None else None
        return selector.select(total, k, g, generator)
    if reduction == "sample":
        if gain is not None:
            return torch.stack([selector.select(total, k, g, generator) for g in gain])
        if batch_size is None:
            raise ValueError("reduction 'sample' needs per-sample gains or a batch size")
        return torch.stack([selector.select(total, k, None, generator) for _ in range(batch_size)])
    raise ValueError(f"unknown reduction {reduction!r}: use batch or sample")
