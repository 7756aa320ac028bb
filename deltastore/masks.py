"""Seeded random pruning masks that cost no storage ("feistel-rotate-v1").

The kept positions of pruning group ``t`` (n elements, k kept) at training
step ``s`` are regenerated from ``(seed, s, t)``: exactly k distinct positions
in ``[0, n)``, bit-identical in numpy and in torch on any device. No framework
RNG is used (their streams differ by device and version); everything is
integer arithmetic that never overflows int64, so numpy int64 and torch int64
(CPU or CUDA) agree bit for bit.

Construction (full specification, constants and test vectors in
``docs/MASKS.md``):

1. A keyed bijection pi_K on ``[0, n)``: a 4-round balanced Feistel network on
   b bits (b = max(2, ceil(log2 n)) rounded up to even) with cycle-walking.
2. A pool of P base sets per group: ``B_p = sorted(pi_K(0..k-1))`` with
   ``K = derive_key(seed, TAG_BASE, t, p)``, computed once and cached.
3. Step s picks ``p = h % P`` and ``o = (h >> 32) % n`` from
   ``h = derive_key(seed, TAG_STEP, s, t)``; its kept positions, in value
   order j = 0..k-1, are ``(B_p[j] + o) mod n``.

B_p is sorted because gathering at sorted positions is sequential in memory:
measured on this project's 2-core CPU for n = 11.2 M, k = 5.6 M, a gather
at random-order positions takes ~80 ms, at sorted positions ~7 ms. A rotation
of a sorted set is two sorted runs, so :meth:`MaskGenerator.gather` and
:meth:`MaskGenerator.scatter_add_` split at the wrap point and never build
per-step positions on CPU.

Cost for n = 11.2 M, k = 5.6 M on the 2-core dev CPU (under load, so ranges):
a base set 0.23-0.67 s (numpy), once per (group, pool index); ``gather``
11-22 ms and ``scatter_add_`` 14-32 ms per step; ``rotation`` ~9 us.

>>> gen = MaskGenerator(seed=0)
>>> gen.positions_np(step=0, group=0, n=10, k=3).tolist()
[2, 3, 8]
"""

from __future__ import annotations

import math
import operator
import threading

import numpy as np
import torch

from .errors import InvalidArgumentError, InvalidPlanError

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
    "MaskGenerator",
]

MASK_ALGORITHM = "feistel-rotate-v1"
DEFAULT_POOL = 4  # base sets per group: 4 x 8k bytes cached; more pools, more mask variety
MAX_N = 2**62  # keeps the Feistel half width h <= 31, so every product fits int64

# Domain tags keep the two uses of derive_key from ever sharing an input chain.
TAG_BASE = 0x42415345  # ASCII "BASE": keys of the pool's Feistel permutations
TAG_STEP = 0x53544550  # ASCII "STEP": per-step pool index and rotation offset

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


# ----------------------------------------------------------------- validation


def _parse_uint(name: str, value, upper: int, lower: int = 0) -> int:
    """Return ``value`` as a Python int in ``[lower, upper)``, else InvalidArgumentError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgumentError(f"{name}: expected an integer in [{lower}, {_fmt(upper)}), got {value!r} ({type(value).__name__})")
    v = operator.index(value)
    if not lower <= v < upper:
        raise InvalidArgumentError(f"{name}: expected an integer in [{lower}, {_fmt(upper)}), got {v}")
    return v


def _fmt(upper: int) -> str:
    e = upper.bit_length() - 1
    return f"2**{e}" if upper == 1 << e and e > 8 else str(upper)


def _parse_n(n) -> int:
    return _parse_uint("n", n, MAX_N + 1, lower=1)


def _parse_k(k, n: int) -> int:
    return _parse_uint("k", k, n + 1)


def _parse_device(device) -> torch.device:
    dev = torch.device("cpu") if device is None else torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        # "cuda" and "cuda:0" must share one cache entry.
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


# ------------------------------------------------------------- integer mixing


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
    n = _parse_uint("n", n, MAX_N + 1)
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise InvalidPlanError(f"rate: expected a real number in [0, 1), got {rate!r} ({type(rate).__name__})")
    r = float(rate)
    if not 0.0 <= r < 1.0:  # also rejects NaN
        raise InvalidPlanError(f"rate: expected a real number in [0, 1), got {r!r}")
    k = math.floor((1.0 - r) * float(n) + 0.5)
    return min(max(k, 0), n)


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
    h = splitmix64(_parse_uint("seed", seed, 1 << 64))
    for i, w in enumerate(words):
        h = splitmix64(h ^ _parse_uint(f"word {i}", w, 1 << 64))
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
    """One application of the Feistel bijection on [0, 2**(2h)); numpy or torch int64.

    Every intermediate is non-negative and < 2**63, so numpy and torch agree and
    arithmetic right shift equals logical shift.
    """
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


def _permute_np_unchecked(ranks: np.ndarray, n: int, keys: tuple[int, ...]) -> np.ndarray:
    h = _half_width(n)
    out = _pi(ranks, h, keys)
    bad = np.flatnonzero(out >= n)
    while bad.size:  # cycle-walk only the values that left [0, n)
        v = _pi(out[bad], h, keys)
        out[bad] = v
        bad = bad[v >= n]
    return out


def _permute_torch_unchecked(ranks: torch.Tensor, n: int, keys: tuple[int, ...]) -> torch.Tensor:
    h = _half_width(n)
    out = _pi(ranks, h, keys)
    bad = torch.nonzero(out >= n).reshape(-1)  # a host sync on accelerators
    while bad.numel():
        v = _pi(out.index_select(0, bad), h, keys)
        out.index_copy_(0, bad, v)
        bad = bad[v >= n]
    return out


def _chunked(total: int, chunk: int):
    for lo in range(0, total, chunk):
        yield lo, min(lo + chunk, total)


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
    """
    n = _parse_n(n)
    keys = round_keys(_parse_uint("key", key, 1 << 64))
    r = np.asarray(ranks)
    if r.dtype.kind not in "iu":
        raise InvalidArgumentError(f"ranks: expected an integer array, got dtype {r.dtype}")
    if r.size and (int(r.min()) < 0 or int(r.max()) >= n):
        raise InvalidArgumentError(f"ranks: expected values in [0, {n}), got range [{int(r.min())}, {int(r.max())}]")
    flat = r.astype(np.int64, copy=False).reshape(-1)  # _pi never writes to its input
    out = np.empty_like(flat)
    for lo, hi in _chunked(flat.size, _CPU_CHUNK):
        out[lo:hi] = _permute_np_unchecked(flat[lo:hi], n, keys)
    return out.reshape(r.shape)


def feistel_permute_torch(ranks: torch.Tensor, n: int, key: int) -> torch.Tensor:
    """pi_key(ranks) in torch, on the device of ``ranks``; bit-identical to :func:`feistel_permute_np`.

    ``ranks`` must hold integers in ``[0, n)``; the result is int64, same shape
    and device.
    """
    n = _parse_n(n)
    keys = round_keys(_parse_uint("key", key, 1 << 64))
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
    chunk = _CPU_CHUNK if flat.device.type == "cpu" else _DEVICE_CHUNK
    for lo, hi in _chunked(flat.numel(), chunk):
        out[lo:hi] = _permute_torch_unchecked(flat[lo:hi], n, keys)
    return out.reshape(ranks.shape)


# ------------------------------------------------------------------ base sets


def _use_bitmap(n: int, k: int) -> bool:
    # Marking a bitmap of n bools and reading it back is one O(n) pass, faster
    # than sorting k values when k is a sizeable share of n; for sparse sets
    # (and n beyond memory) sort the k values instead. Same set either way.
    return n <= max(16 * k, 1 << 20)


def _base_np(n: int, k: int, key: int) -> np.ndarray:
    """sorted(pi_key(0..k-1)) as int64."""
    if k == n:  # pi is a bijection of [0, n): the set is everything
        return np.arange(n, dtype=np.int64)
    keys = round_keys(key)
    if not _use_bitmap(n, k):
        out = np.empty(k, dtype=np.int64)
        for lo, hi in _chunked(k, _CPU_CHUNK):
            out[lo:hi] = _permute_np_unchecked(np.arange(lo, hi, dtype=np.int64), n, keys)
        out.sort()
        return out
    mark = np.zeros(n, dtype=np.bool_)
    for lo, hi in _chunked(k, _CPU_CHUNK):
        mark[_permute_np_unchecked(np.arange(lo, hi, dtype=np.int64), n, keys)] = True
    return np.flatnonzero(mark).astype(np.int64, copy=False)


def _base_torch(n: int, k: int, key: int, device: torch.device) -> torch.Tensor:
    """Same set as :func:`_base_np`, computed on ``device`` (used off CPU)."""
    if k == n:
        return torch.arange(n, dtype=torch.int64, device=device)
    keys = round_keys(key)
    chunk = _CPU_CHUNK if device.type == "cpu" else _DEVICE_CHUNK
    if not _use_bitmap(n, k):
        out = torch.empty(k, dtype=torch.int64, device=device)
        for lo, hi in _chunked(k, chunk):
            out[lo:hi] = _permute_torch_unchecked(torch.arange(lo, hi, dtype=torch.int64, device=device), n, keys)
        return torch.sort(out).values
    mark = torch.zeros(n, dtype=torch.bool, device=device)
    for lo, hi in _chunked(k, chunk):
        mark[_permute_torch_unchecked(torch.arange(lo, hi, dtype=torch.int64, device=device), n, keys)] = True
    return torch.nonzero(mark).reshape(-1)


# ---------------------------------------------------------------- generator


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
    """

    def __init__(self, seed: int, pool: int = DEFAULT_POOL):
        self.seed = _parse_uint("seed", seed, 1 << 64)
        self.pool = _parse_uint("pool", pool, 1 << 32, lower=1)
        self._np_cache: dict[tuple[int, int, int, int], tuple[np.ndarray, torch.Tensor]] = {}
        self._dev_cache: dict[tuple[int, int, int, int, str], torch.Tensor] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MaskGenerator(seed={self.seed}, pool={self.pool})"

    # -- keys

    def base_key(self, group: int, pool_index: int) -> int:
        """The Feistel key K = derive_key(seed, TAG_BASE, group, pool_index)."""
        return derive_key(self.seed, TAG_BASE, _parse_uint("group", group, 1 << 64), self._parse_pool_index(pool_index))

    def rotation(self, step: int, group: int, n: int) -> tuple[int, int]:
        """(pool index, rotation offset) of ``step``: ``h % pool`` and ``(h >> 32) % n``.

        ``h = derive_key(seed, TAG_STEP, step, group)``. For n > 2**32 the
        offset only ranges over [0, 2**32): still k distinct positions.
        """
        h = derive_key(self.seed, TAG_STEP, _parse_uint("step", step, 1 << 64), _parse_uint("group", group, 1 << 64))
        return h % self.pool, (h >> 32) % _parse_n(n)

    def _parse_pool_index(self, pool_index) -> int:
        return _parse_uint("pool_index", pool_index, self.pool)

    # -- base sets

    def _np_entry(self, group: int, pool_index: int, n: int, k: int) -> tuple[np.ndarray, torch.Tensor]:
        key = (group, pool_index, n, k)
        with self._lock:
            hit = self._np_cache.get(key)
        if hit is not None:
            return hit
        arr = _base_np(n, k, self.base_key(group, pool_index))
        t = torch.from_numpy(arr)  # before write-protecting: from_numpy warns on read-only arrays
        arr.flags.writeable = False
        with self._lock:
            return self._np_cache.setdefault(key, (arr, t))

    def _check(self, group, pool_index, n, k) -> tuple[int, int, int, int]:
        n = _parse_n(n)
        return _parse_uint("group", group, 1 << 64), self._parse_pool_index(pool_index), n, _parse_k(k, n)

    def base_np(self, group: int, pool_index: int, n: int, k: int) -> np.ndarray:
        """Base set ``B_p`` of ``group``: k distinct sorted int64 positions in [0, n) (read-only, cached)."""
        return self._np_entry(*self._check(group, pool_index, n, k))[0]

    def base(self, group: int, pool_index: int, n: int, k: int, device=None) -> torch.Tensor:
        """Base set ``B_p`` as an int64 tensor on ``device`` (default CPU), cached; do not modify.

        On CPU it shares memory with :meth:`base_np`; elsewhere it is computed on
        the device itself (bit-identical, tested on CPU against numpy).
        """
        args = self._check(group, pool_index, n, k)
        dev = _parse_device(device)
        if dev.type == "cpu":
            return self._np_entry(*args)[1]
        key = (*args, str(dev))
        with self._lock:
            hit = self._dev_cache.get(key)
        if hit is not None:
            return hit
        g, p, n_, k_ = args
        t = _base_torch(n_, k_, self.base_key(g, p), dev)
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

    # -- gather / scatter

    @staticmethod
    def _check_flat(name: str, t) -> int:
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            got = f"{t.dim()}-D tensor" if isinstance(t, torch.Tensor) else type(t).__name__
            raise InvalidArgumentError(f"{name}: expected a 1-D torch.Tensor, got {got}")
        if t.numel() < 1:
            raise InvalidArgumentError(f"{name}: expected at least 1 element, got 0")
        return t.numel()

    def gather(self, flat: torch.Tensor, step: int, group: int, k: int) -> torch.Tensor:
        """Values of ``flat`` kept at ``step``, in value order j = 0..k-1 (new tensor).

        ``flat`` is the group's 1-D tensor (n = ``flat.numel()``); equals
        ``flat[positions(step, group, n, k)]``. On CPU no per-step positions
        are built: two sequential index_selects, one per run of the rotation.
        """
        n = self._check_flat("flat", flat)
        k = _parse_k(k, n)
        p, o = self.rotation(step, group, n)
        if flat.device.type == "cpu":
            arr, b = self._np_entry(operator.index(group), p, n, k)
            return _gather_split(flat, b, o, _wrap_point_np(arr, n, o))
        return _gather_index(flat, self.base(group, p, n, k, device=flat.device), o)

    def scatter_add_(self, acc_flat: torch.Tensor, values: torch.Tensor, step: int, group: int) -> None:
        """``acc_flat[positions(step, group, n, k)] += values`` in place, k = ``values.numel()``.

        Positions are distinct, so the result does not depend on summation order.
        """
        n = self._check_flat("acc_flat", acc_flat)
        if not isinstance(values, torch.Tensor) or values.dim() != 1:
            got = f"{values.dim()}-D tensor" if isinstance(values, torch.Tensor) else type(values).__name__
            raise InvalidArgumentError(f"values: expected a 1-D torch.Tensor, got {got}")
        k = values.numel()
        if k > n:
            raise InvalidArgumentError(f"values: expected at most n={n} elements, got {k}")
        if values.dtype != acc_flat.dtype or values.device != acc_flat.device:
            raise InvalidArgumentError(
                f"values: expected dtype {acc_flat.dtype} on {acc_flat.device} (like acc_flat), got {values.dtype} on {values.device}"
            )
        p, o = self.rotation(step, group, n)
        if acc_flat.device.type == "cpu":
            arr, b = self._np_entry(operator.index(group), p, n, k)
            _scatter_split(acc_flat, b, o, values, _wrap_point_np(arr, n, o))
        else:
            _scatter_index(acc_flat, self.base(group, p, n, k, device=acc_flat.device), o, values)


# Two equivalent implementations each, both tested on CPU: split (no per-step
# index array; needs the wrap point, a host-side searchsorted) for CPU, and
# index (no host sync) for accelerators.


def _wrap_point(b: torch.Tensor, n: int, o: int) -> int:
    """j0 with B[j] + o < n exactly for j < j0 (B sorted); a host sync off CPU."""
    if o == 0:
        return b.numel()
    return int(torch.searchsorted(b, torch.tensor([n - o], dtype=b.dtype, device=b.device))[0])


def _wrap_point_np(arr: np.ndarray, n: int, o: int) -> int:
    # numpy's searchsorted: ~2 us against ~12 us for torch's on small groups
    return int(np.searchsorted(arr, n - o)) if o else arr.size


def _gather_split(flat: torch.Tensor, b: torch.Tensor, o: int, j0: int | None = None) -> torch.Tensor:
    n, k = flat.numel(), b.numel()
    if j0 is None:
        j0 = _wrap_point(b, n, o)
    out = torch.empty(k, dtype=flat.dtype, device=flat.device)
    # B[j] < n - o  ->  flat[o + B[j]]  (a view, no index arithmetic)
    torch.index_select(flat[o:], 0, b[:j0], out=out[:j0])
    if j0 < k:  # B[j] >= n - o  ->  flat[B[j] - (n - o)]
        torch.index_select(flat, 0, b[j0:] - (n - o), out=out[j0:])
    return out


def _gather_index(flat: torch.Tensor, b: torch.Tensor, o: int) -> torch.Tensor:
    return flat.index_select(0, torch.remainder(b + o, flat.numel()))


def _scatter_split(acc: torch.Tensor, b: torch.Tensor, o: int, values: torch.Tensor, j0: int | None = None) -> None:
    n, k = acc.numel(), b.numel()
    if j0 is None:
        j0 = _wrap_point(b, n, o)
    acc[o:].index_add_(0, b[:j0], values[:j0])
    if j0 < k:
        acc.index_add_(0, b[j0:] - (n - o), values[j0:])


def _scatter_index(acc: torch.Tensor, b: torch.Tensor, o: int, values: torch.Tensor) -> None:
    acc.index_add_(0, torch.remainder(b + o, acc.numel()), values)

