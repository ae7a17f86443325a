"""The validation reward split over ranks gives one process's numbers."""

from types import SimpleNamespace

import pytest
import torch

from maskfocus_cli.engine.monitor import validation_reward


class _Stop(Exception):
    pass


def _samples(prompts, seeds):
    for lo in range(0, len(prompts), 5):  # micro-batches of 5 images; an "image" is its seed
        yield lo, torch.tensor(seeds[lo:lo + 5], dtype=torch.float32)


def _reward(images, prompts, metas):
    return SimpleNamespace(total=images / 100, valid=(images.long() % 7) != 0)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_score_their_share_and_the_gathered_result_is_one_process_s(world):
    rows = [(f"p{i}", {"tag": ["colors", "position"][i % 2]}) for i in range(5)]  # 20 images: uneven over 3
    seeds = list(range(100, 120))
    alone = validation_reward(_reward, _samples, rows, seeds)
    shares = []

    def capture(local):
        shares.append(local)
        raise _Stop

    for r in range(world):
        with pytest.raises(_Stop):
            validation_reward(_reward, _samples, rows, seeds, rank=r, world=world, gather=capture)
    assert len(shares) == world and all(s.shape == shares[0].shape for s in shares)  # padded to equal shares
    together = validation_reward(_reward, _samples, rows, seeds, rank=0, world=world,
                                 gather=lambda local: torch.cat(shares))
    assert together == alone
    kept = [s / 100 for s in seeds if s % 7]
    assert alone["reward"]["mean"] == pytest.approx(sum(kept) / len(kept))
