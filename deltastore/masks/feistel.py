"""The keyed bijection of feistel-rotate-v1: splitmix64 key chains, a 4-round Feistel
network with cycle-walking, and the sorted sets it maps ranks ``0..k-1`` to.

Specified in docs/MASKS.md §1-§4. Every intermediate is a non-negative integer
below 2**63, so numpy int64 and torch int64 (CPU or CUDA) agree bit for bit and an
arithmetic right shift equals a logical one. Key derivation runs on Python ints
(exact mod 2**64); only the four 32-bit round keys reach the arrays.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidArgumentError
from ._parse import parse_device, parse_k, parse_uint

__all__ = [
    "MAX_N",
    "parse_n",
    "splitmix64",
    "derive_key",
    "round_keys",
    "feistel_permute_np",
    "feistel_permute_torch",
    "base_set_np",
    "base_set_torch",
]

MAX_N = 2**62  # keeps the Feistel half width h <= 31, so every product fits int64

_U64 = (1 << 64) - 1
_M32 = 0xFFFFFFFF
_ROUND_MUL = 0x45D9F3B  # < 2**27: (x < 2**32) * _ROUND_MUL < 2**59, no int64 overflow
_ROUNDS = 4
# Ranks per batch on CPU: the ~40 elementwise passes of 4 rounds stay in cache
# (measured best between 2**17 and 2**18 on the 2-core dev machine).
_CPU_CHUNK = 1 << 18
# On accelerators chunking only adds host syncs (cycle-walking checks); this
# bound only caps temporary memory (~5 x 8 bytes per rank).
_DEVICE_CHUNK = 1 << 24


def parse_n(n) -> int:
    """A domain size: an integer in ``[1, MAX_N]``."""
    return parse_uint("n", n, MAX_N + 1, lower=1)


def _parse_key(key) -> int:
    return parse_uint("key", key, 1 << 64)


# ------------------------------------------------------------- integer mixing


def splitmix64(x: int) -> int:
    """One step of the splitmix64 generator from state ``x``, on Python ints mod 2**64.

    ``z = x + 0x9E3779B97F4A7C15; z = (z ^ z>>30) * 0xBF58476D1CE4E5B9;
    z = (z ^ z>>27) * 0x94D049BB133111EB; return z ^ z>>31`` (all mod 2**64).

    >>> hex(splitmix64(0))
    '0xe220a8397b1dcdaf'
    """
    z = (x + 0x9E3779B97F4A7C15) & _U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return z ^ (z >> 31)


def derive_key(seed: int, *words: int) -> int:
    """Chain splitmix64 over a seed and words: a 64-bit key.

    ``h = splitmix64(seed)``, then for each word ``w``: ``h = splitmix64(h ^ w)``.
    ``seed`` and every word must be integers in ``[0, 2**64)``.

    >>> hex(derive_key(0))
    '0xe220a8397b1dcdaf'
    """
    h = splitmix64(parse_uint("seed", seed, 1 << 64))
    for i, w in enumerate(words):
        h = splitmix64(h ^ parse_uint(f"word {i}", w, 1 << 64))
    return h


def round_keys(key: int) -> tuple[int, ...]:
    """The four 32-bit Feistel round keys of ``key``: ``derive_key(key, i) mod 2**32``, i = 0..3."""
    return tuple(derive_key(key, i) & _M32 for i in range(_ROUNDS))


def _half_width(n: int) -> int:
    """h = b/2 with b = max(2, ceil(log2 n)) rounded up to even."""
    b = max(2, (n - 1).bit_length())  # (n-1).bit_length() == ceil(log2 n) for n >= 1
    return (b + 1) // 2


# ------------------------------------------------------------------ Feistel


def _pi(v, h: int, keys: tuple[int, ...]):
    """One application of the Feistel bijection on [0, 2**(2h)); numpy or torch int64."""
    hm = (1 << h) - 1
    left = v >> h  # high half
    right = v & hm  # low half
    for k in keys:
        # F(right, k); in-place ops keep one temporary per round.
        x = right ^ k
        x &= _M32
        x *= _ROUND_MUL
        x &= _M32
        x ^= x >> 16
        x *= _ROUND_MUL
        x &= _M32
        x ^= x >> 16
        x &= hm
        x ^= left
        left, right = right, x
    left <<= h
    left |= right
    return left


def _permute_np(ranks: np.ndarray, n: int, keys: tuple[int, ...]) -> np.ndarray:
    h = _half_width(n)
    out = _pi(ranks, h, keys)
    bad = np.flatnonzero(out >= n)
    while bad.size:  # cycle-walk only the values that left [0, n)
        v = _pi(out[bad], h, keys)
        out[bad] = v
        bad = bad[v >= n]
    return out


def _permute_torch(ranks: torch.Tensor, n: int, keys: tuple[int, ...]) -> torch.Tensor:
    h = _half_width(n)
    out = _pi(ranks, h, keys)
    bad = torch.nonzero(out >= n).reshape(-1)  # a host sync on accelerators
    while bad.numel():
        v = _pi(out.index_select(0, bad), h, keys)
        out.index_copy_(0, bad, v)
        bad = bad[v >= n]
    return out


def _chunks(total: int, chunk: int):
    for lo in range(0, total, chunk):
        yield lo, min(lo + chunk, total)


def _chunk_for(device: torch.device) -> int:
    return _CPU_CHUNK if device.type == "cpu" else _DEVICE_CHUNK


def feistel_permute_np(ranks: np.ndarray, n: int, key: int) -> np.ndarray:
    """pi_key(ranks): the keyed bijection of ``[0, n)`` applied elementwise (numpy).

    Parameters
    ----------
    ranks : numpy.ndarray
        Integers in ``[0, n)``, any shape; converted to int64.
    n : int
        Domain size, ``1 <= n <= 2**62``.
    key : int
        64-bit permutation key (round keys via :func:`round_keys`).

    Returns
    -------
    numpy.ndarray
        int64, same shape; distinct ranks map to distinct values in ``[0, n)``.

    >>> feistel_permute_np(np.arange(10), 10, 0xFA88D1341E893AAA).tolist()
    [9, 1, 3, 2, 0, 5, 4, 6, 7, 8]
    """
    n = parse_n(n)
    keys = round_keys(_parse_key(key))
    r = np.asarray(ranks)
    if r.dtype.kind not in "iu":
        raise InvalidArgumentError(f"ranks: expected an integer array, got dtype {r.dtype}")
    if r.size and (int(r.min()) < 0 or int(r.max()) >= n):
        raise InvalidArgumentError(f"ranks: expected values in [0, {n}), got range [{int(r.min())}, {int(r.max())}]")
    flat = r.astype(np.int64, copy=False).reshape(-1)  # _pi never writes to its input
    out = np.empty_like(flat)
    for lo, hi in _chunks(flat.size, _CPU_CHUNK):
        out[lo:hi] = _permute_np(flat[lo:hi], n, keys)
    return out.reshape(r.shape)


def feistel_permute_torch(ranks: torch.Tensor, n: int, key: int) -> torch.Tensor:
    """pi_key(ranks) in torch, on the device of ``ranks``; bit-identical to :func:`feistel_permute_np`.

    ``ranks`` must hold integers in ``[0, n)``; the result is int64, same shape
    and device.
    """
    n = parse_n(n)
    keys = round_keys(_parse_key(key))
    if not isinstance(ranks, torch.Tensor):
        raise InvalidArgumentError(f"ranks: expected a torch.Tensor, got {type(ranks).__name__}")
    if ranks.dtype.is_floating_point or ranks.dtype.is_complex or ranks.dtype == torch.bool:
        raise InvalidArgumentError(f"ranks: expected an integer tensor, got dtype {ranks.dtype}")
    if ranks.numel():
        lo, hi = int(ranks.min()), int(ranks.max())
        if lo < 0 or hi >= n:
            raise InvalidArgumentError(f"ranks: expected values in [0, {n}), got range [{lo}, {hi}]")
    flat = ranks.reshape(-1).to(torch.int64)
    out = torch.empty_like(flat)
    for lo, hi in _chunks(flat.numel(), _chunk_for(flat.device)):
        out[lo:hi] = _permute_torch(flat[lo:hi], n, keys)
    return out.reshape(ranks.shape)


# ------------------------------------------------------------------ base sets


def _use_bitmap(n: int, k: int) -> bool:
    # Marking a bitmap of n bools and reading it back is one O(n) pass, faster
    # than sorting k values when k is a sizeable share of n; for sparse sets
    # (and n beyond memory) sort the k values instead. Same set either way.
    return n <= max(16 * k, 1 << 20)


def base_set_np(n: int, k: int, key: int) -> np.ndarray:
    """``sorted(pi_key(0..k-1))``: k distinct ascending int64 positions in ``[0, n)`` (docs/MASKS.md §4).

    >>> base_set_np(10, 3, 0xFA88D1341E893AAA).tolist()
    [1, 3, 9]
    """
    n = parse_n(n)
    k = parse_k(k, n)
    keys = round_keys(_parse_key(key))
    if k == n:  # pi is a bijection of [0, n): the set is everything
        return np.arange(n, dtype=np.int64)
    if not _use_bitmap(n, k):
        out = np.empty(k, dtype=np.int64)
        for lo, hi in _chunks(k, _CPU_CHUNK):
            out[lo:hi] = _permute_np(np.arange(lo, hi, dtype=np.int64), n, keys)
        out.sort()
        return out
    mark = np.zeros(n, dtype=np.bool_)
    for lo, hi in _chunks(k, _CPU_CHUNK):
        mark[_permute_np(np.arange(lo, hi, dtype=np.int64), n, keys)] = True
    return np.flatnonzero(mark).astype(np.int64, copy=False)


def base_set_torch(n: int, k: int, key: int, device=None) -> torch.Tensor:
    """The set of :func:`base_set_np` computed in torch on ``device`` (the path used off CPU).

    Bit-identical to :func:`base_set_np`; an int64 tensor of k ascending positions.
    """
    n = parse_n(n)
    k = parse_k(k, n)
    keys = round_keys(_parse_key(key))
    dev = parse_device(device)
    if k == n:
        return torch.arange(n, dtype=torch.int64, device=dev)
    chunk = _chunk_for(dev)
    if not _use_bitmap(n, k):
        out = torch.empty(k, dtype=torch.int64, device=dev)
        for lo, hi in _chunks(k, chunk):
            out[lo:hi] = _permute_torch(torch.arange(lo, hi, dtype=torch.int64, device=dev), n, keys)
        return torch.sort(out).values
    mark = torch.zeros(n, dtype=torch.bool, device=dev)
    for lo, hi in _chunks(k, chunk):
        mark[_permute_torch(torch.arange(lo, hi, dtype=torch.int64, device=dev), n, keys)] = True
    return torch.nonzero(mark).reshape(-1)
