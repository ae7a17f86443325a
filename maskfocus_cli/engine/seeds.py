"""Seeds derived from names: all randomness in a run is a pure function of (seed, iteration, sample, purpose),
so a resumed run repeats the uninterrupted one and N ranks see what one process would."""

from __future__ import annotations

import hashlib


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions)."""
    h = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)
