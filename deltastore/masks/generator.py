"""MaskGenerator: the per-step kept positions of feistel-rotate-v1 (docs/MASKS.md §4-§5).

A pool of P sorted base sets per group, cached; step s picks one and a rotation
offset from ``derive_key(seed, TAG_STEP, s, t)``. Gathering at a rotation of a
sorted set is two sequential runs, so on CPU no per-step positions are built.
"""

from __future__ import annotations

import operator
import threading

import numpy as np
import torch

from ..errors import InvalidArgumentError
from ._parse import parse_device, parse_k, parse_uint
from .feistel import base_set_np, base_set_torch, derive_key, parse_n

__all__ = ["MASK_ALGORITHM", "DEFAULT_POOL", "TAG_BASE", "TAG_STEP", "MaskGenerator", "gather_rotated"]

MASK_ALGORITHM = "feistel-rotate-v1"
DEFAULT_POOL = 4  # base sets per group: 4 x 8k bytes cached; more pools, more mask variety

# Domain tags keep the two uses of derive_key from ever sharing an input chain.
TAG_BASE = 0x42415345  # ASCII "BASE": keys of the pool's Feistel permutations
TAG_STEP = 0x53544550  # ASCII "STEP": per-step pool index and rotation offset

_GATHER_METHODS = ("split", "index")


class MaskGenerator:
    """Regenerates the seeded masks of one store (one seed, one pool size).

    Parameters
    ----------
    seed : int
        Mask seed, ``0 <= seed < 2**64``.
    pool : int
        Base sets per group (the manifest's ``mask.pool``), ``>= 1``.

    Notes
    -----
    Base sets are cached per ``(group, pool_index, n, k, device)`` as int64
    (8 bytes per kept element; a CPU entry is one numpy array, shared with
    the torch tensor that :meth:`base` returns). The cache holds exactly what
    callers asked for -- at most ``pool`` entries per group and device for a
    fixed plan -- and is freed by :meth:`clear_cache`. int64 and not int32:
    int32 indices measured no faster for sorted gathers here, and index_add_
    and the reader's doubled-buffer trick want int64.

    Cached arrays are shared: do not modify them (numpy ones are read-only).
    Thread-safe: concurrent calls may compute one entry twice, never wrongly.

    >>> MaskGenerator(seed=0).positions_np(step=0, group=0, n=10, k=3).tolist()
    [2, 3, 8]
    """

    def __init__(self, seed: int, pool: int = DEFAULT_POOL):
        self.seed = parse_uint("seed", seed, 1 << 64)
        self.pool = parse_uint("pool", pool, 1 << 32, lower=1)
        self._np_cache: dict[tuple[int, int, int, int], tuple[np.ndarray, torch.Tensor]] = {}
        self._dev_cache: dict[tuple[int, int, int, int, str], torch.Tensor] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MaskGenerator(seed={self.seed}, pool={self.pool})"

    # -- keys

    def base_key(self, group: int, pool_index: int) -> int:
        """The Feistel key K = derive_key(seed, TAG_BASE, group, pool_index)."""
        return derive_key(self.seed, TAG_BASE, parse_uint("group", group, 1 << 64), self._parse_pool_index(pool_index))

    def rotation(self, step: int, group: int, n: int) -> tuple[int, int]:
        """(pool index, rotation offset) of ``step``: ``h % pool`` and ``(h >> 32) % n``.

        ``h = derive_key(seed, TAG_STEP, step, group)``. For n > 2**32 the
        offset only ranges over [0, 2**32): still k distinct positions.
        """
        h = derive_key(self.seed, TAG_STEP, parse_uint("step", step, 1 << 64), parse_uint("group", group, 1 << 64))
        return h % self.pool, (h >> 32) % parse_n(n)

    def _parse_pool_index(self, pool_index) -> int:
        return parse_uint("pool_index", pool_index, self.pool)

    # -- base sets

    def _np_entry(self, group: int, pool_index: int, n: int, k: int) -> tuple[np.ndarray, torch.Tensor]:
        key = (group, pool_index, n, k)
        with self._lock:
            hit = self._np_cache.get(key)
        if hit is not None:
            return hit
        arr = base_set_np(n, k, self.base_key(group, pool_index))
        t = torch.from_numpy(arr)  # before write-protecting: from_numpy warns on read-only arrays
        arr.flags.writeable = False
        with self._lock:
            return self._np_cache.setdefault(key, (arr, t))

    def _check(self, group, pool_index, n, k) -> tuple[int, int, int, int]:
        n = parse_n(n)
        return parse_uint("group", group, 1 << 64), self._parse_pool_index(pool_index), n, parse_k(k, n)

    def base_np(self, group: int, pool_index: int, n: int, k: int) -> np.ndarray:
        """Base set ``B_p`` of ``group``: k distinct sorted int64 positions in [0, n) (read-only, cached)."""
        return self._np_entry(*self._check(group, pool_index, n, k))[0]

    def base(self, group: int, pool_index: int, n: int, k: int, device=None) -> torch.Tensor:
        """Base set ``B_p`` as an int64 tensor on ``device`` (default CPU), cached; do not modify.

        On CPU it shares memory with :meth:`base_np`; elsewhere it is computed on
        the device itself (bit-identical, tested on CPU against numpy).
        """
        args = self._check(group, pool_index, n, k)
        dev = parse_device(device)
        if dev.type == "cpu":
            return self._np_entry(*args)[1]
        key = (*args, str(dev))
        with self._lock:
            hit = self._dev_cache.get(key)
        if hit is not None:
            return hit
        g, p, n_, k_ = args
        t = base_set_torch(n_, k_, self.base_key(g, p), dev)
        with self._lock:
            return self._dev_cache.setdefault(key, t)

    def clear_cache(self) -> None:
        """Drop every cached base set (they are recomputed on demand)."""
        with self._lock:
            self._np_cache.clear()
            self._dev_cache.clear()

    def cache_nbytes(self) -> int:
        """Bytes held by cached base sets (CPU entries counted once)."""
        with self._lock:
            return sum(a.nbytes for a, _ in self._np_cache.values()) + sum(
                t.numel() * t.element_size() for t in self._dev_cache.values()
            )

    # -- positions

    def positions(self, step: int, group: int, n: int, k: int, device=None) -> torch.Tensor:
        """Kept positions of ``step`` in value order: ``(B_p[j] + o) mod n``, int64, new tensor."""
        p, o = self.rotation(step, group, n)
        b = self.base(group, p, n, k, device=device)
        return torch.remainder(b + o, n)

    def positions_np(self, step: int, group: int, n: int, k: int) -> np.ndarray:
        """numpy twin of :meth:`positions`."""
        p, o = self.rotation(step, group, n)
        return (self.base_np(group, p, n, k) + o) % n

    # -- gather

    def gather(self, flat: torch.Tensor, step: int, group: int, k: int) -> torch.Tensor:
        """Values of ``flat`` kept at ``step``, in value order j = 0..k-1 (new tensor).

        ``flat`` is the group's 1-D tensor (n = ``flat.numel()``); equals
        ``flat[positions(step, group, n, k)]``. On CPU no per-step positions
        are built: two sequential index_selects, one per run of the rotation.
        """
        n = _check_flat("flat", flat)
        k = parse_k(k, n)
        p, o = self.rotation(step, group, n)
        if flat.device.type == "cpu":
            arr, b = self._np_entry(operator.index(group), p, n, k)
            # numpy's searchsorted: ~2 us against ~12 us for torch's on small groups
            j0 = int(np.searchsorted(arr, n - o)) if o else arr.size
            return _gather_split(flat, b, o, j0)
        return _gather_index(flat, self.base(group, p, n, k, device=flat.device), o)


def gather_rotated(flat: torch.Tensor, base: torch.Tensor, offset: int, *, method: str | None = None) -> torch.Tensor:
    """``flat[(base + offset) mod n]``: the values at a rotated sorted set, in value order (new tensor).

    Parameters
    ----------
    flat : torch.Tensor
        1-D, n elements.
    base : torch.Tensor
        int64, 1-D, ascending distinct positions in ``[0, n)`` (a base set), on ``flat``'s device.
    offset : int
        Rotation offset in ``[0, n)``.
    method : {"split", "index"} or None
        ``"split"``: two sequential index_selects, one per run of the rotation, no
        per-step index array (the wrap point costs a host sync off CPU);
        ``"index"``: one index_select at ``(base + offset) mod n`` (no host sync).
        None: split on CPU, index elsewhere, as :meth:`MaskGenerator.gather` does.
        Both give the same tensor.
    """
    n = _check_flat("flat", flat)
    if not isinstance(base, torch.Tensor) or base.dim() != 1 or base.dtype != torch.int64 or base.device != flat.device:
        got = f"{base.dim()}-D {base.dtype} on {base.device}" if isinstance(base, torch.Tensor) else type(base).__name__
        raise InvalidArgumentError(f"base: expected a 1-D int64 tensor on {flat.device}, got {got}")
    if base.numel() > n:
        raise InvalidArgumentError(f"base: expected at most n={n} positions, got {base.numel()}")
    o = parse_uint("offset", offset, n)
    if method is None:
        method = "split" if flat.device.type == "cpu" else "index"
    if method == "split":
        j0 = int(torch.searchsorted(base, torch.tensor([n - o], dtype=base.dtype, device=base.device))[0]) if o else base.numel()
        return _gather_split(flat, base, o, j0)
    if method == "index":
        return _gather_index(flat, base, o)
    raise InvalidArgumentError(f"method: expected one of {_GATHER_METHODS} or None, got {method!r}")


def _check_flat(name: str, t) -> int:
    if not isinstance(t, torch.Tensor) or t.dim() != 1:
        got = f"{t.dim()}-D tensor" if isinstance(t, torch.Tensor) else type(t).__name__
        raise InvalidArgumentError(f"{name}: expected a 1-D torch.Tensor, got {got}")
    if t.numel() < 1:
        raise InvalidArgumentError(f"{name}: expected at least 1 element, got 0")
    return t.numel()


def _gather_split(flat: torch.Tensor, b: torch.Tensor, o: int, j0: int) -> torch.Tensor:
    """``j0``: the number of base positions below ``n - o`` (the wrap point)."""
    n, k = flat.numel(), b.numel()
    out = torch.empty(k, dtype=flat.dtype, device=flat.device)
    # B[j] < n - o  ->  flat[o + B[j]]  (a view, no index arithmetic)
    torch.index_select(flat[o:], 0, b[:j0], out=out[:j0])
    if j0 < k:  # B[j] >= n - o  ->  flat[B[j] - (n - o)]
        torch.index_select(flat, 0, b[j0:] - (n - o), out=out[j0:])
    return out


def _gather_index(flat: torch.Tensor, b: torch.Tensor, o: int) -> torch.Tensor:
    return flat.index_select(0, torch.remainder(b + o, flat.numel()))
