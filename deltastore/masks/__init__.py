"""Seeded random pruning masks that cost no storage ("feistel-rotate-v1").

The kept positions of pruning group ``t`` (n elements, k kept) at training
step ``s`` are regenerated from ``(seed, s, t)``: exactly k distinct positions
in ``[0, n)``, bit-identical in numpy and in torch on any device. No framework
RNG is used (their streams differ by device and version): only integer
arithmetic that never overflows int64.

1. :mod:`.feistel` -- a keyed bijection pi_K on ``[0, n)`` (4-round Feistel
   network with cycle-walking) and the sorted base sets ``sorted(pi_K(0..k-1))``.
2. :mod:`.generator` -- :class:`MaskGenerator`: a pool of P base sets per group,
   cached; step s picks one and rotates it by an offset.
3. :mod:`.kept` -- :func:`kept_count`, the k of a rate.

The full specification, test vectors and measured costs are in docs/MASKS.md.
"""

from __future__ import annotations

from .feistel import (
    MAX_N,
    base_set_np,
    base_set_torch,
    derive_key,
    feistel_permute_np,
    feistel_permute_torch,
    round_keys,
    splitmix64,
)
from .generator import DEFAULT_POOL, MASK_ALGORITHM, TAG_BASE, TAG_STEP, MaskGenerator, gather_rotated
from .kept import kept_count

__all__ = [
    "MASK_ALGORITHM",
    "DEFAULT_POOL",
    "MAX_N",
    "TAG_BASE",
    "TAG_STEP",
    "kept_count",
    "splitmix64",
    "derive_key",
    "round_keys",
    "feistel_permute_np",
    "feistel_permute_torch",
    "base_set_np",
    "base_set_torch",
    "gather_rotated",
    "MaskGenerator",
]
