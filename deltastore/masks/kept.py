"""How many elements a pruning rate keeps: the k of every group (docs/MASKS.md, kept_count)."""

from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidPlanError
from ._parse import parse_uint
from .feistel import MAX_N

__all__ = ["kept_count"]


def kept_count(n: int, rate: float) -> int:
    """Number of elements kept when pruning ``n`` elements at ``rate``.

    ``k = floor((1 - rate) * n + 0.5)`` in IEEE float64, clamped to ``[0, n]``.

    Parameters
    ----------
    n : int
        Number of elements, ``0 <= n <= 2**62``.
    rate : float
        Pruning rate, the fraction dropped; must be in ``[0, 1)``.

    Raises
    ------
    InvalidPlanError
        ``rate`` is not a real number in ``[0, 1)``.
    InvalidArgumentError
        ``n`` is not an integer in ``[0, 2**62]``.

    >>> kept_count(10, 0.25), kept_count(3, 0.5), kept_count(1, 0.9)
    (8, 2, 0)
    """
    n = parse_uint("n", n, MAX_N + 1)
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise InvalidPlanError(f"rate: expected a real number in [0, 1), got {rate!r} ({type(rate).__name__})")
    r = float(rate)
    if not 0.0 <= r < 1.0:  # also rejects NaN
        raise InvalidPlanError(f"rate: expected a real number in [0, 1), got {r!r}")
    k = math.floor((1.0 - r) * float(n) + 0.5)
    return min(max(k, 0), n)
