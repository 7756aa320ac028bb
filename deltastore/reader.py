"""StoreReader: read-only access to a store, and the fast path that sums updates.

``sum_updates(steps, device=...)`` is what unlearning uses: chunk reads and
decoding run on worker threads (Zarr/Blosc release the GIL) while the caller's
thread moves decoded rows to the device (pinned, non-blocking on CUDA) and
scatter-adds them into one dense accumulator per tensor. Random-mode masks are
regenerated on the device; nothing but values crosses the bus.
"""

from __future__ import annotations

import os
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

from .errors import CorruptStoreError, DeviceError, InvalidArgumentError, ModelMismatchError
from .format import INDEX_DIR, Group, Manifest, build_groups, decode_values, read_commit
from .index import SampleIndex
from .masks import MaskGenerator
from .plan import PruningPlan
from .selection import random_positions, select_top_magnitude
from .writer import load_manifest


class _CountingStore(LocalStore):
    """LocalStore that counts the bytes it returns (for receipts and benchmarks)."""

    bytes_read = 0

    async def get(self, key, prototype, byte_range=None):
        buf = await super().get(key, prototype, byte_range)
        if buf is not None:
            type(self).bytes_read += len(buf)  # class-level: zarr may copy the store object
        return buf


def parse_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r}: CUDA is not available on this machine (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r}: expected an index below {torch.cuda.device_count()}, got {dev.index}")
    elif dev.type != "cpu":
        raise DeviceError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    return dev


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
            raw = self._values[gid].get_orthogonal_selection((sel, slice(None)))
            scales = self._scales[gid].get_orthogonal_selection((sel, slice(None))) if self._scales[gid] is not None else None
            idx = self._indices[gid].get_orthogonal_selection((sel, slice(None))) if self._indices[gid] is not None else None
        except Exception as exc:  # checksum/decode failures surface as several exception types
            raise self._locate_corruption(gid, steps, exc) from exc
        vals = decode_values(raw, self.manifest.value_dtype, scales, self.manifest.int8_block)
        ind = torch.from_numpy(idx.astype(np.int64, copy=False)) if idx is not None else None
        if ind is not None and ind.numel() and (int(ind.min()) < 0 or int(ind.max()) >= g.n):
            bad = int(sel[int(((ind < 0) | (ind >= g.n)).any(dim=1).nonzero()[0])])
            raise CorruptStoreError(f"step {bad}, tensor {','.join(g.tensors)}: stored index out of range [0, {g.n})", step=bad, tensor=",".join(g.tensors))
        return vals, ind

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

    def _work_units(self, order: list[int]) -> list[tuple[int, list[int]]]:
        return [(g.id, b) for b in self._shard_batches(order) for g in self.manifest.groups]

    def _stream(self, units, dev: torch.device, progress: bool):
        """Read+decode units on worker threads; yield them in order, already on ``dev``."""
        pin = dev.type == "cuda"
        window = max(2, 2 * self.threads)

        def load(unit):
            gid, b = unit
            vals, idx = self.read_rows(gid, b)
            if pin:
                vals = vals.pin_memory()
                idx = idx.pin_memory() if idx is not None else None
            return vals, idx

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
                    vals, idx = fut.result()
                    nxt = next(it, None)
                    if nxt is not None:
                        queue.append((nxt, pool.submit(load, nxt)))
                    if dev.type != "cpu":
                        vals = vals.to(dev, non_blocking=True)
                        idx = idx.to(dev, non_blocking=True) if idx is not None else None
                    bar.update(1)
                    yield u, vals, idx
            finally:
                for _, f in queue:
                    f.cancel()
                bar.close()

    def _sum_stored(self, order: list[int], dev: torch.device, progress: bool) -> dict[str, torch.Tensor]:
        m = self.manifest
        # Random groups accumulate into a doubled buffer: position (B[j] + o) lands at
        # acc2[o + B[j]], so each step is one index_add_ with the cached base, no modulo.
        accs = {g.id: torch.zeros(2 * g.n if g.selection == "random" else g.n, dtype=torch.float32, device=dev) for g in m.groups}
        for (gid, b), vals, idx in self._stream(self._work_units(order), dev, progress):
            g = m.groups[gid]
            acc = accs[gid]
            if g.selection == "all":
                acc += vals.sum(dim=0)
            elif g.selection == "magnitude":
                acc.index_add_(0, idx.reshape(-1), vals.reshape(-1))
            else:
                for j, s in enumerate(b):
                    p, o = self.masks.rotation(s, g.id, g.n)
                    acc.narrow(0, o, g.n).index_add_(0, self.masks.base(g.id, p, g.n, g.k, device=dev), vals[j])
        out: dict[str, torch.Tensor] = {}
        for g in m.groups:
            acc = accs[g.id]
            if g.selection == "random":
                acc = acc[: g.n] + acc[g.n :]
            self._split(out, g, acc)
        return out

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
        # Same accumulation layout as _sum_stored, so both paths add in the same order.
        accs = {g.id: torch.zeros(2 * g.n if g.selection == "random" else g.n, dtype=torch.float32, device=dev) for g in vgroups}
        stored_of = {g.tensors[0]: g.id for g in m.groups}
        units = self._work_units(order)
        pending: dict[tuple, dict[int, torch.Tensor]] = {}
        for (gid, b), vals, _ in self._stream(units, dev, progress):
            key = tuple(b)
            pending.setdefault(key, {})[gid] = vals
            if len(pending[key]) < len(m.groups):
                continue
            rows = pending.pop(key)
            for vg in vgroups:
                dense = torch.cat([rows[stored_of[t]] for t in vg.tensors], dim=1) if len(vg.tensors) > 1 else rows[stored_of[vg.tensors[0]]]
                acc = accs[vg.id]
                if vg.selection == "all":
                    acc += dense.sum(dim=0)
                    continue
                for j, s in enumerate(b):
                    if vg.selection == "random":
                        p, o = masks.rotation(s, vg.id, vg.n)
                        pos = random_positions(masks, s, vg.id, vg.n, vg.k, device=dev)
                        acc.narrow(0, o, vg.n).index_add_(0, masks.base(vg.id, p, vg.n, vg.k, device=dev), dense[j].index_select(0, pos))
                    else:
                        idx = select_top_magnitude(dense[j], vg.k)
                        acc.index_add_(0, idx, dense[j].index_select(0, idx))
        out: dict[str, torch.Tensor] = {}
        for vg in vgroups:
            acc = accs[vg.id]
            if vg.selection == "random":
                acc = acc[: vg.n] + acc[vg.n :]
            self._split(out, vg, acc)
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
