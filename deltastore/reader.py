"""StoreReader: read-only access to a store, and the fast path that sums updates.

``sum_updates(steps, device=...)`` is what unlearning uses: chunk reads and
decoding run on worker threads. On CUDA the caller's thread moves decoded rows
to the device (pinned, non-blocking) and scatter-adds them into one dense
accumulator per tensor; random-mode masks are regenerated on the device, and
nothing but values crosses the bus. On CPU the workers also add what they
decoded, each group's units in step order.

Reads bypass Zarr's read path where the layout is the one our writer makes
(:class:`_ShardRows`: ``pread`` of the shard index and inner chunks, numcodecs
decoding, crc32c checked -- all off the GIL); anything else is read through Zarr
with basic slices. Measured on a ResNet-18 store (24 steps, 2 cores, loaded
machine): read_decode 15.9 s -> 0.86 s, sum_updates 17.8 s -> 1.85 s.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import zarr
from zarr.storage import LocalStore

from .devices import parse_device  # noqa: F401  (re-exported: callers import it from here)
from .errors import CorruptStoreError, InvalidArgumentError, ModelMismatchError
from .format import INDEX_DIR, Group, Manifest, build_groups, decode_values, read_commit
from .index import SampleIndex
from .masks import MaskGenerator
from .plan import PruningPlan
from .selection import random_positions, select_top_magnitude
from .shards import shard_layout
from .writer import load_manifest


_UNIT_BYTES = 16 * 2**20  # float32 bytes one read task decodes at most (see _work_units)


class _CountingStore(LocalStore):
    """LocalStore that counts the bytes it returns (for receipts and benchmarks)."""

    bytes_read = 0
    _lock = threading.Lock()

    @classmethod
    def count(cls, n: int) -> None:
        with cls._lock:  # the shard fast path adds from several threads
            cls.bytes_read += n

    async def get(self, key, prototype, byte_range=None):
        buf = await super().get(key, prototype, byte_range)
        if buf is not None:
            type(self).count(len(buf))  # class-level: zarr may copy the store object
        return buf


@dataclass
class SumResult:
    """Dense summed updates per tensor, and what it cost."""

    updates: dict[str, torch.Tensor]
    steps: list[int]
    bytes_read: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


class StoreReader:
    """Open a store read-only. Only committed steps are visible."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None):
        self.root = Path(path)
        self.manifest: Manifest = load_manifest(self.root)
        commit = read_commit(self.root)
        self.committed_steps: int = commit["committed_steps"]
        self.model_fingerprint: str | None = commit.get("model_fingerprint")
        self._store_cls = type("_Counting", (_CountingStore,), {"bytes_read": 0})
        store = self._store_cls(str(self.root), read_only=True)
        self._group = zarr.open_group(store, mode="r")
        m = self.manifest
        try:
            self._values = [self._group[f"{g.path}/values"] for g in m.groups]
            self._scales = [self._group[f"{g.path}/scales"] if m.value_dtype == "int8" else None for g in m.groups]
            self._indices = [self._group[f"{g.path}/indices"] if g.stores_indices else None for g in m.groups]
        except KeyError as exc:
            raise CorruptStoreError(f"{self.root}: expected the arrays named in the manifest, missing {exc}") from exc
        for g, arr in zip(m.groups, self._values):
            if arr.shape[0] < self.committed_steps or arr.shape[1] != g.k:
                raise CorruptStoreError(
                    f"{self.root}/{g.path}/values: expected at least {self.committed_steps} rows of {g.k} values, got shape {arr.shape}",
                    tensor=",".join(g.tensors),
                )
        # Direct shard readers where the layout is the one our writer makes (else Zarr slices).
        self._fast = {
            id(arr): _ShardRows.for_array(arr, self.root, self._store_cls.count)
            for arrs in (self._values, self._scales, self._indices) for arr in arrs if arr is not None
        }
        self.masks = MaskGenerator(m.mask_seed, m.mask_pool)
        self._index: SampleIndex | None = None
        self.threads = threads or min(8, (os.cpu_count() or 2))

    # ---- basics ------------------------------------------------------------
    @property
    def index(self) -> SampleIndex:
        if self._index is None:
            self._index = SampleIndex(self.root / INDEX_DIR, self.manifest.sample_id_type, self.committed_steps)
        return self._index

    @property
    def bytes_read(self) -> int:
        return self._store_cls.bytes_read

    def nbytes_stored(self) -> dict[str, int]:
        """Bytes on disk per array path, plus 'index' and 'total'."""
        out: dict[str, int] = {}
        for g in self.manifest.groups:
            for name in ("values", "scales", "indices"):
                d = self.root / g.path / name
                if d.exists():
                    out[f"{g.path}/{name}"] = _dir_bytes(d)
        out["index"] = _dir_bytes(self.root / INDEX_DIR)
        out["total"] = _dir_bytes(self.root)
        return out

    def parse_steps(self, steps: Iterable[int]) -> list[int]:
        arr = np.asarray(list(steps) if not isinstance(steps, np.ndarray) else steps)
        if arr.size == 0:
            return []
        if arr.dtype.kind not in "iu":
            raise InvalidArgumentError(f"steps: expected integers, got dtype {arr.dtype}")
        bad = arr[(arr < 0) | (arr >= self.committed_steps)]
        if bad.size:
            raise InvalidArgumentError(
                f"steps: expected committed steps in [0, {self.committed_steps}), got {bad[:5].tolist()}"
            )
        return sorted(set(int(s) for s in arr.tolist()))

    # ---- raw rows ---------------------------------------------------------------
    def read_rows(self, gid: int, steps: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decoded float32 values (len(steps), k) and int64 indices (or None), CPU."""
        g = self.manifest.groups[gid]
        sel = np.asarray(steps, dtype=np.int64)
        try:
            raw = self._rows(self._values[gid], sel)
            scales = self._rows(self._scales[gid], sel) if self._scales[gid] is not None else None
            idx = self._rows(self._indices[gid], sel) if self._indices[gid] is not None else None
        except Exception as exc:  # checksum/decode failures surface as several exception types
            raise self._locate_corruption(gid, steps, exc) from exc
        vals = _decode(raw, self.manifest.value_dtype, scales, self.manifest.int8_block)
        ind = torch.from_numpy(idx.astype(np.int64, copy=False)) if idx is not None else None
        if ind is not None and ind.numel() and (int(ind.min()) < 0 or int(ind.max()) >= g.n):
            bad = int(sel[int(((ind < 0) | (ind >= g.n)).any(dim=1).nonzero()[0])])
            raise CorruptStoreError(f"step {bad}, tensor {','.join(g.tensors)}: stored index out of range [0, {g.n})", step=bad, tensor=",".join(g.tensors))
        return vals, ind

    def _rows(self, arr, sel: np.ndarray) -> np.ndarray:
        fast = self._fast.get(id(arr))
        return fast.read(sel) if fast is not None else _read_rows(arr, sel)

    def _locate_corruption(self, gid: int, steps: Sequence[int], exc: BaseException) -> CorruptStoreError:
        g = self.manifest.groups[gid]
        name = ",".join(g.tensors)
        for s in steps:
            try:
                for arr in (self._values[gid], self._scales[gid], self._indices[gid]):
                    if arr is not None:
                        arr[int(s)]
            except Exception as inner:
                return CorruptStoreError(f"step {s}, tensor {name}: stored chunk is unreadable or fails its checksum ({inner})", step=int(s), tensor=name)
        return CorruptStoreError(f"steps {list(steps)[:5]}, tensor {name}: could not read ({exc})", tensor=name)

    def read_step(self, step: int, tensor: str) -> torch.Tensor:
        """The stored (pruned) update of one tensor at one step, dense, zeros where pruned."""
        (s,) = self.parse_steps([step])
        try:
            g = self.manifest.group_of(tensor)
        except KeyError:
            raise InvalidArgumentError(f"tensor: expected one of {[t.name for t in self.manifest.tensors]}, got {tensor!r}") from None
        vals, idx = self.read_rows(g.id, [s])
        flat = torch.zeros(g.n, dtype=torch.float32)
        self._scatter(flat, g, s, vals[0], None if idx is None else idx[0])
        i = g.tensors.index(tensor)
        spec = self.manifest.tensor(tensor)
        return flat[g.offsets[i] : g.offsets[i] + g.numels[i]].reshape(spec.shape)

    def _scatter(self, flat: torch.Tensor, g: Group, step: int, vals: torch.Tensor, idx: torch.Tensor | None) -> None:
        if g.selection == "all":
            flat += vals
        elif g.selection == "random":
            flat.index_add_(0, random_positions(self.masks, step, g.id, g.n, g.k, device=flat.device), vals)
        else:
            flat.index_add_(0, idx, vals)

    def iter_steps(self, steps: Iterable[int], *, prefetch: int = 2) -> Iterator[tuple[int, dict[int, tuple[torch.Tensor, torch.Tensor | None]]]]:
        """Yield (step, {group id: (values, indices)}) in storage order, reading ahead."""
        order = self.parse_steps(steps)
        batches = self._shard_batches(order)
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            queue: deque = deque()
            it = iter(batches)

            def submit_next():
                b = next(it, None)
                if b is not None:
                    queue.append((b, [pool.submit(self.read_rows, g.id, b) for g in self.manifest.groups]))

            for _ in range(max(1, prefetch)):
                submit_next()
            while queue:
                b, futs = queue.popleft()
                rows = [f.result() for f in futs]
                submit_next()
                for j, s in enumerate(b):
                    yield s, {gid: (v[j], None if i is None else i[j]) for gid, (v, i) in enumerate(rows)}

    def _shard_batches(self, steps: list[int]) -> list[list[int]]:
        per = self.manifest.steps_per_shard
        out: list[list[int]] = []
        for s in steps:
            if out and out[-1][0] // per == s // per:
                out[-1].append(s)
            else:
                out.append([s])
        return out

    # ---- the fast path ------------------------------------------------------------
    def sum_updates(
        self,
        steps: Iterable[int],
        *,
        device="cpu",
        plan: PruningPlan | None = None,
        progress: bool = False,
    ) -> SumResult:
        """Σ over ``steps`` of the stored updates, as dense float32 tensors on ``device``.

        ``plan`` prunes at unlearning time (only on a store recorded dense): the
        same seeded masks / top-|Δw| rule as recording with that plan.
        """
        dev = parse_device(device)
        order = self.parse_steps(steps)
        t0 = time.perf_counter()
        b0 = self.bytes_read
        if plan is not None:
            accs = self._sum_with_plan(order, dev, plan, progress)
        else:
            accs = self._sum_stored(order, dev, progress)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return SumResult(updates=accs, steps=order, bytes_read=self.bytes_read - b0, seconds=time.perf_counter() - t0)

    def _work_units(self, order: list[int], *, split: bool = True) -> list[tuple[int, list[int]]]:
        """(group id, steps of one shard) to read and decode as one task.

        With ``split``, a unit decodes to at most ``_UNIT_BYTES`` of float32: memory in
        flight stays bounded, and buffers stay small enough for malloc to reuse
        (fresh multi-MB allocations page-fault on every use).
        """
        out: list[tuple[int, list[int]]] = []
        for b in self._shard_batches(order):
            per_group = []
            for g in self.manifest.groups:
                rows = max(1, _UNIT_BYTES // (4 * max(1, g.k))) if split else len(b)
                per_group.append([(g.id, b[i : i + rows]) for i in range(0, len(b), rows)])
            # Round-robin over groups: neighbouring units belong to different groups, so
            # workers adding them never wait on each other (a group's units add in order).
            out.extend(u for level in itertools.zip_longest(*per_group) for u in level if u is not None)
        return out

    def _stream(self, units, dev: torch.device, progress: bool, *, with_masks: bool = False):
        """Read+decode units on worker threads; yield them in order, already on ``dev``.

        Yields ``(unit, values, indices, masks)``; with ``with_masks``, ``masks`` lists
        (rotation offset, base set) per step of a random group's unit, fetched on the
        worker too: a fresh reader builds its base sets there, in parallel and
        overlapped with reading.
        """
        window = max(2, 2 * self.threads)

        def load(unit):
            return self._load_unit(unit, dev, with_masks)

        bar = _progress(len(units), progress, "reading updates")
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            queue: deque = deque()
            it = iter(units)
            for _ in range(window):
                u = next(it, None)
                if u is not None:
                    queue.append((u, pool.submit(load, u)))
            try:
                while queue:
                    u, fut = queue.popleft()
                    vals, idx, masks = fut.result()
                    nxt = next(it, None)
                    if nxt is not None:
                        queue.append((nxt, pool.submit(load, nxt)))
                    if dev.type != "cpu":
                        vals = vals.to(dev, non_blocking=True)
                        idx = idx.to(dev, non_blocking=True) if idx is not None else None
                    bar.update(1)
                    yield u, vals, idx, masks
            finally:
                for _, f in queue:
                    f.cancel()
                bar.close()

    def _load_unit(self, unit, dev: torch.device, with_masks: bool):
        """Read and decode one unit; with ``with_masks``, also its random group's (offset, base set) per step."""
        gid, b = unit
        g = self.manifest.groups[gid]
        vals, idx = self.read_rows(gid, b)
        if dev.type == "cuda":
            vals = vals.pin_memory()
            idx = idx.pin_memory() if idx is not None else None
        masks = None
        if with_masks and g.selection == "random":
            masks = []
            for s in b:
                p, o = self.masks.rotation(s, g.id, g.n)
                masks.append((o, self.masks.base(g.id, p, g.n, g.k, device=dev)))
        return vals, idx, masks

    @staticmethod
    def _add_unit(sums: "_Sums", g: Group, vals, idx, masks) -> None:
        if g.selection == "all":
            for row in vals:
                sums.add(g, row)
        elif g.selection == "magnitude":
            for row, ind in zip(vals, idx):
                sums.add_at(g, ind, row)
        else:
            for row, (o, base) in zip(vals, masks):
                sums.add_rotated(g, o, base, row)

    def _sum_stored(self, order: list[int], dev: torch.device, progress: bool) -> dict[str, torch.Tensor]:
        m = self.manifest
        sums = _Sums(m.groups, dev)
        units = self._work_units(order)
        if dev.type == "cpu":
            self._accumulate_on_workers(units, sums, progress)
        else:
            for (gid, _), vals, idx, masks in self._stream(units, dev, progress, with_masks=True):
                self._add_unit(sums, m.groups[gid], vals, idx, masks)
        out: dict[str, torch.Tensor] = {}
        for g in m.groups:
            self._split(out, g, sums.result(g))
        return out

    def _accumulate_on_workers(self, units: list, sums: "_Sums", progress: bool) -> None:
        """CPU: each worker reads, decodes and adds its own unit.

        With one accumulating thread, the adds (about as costly as decoding for
        random groups) ran beside two decoding threads on two cores and the cores
        sat ~35 % idle (ResNet-18 class request: 2.6 CPU-s in 2.05 s). Here every
        thread does both. A group's units still add in order -- a unit waits for
        its group's previous unit -- so every element gets its additions in step
        order and the sum is bit-identical to the one-thread path. Units are
        submitted in order, so the unit a worker waits for has already started.
        """
        groups = self.manifest.groups
        seq: list[int] = []
        counts: dict[int, int] = {}
        for gid, _ in units:
            seq.append(counts.get(gid, 0))
            counts[gid] = seq[-1] + 1
        turn = dict.fromkeys(counts, 0)
        cond = threading.Condition()
        failed = [False]

        def work(i: int) -> None:
            gid = units[i][0]
            try:
                vals, idx, masks = self._load_unit(units[i], torch.device("cpu"), True)
                with cond:
                    cond.wait_for(lambda: failed[0] or turn[gid] == seq[i])
                    if failed[0]:
                        return
                self._add_unit(sums, groups[gid], vals, idx, masks)  # this group is ours until turn moves
            except BaseException:
                with cond:
                    failed[0] = True
                    cond.notify_all()
                raise
            with cond:
                turn[gid] += 1
                cond.notify_all()

        window = max(2, 2 * self.threads)  # units decoded ahead: bounds memory
        bar = _progress(len(units), progress, "reading updates")
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            pending: deque = deque()
            try:
                for i in range(len(units)):
                    if len(pending) >= window:
                        pending.popleft().result()
                        bar.update(1)
                    pending.append(pool.submit(work, i))
                while pending:
                    pending.popleft().result()
                    bar.update(1)
            except BaseException:
                with cond:
                    failed[0] = True
                    cond.notify_all()
                for f in pending:
                    f.cancel()
                raise
            finally:
                bar.close()

    def _split(self, out: dict, g: Group, flat: torch.Tensor) -> None:
        for name, off, n in zip(g.tensors, g.offsets, g.numels):
            out[name] = flat[off : off + n].reshape(self.manifest.tensor(name).shape)

    def _sum_with_plan(self, order: list[int], dev: torch.device, plan: PruningPlan, progress: bool) -> dict[str, torch.Tensor]:
        m = self.manifest
        if any(g.selection != "all" for g in m.groups):
            raise InvalidArgumentError(
                f"plan: unlearn-time pruning needs a store recorded dense (rho=0), this one was recorded with {m.plan.describe()}"
            )
        vgroups = build_groups(list(m.tensors), plan)
        masks = MaskGenerator(plan.seed if plan.seed is not None else m.mask_seed, m.mask_pool)
        # The same accumulator as _sum_stored, row by row: both paths add in the same order.
        sums = _Sums(vgroups, dev)
        stored_of = {g.tensors[0]: g.id for g in m.groups}
        units = self._work_units(order, split=False)  # every group of a batch together
        pending: dict[tuple, dict[int, torch.Tensor]] = {}
        for (gid, b), vals, _, _ in self._stream(units, dev, progress):
            key = tuple(b)
            pending.setdefault(key, {})[gid] = vals
            if len(pending[key]) < len(m.groups):
                continue
            rows = pending.pop(key)
            for vg in vgroups:
                dense = torch.cat([rows[stored_of[t]] for t in vg.tensors], dim=1) if len(vg.tensors) > 1 else rows[stored_of[vg.tensors[0]]]
                for j, s in enumerate(b):
                    if vg.selection == "all":
                        sums.add(vg, dense[j])
                    elif vg.selection == "random":
                        p, o = masks.rotation(s, vg.id, vg.n)
                        pos = random_positions(masks, s, vg.id, vg.n, vg.k, device=dev)
                        base = masks.base(vg.id, p, vg.n, vg.k, device=dev)
                        sums.add_rotated(vg, o, base, dense[j].index_select(0, pos))
                    else:
                        idx = select_top_magnitude(dense[j], vg.k)
                        sums.add_at(vg, idx, dense[j].index_select(0, idx))
        out: dict[str, torch.Tensor] = {}
        for vg in vgroups:
            self._split(out, vg, sums.result(vg))
        return out

    def read_decode(self, steps: Iterable[int]) -> dict:
        """Only read and decode the chunks of ``steps`` (no device, no accumulation): the floor for sum_updates."""
        order = self.parse_steps(steps)
        t0 = time.perf_counter()
        b0 = self.bytes_read
        n = 0
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            for vals, _ in pool.map(lambda u: self.read_rows(*u), self._work_units(order)):
                n += vals.numel()
        return {"seconds": time.perf_counter() - t0, "bytes_read": self.bytes_read - b0, "values": n}

    def check_model(self, named: dict[str, torch.Tensor]) -> None:
        """Raise ModelMismatchError unless ``named`` has every recorded tensor with its shape."""
        problems = []
        for t in self.manifest.tensors:
            if t.name not in named:
                problems.append(f"missing {t.name}")
            elif tuple(named[t.name].shape) != tuple(t.shape):
                problems.append(f"{t.name}: expected shape {list(t.shape)}, got {list(named[t.name].shape)}")
        if problems:
            raise ModelMismatchError(f"{self.root}: model does not match the store: " + "; ".join(problems[:10]))

    def close(self) -> None:
        self._index = None

    def __enter__(self) -> "StoreReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_store(path: str | os.PathLike, **kwargs) -> StoreReader:
    """Open a store read-only."""
    return StoreReader(path, **kwargs)


# Zarr's orthogonal selection with an integer row array is ~10x slower than basic
# slicing (measured: 24 rows of 1.1 M int8 values, 949 ms against 79 ms), so rows
# are read as slices of consecutive steps. A slice call has a fixed cost (~1.3 ms
# measured) worth decoding about this many bytes, so runs separated by a smaller
# gap are read as one slice and the gap rows dropped.
_GAP_BYTES = 256 * 1024


def _row_runs(sel: np.ndarray, row_bytes: int) -> list[tuple[int, int]]:
    """Half-open row ranges covering the sorted, distinct rows ``sel``, small gaps merged."""
    max_gap = _GAP_BYTES // max(1, row_bytes)
    runs: list[tuple[int, int]] = []
    for s in sel.tolist():
        if runs and s - runs[-1][1] <= max_gap:
            runs[-1] = (runs[-1][0], s + 1)
        else:
            runs.append((s, s + 1))
    return runs


def _read_rows(arr, sel: np.ndarray) -> np.ndarray:
    """``arr[sel, :]`` (rows in the order of ``sel``) through basic slices only."""
    uniq = np.unique(sel)
    runs = _row_runs(uniq, arr.dtype.itemsize * arr.shape[1])
    parts = [arr[a:b] for a, b in runs]
    block = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    if block.shape[0] == sel.size and uniq.size == sel.size and np.array_equal(uniq, sel):
        return block  # exactly the requested rows, in order
    starts = np.array([a for a, _ in runs], dtype=np.int64)
    offsets = np.cumsum([0] + [b - a for a, b in runs[:-1]])
    r = np.searchsorted(starts, sel, side="right") - 1
    return block[offsets[r] + sel - starts[r]]


def _decode(raw: np.ndarray, value_dtype: str, scales: np.ndarray | None, block: int) -> torch.Tensor:
    """:func:`~deltastore.format.decode_values`, int8 dequantised in one numpy pass.

    The same float32 products q * scale (bit-identical), without materialising a
    repeated scale per value; numpy, not torch, because this runs on reader
    threads, where torch's OpenMP teams would oversubscribe the cores.
    """
    if value_dtype != "int8" or raw.ndim != 2 or scales is None:
        return decode_values(raw, value_dtype, scales, block)
    rows, k = raw.shape
    scales = np.asarray(scales, dtype=np.float32)
    out = np.empty((rows, k), dtype=np.float32)
    full = k // block
    if full * block == k:
        np.multiply(raw.reshape(rows, full, block), scales[:, :full, None], out=out.reshape(rows, full, block))
    else:
        for r in range(rows):  # a row prefix of whole blocks is a view; a 2-D one would be a copy
            if full:
                np.multiply(raw[r, : full * block].reshape(full, block), scales[r, :full, None], out=out[r, : full * block].reshape(full, block))
            np.multiply(raw[r, full * block :], scales[r, full], out=out[r, full * block :])
    return torch.from_numpy(out)


class _Sums:
    """One dense float32 accumulator per group; every add is one row (one step).

    Each element gets at most one addition per row, in step order, so the result
    does not depend on how rows were batched, nor on numpy or torch doing the add:
    the stored path and the unlearn-time-plan path agree bit for bit. Random groups
    use a doubled buffer: position (B[j] + o) mod n lands at acc2[o + B[j]], no
    modulo per value; the halves are folded once at the end.

    On CPU the accumulators are numpy arrays: np.zeros maps zero pages lazily where
    torch.zeros writes them all (measured: with torch's zeros, adds and fold,
    sum_updates took twice as long). Dense rows add with np.add (GIL-free); scatters
    use torch's index_add_ on the same memory, because np.add.at holds the GIL:
    two threads scattering ran at 0.70x the speed of one, index_add_ at 1.5x, and
    the ResNet-18 60-step sum went from 1.15 s to 0.88 s on 2 cores.
    """

    def __init__(self, groups, dev: torch.device):
        self.cpu = dev.type == "cpu"
        size = {g.id: 2 * g.n if g.selection == "random" else g.n for g in groups}
        if self.cpu:
            self.accs = {gid: np.zeros(n, dtype=np.float32) for gid, n in size.items()}
        else:
            self.accs = {gid: torch.zeros(n, dtype=torch.float32, device=dev) for gid, n in size.items()}

    def add(self, g: Group, row: torch.Tensor) -> None:
        acc = self.accs[g.id]
        if self.cpu:
            np.add(acc, row.numpy(), out=acc)
        else:
            acc += row

    def add_at(self, g: Group, idx: torch.Tensor, row: torch.Tensor) -> None:
        """acc[idx] += row, ``idx`` distinct."""
        acc = self.accs[g.id]
        if self.cpu:
            torch.from_numpy(acc).index_add_(0, idx, row)
        else:
            acc.index_add_(0, idx, row)

    def add_rotated(self, g: Group, o: int, base: torch.Tensor, row: torch.Tensor) -> None:
        """acc[(base + o) mod n] += row; ``base`` sorted and distinct."""
        acc = self.accs[g.id]
        if self.cpu:
            torch.from_numpy(acc[o : o + g.n]).index_add_(0, base, row)
        else:
            acc.narrow(0, o, g.n).index_add_(0, base, row)

    def result(self, g: Group) -> torch.Tensor:
        acc = self.accs.pop(g.id)
        if g.selection == "random":
            acc = acc[: g.n] + acc[g.n :]
        return torch.from_numpy(acc) if self.cpu else acc


_EMPTY = (1 << 64) - 1  # shard index entry of a chunk that was never written (all fill value)


class _ShardRows:
    """Rows of one (steps, k) array read straight from its shard files: the fast path.

    Zarr's own read path costs about 1.3 ms per call in its event loop (one thread,
    holding the GIL), which for ~100 small groups outweighs the data. For the
    layout our writer makes -- sharding_indexed, index at the end (bytes + crc32c),
    inner chunks bytes -> blosc|zstd|none -> crc32c, default "/" keys -- this reads
    the shard index and the needed inner chunks with ``os.pread`` and decodes them
    with numcodecs (GIL released), checksums verified as Zarr does. Any other
    layout returns None from :meth:`for_array` and is read through Zarr.
    """

    def __init__(self, base: Path, shape, dtype, inner, shard, decoder, fill, count):
        self.base, self.k, self.dtype = base, int(shape[1]), dtype
        self.rc, self.cc = inner
        self.sps, self.scols = shard
        self.per_row = self.scols // self.cc  # inner chunks across one shard row
        self.nchunks = (self.sps // self.rc) * self.per_row
        self.decoder, self.fill, self.count = decoder, fill, count

    @classmethod
    def for_array(cls, arr, root: Path, count) -> "_ShardRows | None":
        layout = shard_layout(arr)  # the same eligibility rules as the writer's direct path
        if layout is None:
            return None
        decoder = layout.chain[0] if len(layout.chain) == 2 else None  # chain: [compressor,] "crc32c"
        return cls(root / arr.path, arr.shape, np.dtype(arr.dtype), layout.chunk, layout.shard, decoder, layout.fill_value, count)

    def read(self, sel: np.ndarray) -> np.ndarray:
        """``arr[sel, :]`` for committed rows ``sel`` (any order, repeats allowed)."""
        order = np.argsort(sel, kind="stable")
        out = np.empty((sel.size, self.k), dtype=self.dtype)
        j = 0
        while j < order.size:  # one shard (row of shards) at a time
            shard = int(sel[order[j]]) // self.sps
            e = j
            while e < order.size and int(sel[order[e]]) // self.sps == shard:
                e += 1
            for cs in range(-(-self.k // self.scols)):
                self._read_shard(out, sel, order[j:e], shard, cs)
            j = e
        return out

    def _read_shard(self, out: np.ndarray, sel: np.ndarray, positions: np.ndarray, shard: int, cs: int) -> None:
        import google_crc32c

        lo_col = cs * self.scols
        hi_col = min(self.k, lo_col + self.scols)
        path = self.base / "c" / str(shard) / str(cs)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # Zarr writes no shard whose chunks all equal the fill value
            out[positions, lo_col:hi_col] = self.fill
            return
        try:
            size = os.fstat(fd).st_size
            n_index = 16 * self.nchunks + 4
            raw_index = os.pread(fd, n_index, size - n_index) if size >= n_index else b""
            if len(raw_index) != n_index or google_crc32c.value(raw_index[:-4]) != int.from_bytes(raw_index[-4:], "little"):
                raise ValueError(f"{path}: shard index is truncated or fails its checksum")
            index = np.frombuffer(raw_index, dtype="<u8", count=2 * self.nchunks).reshape(self.nchunks, 2)
            read = n_index
            p = 0
            while p < positions.size:  # one inner row of chunks at a time
                inner_row = (int(sel[positions[p]]) % self.sps) // self.rc
                e = p
                while e < positions.size and (int(sel[positions[e]]) % self.sps) // self.rc == inner_row:
                    e += 1
                rows_out = positions[p:e]
                rows_in = sel[rows_out] % self.sps - inner_row * self.rc
                for c in range(self.per_row):
                    lo = lo_col + c * self.cc
                    if lo >= hi_col:
                        break
                    hi = min(hi_col, lo + self.cc)
                    off, nbytes = (int(x) for x in index[inner_row * self.per_row + c])
                    if off == _EMPTY and nbytes == _EMPTY:
                        out[rows_out, lo:hi] = self.fill
                        continue
                    buf = os.pread(fd, nbytes, off)
                    read += len(buf)
                    payload = np.frombuffer(buf, dtype=np.uint8)[:-4]  # a view: no copy of the chunk
                    if len(buf) != nbytes or nbytes < 4 or google_crc32c.value(payload) != int.from_bytes(buf[-4:], "little"):
                        raise ValueError(f"{path}: inner chunk {inner_row},{c} is truncated or fails its checksum")
                    if self.rc == 1 and hi - lo == self.cc and rows_out.size == 1:
                        self._decode_into(payload, out[int(rows_out[0]), lo:hi])  # straight into the output row
                    else:
                        chunk = np.empty((self.rc, self.cc), dtype=self.dtype)
                        self._decode_into(payload, chunk.reshape(-1))
                        out[rows_out, lo:hi] = chunk[rows_in, : hi - lo]
                p = e
            self.count(read)
        finally:
            os.close(fd)

    def _decode_into(self, payload, dest: np.ndarray) -> None:
        if self.decoder is None:
            if len(payload) != dest.nbytes:
                raise ValueError(f"inner chunk: expected {dest.nbytes} bytes, got {len(payload)}")
            dest[...] = np.frombuffer(payload, dtype=self.dtype)
        else:
            got = self.decoder.decode(payload, out=dest)
            if got is not dest and np.asarray(got).nbytes != dest.nbytes:
                raise ValueError(f"inner chunk: expected {dest.nbytes} bytes decoded, got {np.asarray(got).nbytes}")


def _dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="chunk", leave=False)
