"""Shared fixtures: a tiny self-contained adapter for engine tests, paths to shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from maskfocus_cli.models.base import Cond, MaskedT2IAdapter, StepInfo

torch.set_num_threads(int(os.environ.get("MASKFOCUS_TEST_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


class ToyNet(nn.Module):
    """tokens + prompt id → logits; small enough for hand reasoning, real enough for gradients."""

    def __init__(self, k: int = 6, n: int = 4, d: int = 8, prompts: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(k + 1, d)
        self.pos = nn.Parameter(torch.randn(n, d) * 0.5)
        self.text = nn.Embedding(prompts + 1, d)
        self.mix = nn.Linear(d, d)
        self.head = nn.Linear(d, k)

    def forward(self, tokens: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(tokens) + self.pos + self.text(prompt_ids)[:, None, :]
        h = h + torch.tanh(self.mix(h.mean(1, keepdim=True)))
        return self.head(h)


class ToyAdapter(MaskedT2IAdapter):
    family = "toy"

    def __init__(self, k: int = 6, grid: tuple[int, int] = (2, 2), seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.k, self._grid = k, grid
        self.vocab = {"": 0, "a": 1, "b": 2, "c": 3, "d": 4}
        self.transformer = ToyNet(k, grid[0] * grid[1])
        self.codebook = torch.randn(k, 3)

    @property
    def mask_id(self) -> int:
        return self.k

    @property
    def codebook_size(self) -> int:
        return self.k

    @property
    def grid(self) -> tuple[int, int]:
        return self._grid

    def encode_prompts(self, prompts: list[str]) -> Cond:
        bad = [p for p in prompts if p not in self.vocab]
        if bad:
            raise ValueError(f"unknown prompt {bad[0]!r}")
        return {"ids": torch.tensor([self.vocab[p] for p in prompts])}

    def call_transformer(self, net: nn.Module, tokens: torch.Tensor, cond: Cond, step: StepInfo) -> torch.Tensor:
        return net(tokens, cond["ids"])

    def code_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        h, w = self._grid
        return self.codebook[tokens].permute(0, 2, 1).reshape(tokens.shape[0], 3, h, w)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        h, w = self._grid
        img = torch.sigmoid(self.codebook[tokens]).permute(0, 2, 1).reshape(tokens.shape[0], 3, h, w)
        return img.repeat_interleave(4, 2).repeat_interleave(4, 3)


@pytest.fixture
def toy() -> ToyAdapter:
    return ToyAdapter()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present beside the repository")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_shapes_dir(tmp_path_factory) -> Path:
    """A tiny random built-in-architecture model saved as a shapes model folder (--model shapes:DIR)."""
    from maskfocus_cli.models.shapes import new_shapes_model
    from maskfocus_cli.shapes.tokenizer import fit_default
    torch.manual_seed(0)
    adapter = new_shapes_model(fit_default(num_scenes=200), d_model=32, n_layers=1, n_heads=2, d_ff=64)
    folder = tmp_path_factory.mktemp("tiny-shapes")
    adapter.save(folder)
    return folder
