"""Work dealt to ranks image by image (rank r takes images r, r + world, ...: the k-repeat split), and the
per-image results brought back in image order, so N ranks log and normalise what one process would."""

from __future__ import annotations

from typing import Callable

import torch


def gather_in_order(local: torch.Tensor, n: int, world: int,
                    gather: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """(n, C) rows of all ranks in image order, from this rank's (len(range(rank, n, world)), C) rows.

    ``gather`` concatenates equal-length tensors from every rank in rank order (accelerate's ``gather``);
    shares that differ by one image are padded to the longest and the padding dropped."""
    if world == 1:
        return local
    share = -(-n // world)
    padded = torch.zeros(share, local.shape[1], dtype=local.dtype)
    padded[:len(local)] = local
    both = gather(padded).reshape(world, share, -1)
    order = torch.arange(share)[None] * world + torch.arange(world)[:, None]  # image index of (rank, slot)
    keep = order < n
    full = torch.empty(n, local.shape[1], dtype=local.dtype)
    full[order[keep]] = both[keep]
    return full
