"""Patch VQ tokenizer: exact round trips on renders, layout of tokens/embeddings, fitting, persistence."""

from __future__ import annotations

import random

import pytest
import torch

from maskfocus_cli.shapes import world
from maskfocus_cli.shapes.detector import ShapesDetector
from maskfocus_cli.shapes.render import render_batch
from maskfocus_cli.shapes.tokenizer import (ShapesTokenizer, _weighted_kmeans, catalogue_scenes, fit_default,
                                            from_patches, to_patches)


@pytest.fixture(scope="module")
def tok() -> ShapesTokenizer:
    return fit_default(seed=0)


@pytest.fixture(scope="module")
def scenes() -> list[world.Scene]:
    rng = random.Random(123)
    return [world.random_scene(rng) for _ in range(200)]


def _distinct_patches(images: torch.Tensor) -> torch.Tensor:
    return torch.unique((to_patches(images).reshape(-1, 192) * 255).round(), dim=0)


def test_codebook_geometry_and_size(tok):
    assert tok.num_codes == 512 and tuple(tok.codebook.shape) == (512, 3, 8, 8)
    assert tok.patch == 8 and tok.grid == (8, 8)
    # the world really has >= 256 distinct patches, and each is a code
    distinct = _distinct_patches(render_batch(catalogue_scenes()))
    assert 256 <= distinct.shape[0] <= tok.num_codes
    codes = (tok.codebook.reshape(-1, 192) * 255).round()
    assert (torch.cdist(distinct, codes).min(1).values == 0).all()


def test_round_trip_is_exact_and_keeps_detections(tok, scenes):
    images = render_batch(scenes)
    tokens = tok.encode(images)
    assert tokens.dtype == torch.long and tuple(tokens.shape) == (200, 64)
    decoded = tok.decode(tokens)
    assert torch.equal((decoded * 255).round(), (images * 255).round())
    det = ShapesDetector()
    assert det.detect(decoded) == det.detect(images)
    assert torch.equal(tok.encode(decoded), tokens)


def test_token_index_is_row_major_over_the_grid(tok):
    scene = world.Scene((world.ShapeObject("square", "red", row=5, col=1, size=2),))
    tokens = tok.encode(render_batch([scene]))[0]
    bg = int(tokens[0])
    full = torch.tensor([[r, c] for r in (5, 6) for c in (1, 2)])
    idx = full[:, 0] * 8 + full[:, 1]
    assert (tokens[idx] != bg).all()
    others = torch.ones(64, dtype=torch.bool)
    others[idx] = False
    assert (tokens[others] == bg).all()


def test_patch_layout_helpers_are_inverse_and_row_major():
    img = torch.rand(2, 3, 64, 64)
    p = to_patches(img)
    assert torch.equal(from_patches(p), img)
    assert torch.equal(p[1, 3 * 8 + 6].view(3, 8, 8), img[1, :, 24:32, 48:56])


def test_embed_is_codebook_vectors_on_the_grid(tok):
    tokens = torch.randint(0, tok.num_codes, (3, 64), generator=torch.Generator().manual_seed(0))
    e = tok.embed(tokens)
    assert tuple(e.shape) == (3, 192, 8, 8)
    assert torch.equal(e[2, :, 4, 7], tok.codebook[tokens[2, 4 * 8 + 7]].flatten())


def test_spare_codes_decode_to_nothing_and_are_never_chosen(tok, scenes):
    n_real = _distinct_patches(render_batch(catalogue_scenes())).shape[0]
    spare = torch.arange(n_real, tok.num_codes)
    assert spare.numel() > 0
    tokens = spare[: (spare.numel() // 64) * 64].view(-1, 64)
    assert ShapesDetector().detect(tok.decode(tokens)) == [[] for _ in range(tokens.shape[0])]
    used = tok.encode(render_batch(scenes)).unique()
    assert used.max() < n_real


def test_fit_is_deterministic_and_seed_only_moves_spare_codes():
    images = render_batch(catalogue_scenes())
    a = ShapesTokenizer.fit(images, num_codes=400, seed=0)
    b = ShapesTokenizer.fit(images, num_codes=400, seed=0)
    c = ShapesTokenizer.fit(images, num_codes=400, seed=1)
    assert torch.equal(a.codebook, b.codebook)
    n_real = _distinct_patches(images).shape[0]
    assert torch.equal(a.codebook[:n_real], c.codebook[:n_real])
    assert not torch.equal(a.codebook[n_real:], c.codebook[n_real:])


def test_fit_falls_back_to_kmeans_when_codes_are_scarce():
    images = render_batch(catalogue_scenes())
    a = ShapesTokenizer.fit(images, num_codes=64, seed=0, iters=5)
    b = ShapesTokenizer.fit(images, num_codes=64, seed=0, iters=5)
    assert a.num_codes == 64 and torch.equal(a.codebook, b.codebook)
    assert a.decode(a.encode(images)).sub(images).abs().mean() < 0.1


def test_weighted_kmeans_hand_computed():
    pts = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 3.0]])
    w = torch.tensor([1.0, 3.0, 1.0, 1.0])
    centres = _weighted_kmeans(pts, w, 2, iters=10, gen=torch.Generator().manual_seed(0))
    got = sorted(centres.tolist())
    assert got == [[0.0, 0.75], [10.0, 1.5]]


def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / "tok.safetensors"
    tok.save(path)
    again = ShapesTokenizer.load(path)
    assert torch.equal(again.codebook, tok.codebook)
    with pytest.raises(ValueError, match="does not exist"):
        ShapesTokenizer.load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("keep", [100, -100])  # a broken header; a header whose data is cut short
def test_corrupt_file_is_a_user_error(tok, tmp_path, keep):
    path = tmp_path / "tok.safetensors"
    tok.save(path)
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(ValueError, match="is not a readable safetensors file .*; re-export it"):
        ShapesTokenizer.load(path)


def test_bad_inputs_raise_value_error(tok):
    with pytest.raises(ValueError, match="shape"):
        tok.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="MASK"):
        tok.decode(torch.full((1, 64), tok.num_codes))
    with pytest.raises(ValueError, match="shape"):
        tok.embed(torch.zeros(1, 63, dtype=torch.long))
