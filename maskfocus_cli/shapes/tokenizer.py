"""The shapes world's VQ tokenizer: an 8×8-pixel patch codebook fitted on renders.

encode = nearest code per patch, decode = paste the code patches, embed = the code
vectors as a (C, h, w) map (C = 3·8·8), like a VQ-GAN's ``get_codebook_entry``.

Because objects are token-aligned and never share a patch, renders contain only a
few hundred distinct patches (381 with the default world). ``fit`` therefore
puts every distinct patch in the codebook when they fit in ``num_codes`` (the
round trip is then exact), and only falls back to weighted k-means when they do
not. Codes left over after the distinct patches are "spare" codes: the most
frequent patch (background) with a faint deterministic dither. Encoding never
picks them (an exact code is always nearer) and a model that predicts one paints
background, which the detector ignores.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from maskfocus_cli.shapes.world import GRID, IMAGE_SIZE, PATCH

C = 3 * PATCH * PATCH  #: length of one code vector
SPARE_DITHER = 6 / 255  #: amplitude of the spare codes' dither (far below palette distances)


def to_patches(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, 64, 64) → (B, 64, 192): token index = row * 8 + col, vector in (c, y, x) order."""
    if images.dim() != 4 or tuple(images.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"expected images of shape (B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}), "
                         f"got {tuple(images.shape)}")
    b = images.shape[0]
    x = images.reshape(b, 3, GRID, PATCH, GRID, PATCH).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, GRID * GRID, C)


def from_patches(patches: torch.Tensor) -> torch.Tensor:
    """(B, 64, 192) → (B, 3, 64, 64); inverse of ``to_patches``."""
    b = patches.shape[0]
    x = patches.reshape(b, GRID, GRID, 3, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, 3, IMAGE_SIZE, IMAGE_SIZE)


class ShapesTokenizer:
    """Patch codebook VQ over the 8×8 token grid."""

    patch = PATCH
    grid = (GRID, GRID)

    def __init__(self, codebook: torch.Tensor) -> None:
        if codebook.dim() != 4 or tuple(codebook.shape[1:]) != (3, PATCH, PATCH):
            raise ValueError(f"codebook must have shape (K, 3, {PATCH}, {PATCH}), "
                             f"got {tuple(codebook.shape)}")
        self.codebook = codebook.detach().float().contiguous()
        self._flat = self.codebook.reshape(-1, C)

    @property
    def num_codes(self) -> int:
        return int(self.codebook.shape[0])

    # ------------------------------------------------------------------ coding
    def encode(self, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """(B, 3, 64, 64) float in [0, 1] → (B, 64) long: nearest code per patch."""
        patches = to_patches(images.float().cpu())
        b = patches.shape[0]
        flat = patches.reshape(-1, C)
        out = torch.empty(flat.shape[0], dtype=torch.long)
        for i in range(0, flat.shape[0], chunk * GRID * GRID):
            part = flat[i:i + chunk * GRID * GRID]
            out[i:i + part.shape[0]] = torch.cdist(part, self._flat).argmin(dim=1)
        return out.view(b, GRID * GRID)

    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.shape[1] != GRID * GRID:
            raise ValueError(f"expected tokens of shape (B, {GRID * GRID}), got {tuple(tokens.shape)}")
        tokens = tokens.long().cpu()
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.num_codes):
            raise ValueError(f"token ids must be in [0, {self.num_codes}) (no [MASK] ids); "
                             f"got range [{int(tokens.min())}, {int(tokens.max())}]")
        return tokens

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 64) code ids → (B, 3, 64, 64) float images."""
        tokens = self._check_tokens(tokens)
        return from_patches(self._flat[tokens])

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 64) code ids → (B, 192, 8, 8) code vectors laid out on the token grid."""
        tokens = self._check_tokens(tokens)
        b = tokens.shape[0]
        return self._flat[tokens].permute(0, 2, 1).reshape(b, C, GRID, GRID)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, images: torch.Tensor, num_codes: int = 512, seed: int = 0,
            iters: int = 20) -> "ShapesTokenizer":
        """Fit a codebook on (B, 3, 64, 64) renders; deterministic given ``seed``.

        Distinct patches are found exactly (on 8-bit values), ordered by frequency.
        If they fit in ``num_codes`` they are the codebook (plus spare codes);
        otherwise weighted k-means over the distinct patches, initialised from
        ``num_codes`` of them drawn with probability ∝ frequency.
        """
        if num_codes < 2:
            raise ValueError(f"num_codes must be at least 2, got {num_codes}")
        q = (to_patches(images.float().cpu()).reshape(-1, C) * 255).round().clamp(0, 255).to(torch.int16)
        uniq, counts = torch.unique(q, dim=0, return_counts=True)
        # frequency order; ties broken by the (already sorted) unique order -> deterministic
        order = torch.sort(counts, descending=True, stable=True).indices
        uniq, counts = uniq[order].float() / 255, counts[order].float()
        gen = torch.Generator().manual_seed(seed)
        if uniq.shape[0] <= num_codes:
            spare = cls._spare_codes(uniq[0], num_codes - uniq.shape[0], gen)
            book = torch.cat([uniq, spare])
        else:
            book = _weighted_kmeans(uniq, counts, num_codes, iters, gen)
        return cls(book.view(num_codes, 3, PATCH, PATCH))

    @staticmethod
    def _spare_codes(base: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
        """n distinct near-copies of the most frequent (background) patch."""
        if n == 0:
            return base.new_zeros(0, C)
        signs = torch.randint(0, 3, (n, C), generator=gen).float() - 1.0
        signs[:, 0] = 1.0  # never an exact copy of the base patch
        return (base + SPARE_DITHER * signs).clamp(0, 1)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        from maskfocus_cli.io.checkpoint import save_weights  # atomic, normal file permissions
        save_weights({"codebook": self.codebook}, path,
                     metadata={"patch": str(PATCH), "grid": f"{GRID},{GRID}", "kind": "shapes-patch-vq"})

    @classmethod
    def load(cls, path: str | Path) -> "ShapesTokenizer":
        from safetensors import SafetensorError, safe_open

        from maskfocus_cli.io.checkpoint import CheckpointError
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"tokenizer file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                codebook = f.get_tensor("codebook") if "codebook" in f.keys() else None
        except (SafetensorError, OSError, RuntimeError) as e:  # truncated or not safetensors at all
            raise CheckpointError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]}); "
                                  "re-export it or point to another checkpoint") from None
        if codebook is None:
            raise ValueError(f"{path} has no 'codebook' tensor; is it a shapes tokenizer file?")
        return cls(codebook)


def _weighted_kmeans(points: torch.Tensor, weights: torch.Tensor, k: int, iters: int,
                     gen: torch.Generator) -> torch.Tensor:
    """Lloyd's algorithm over weighted points; empty clusters move to the worst-fit point."""
    init = torch.multinomial(weights, k, replacement=False, generator=gen)
    centres = points[init].clone()
    for _ in range(iters):
        d = torch.cdist(points, centres)
        assign = d.argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points * weights[:, None])
        mass = torch.zeros(k).index_add_(0, assign, weights)
        new = torch.where(mass[:, None] > 0, sums / mass.clamp_min(1e-12)[:, None], centres)
        empty = (mass == 0).nonzero().flatten()
        if empty.numel():
            worst = (d.gather(1, assign[:, None]).squeeze(1) * weights).argsort(descending=True)
            new[empty] = points[worst[:empty.numel()]]
        if torch.equal(new, centres):
            break
        centres = new
    return centres


def catalogue_scenes() -> list:
    """One scene per (shape, colour, size): guarantees every object patch is seen by ``fit``."""
    from maskfocus_cli.shapes.world import COLORS, SHAPES, SIZES, Scene, ShapeObject
    return [Scene((ShapeObject(s, c, 0, 0, z),)) for s in SHAPES for c in COLORS for z in SIZES]


def fit_default(seed: int = 0, num_scenes: int = 2000, num_codes: int = 512) -> ShapesTokenizer:
    """The standard tokenizer: fitted on the catalogue plus ``num_scenes`` random scenes."""
    from maskfocus_cli.shapes.render import render_batch
    from maskfocus_cli.shapes.world import random_scene
    rng = random.Random(seed)
    scenes = catalogue_scenes() + [random_scene(rng) for _ in range(num_scenes)]
    return ShapesTokenizer.fit(render_batch(scenes), num_codes=num_codes, seed=seed)
