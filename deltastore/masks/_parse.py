"""Argument checks shared by the mask modules: integers in a range, devices.

The public functions check their inputs here, at the edge; the arithmetic
behind them trusts what it is given.
"""

from __future__ import annotations

import operator

import numpy as np
import torch

from ..errors import InvalidArgumentError


def parse_uint(name: str, value, upper: int, lower: int = 0) -> int:
    """``value`` as a Python int in ``[lower, upper)``, else InvalidArgumentError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgumentError(f"{name}: expected an integer in [{lower}, {_bound(upper)}), got {value!r} ({type(value).__name__})")
    v = operator.index(value)
    if not lower <= v < upper:
        raise InvalidArgumentError(f"{name}: expected an integer in [{lower}, {_bound(upper)}), got {v}")
    return v


def _bound(upper: int) -> str:
    # "2**64" reads better than 18446744073709551616 in a message
    e = upper.bit_length() - 1
    return f"2**{e}" if upper == 1 << e and e > 8 else str(upper)


def parse_k(k, n: int) -> int:
    """A kept count: an integer in ``[0, n]``."""
    return parse_uint("k", k, n + 1)


def parse_device(device) -> torch.device:
    """``device`` as a torch.device (None is CPU); a bare "cuda" gets the current index."""
    dev = torch.device("cpu") if device is None else torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        # "cuda" and "cuda:0" must share one cache entry.
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev
