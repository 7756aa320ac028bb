"""StoreWriter: buffers whole shards of steps and commits them off the training thread.

Commit protocol (docs/FORMAT.md §Commit): for steps [a, b) the writer
1. grows every array to b rows (zarr.json replaced atomically by Zarr's LocalStore),
2. writes each group's rows [a, b) as whole shards (one write per shard),
3. writes one Parquet index part holding the rows of steps [a, b),
4. optionally fsyncs those files,
5. atomically replaces commit.json with committed_steps = b.
A crash before 5 leaves committed_steps = a: readers never look past it, and
reopening for append truncates the tail (arrays and index) and resumes at a.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import math
import os
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import zarr
from zarr.core.sync import sync as zarr_sync  # the loop zarr.Array's own methods run on

from . import __version__
from .errors import (
    CorruptStoreError,
    InvalidArgumentError,
    RecorderClosedError,
    StoreExistsError,
    StoreNotFoundError,
)
from .format import (
    COMMIT_FILE,
    DEFAULT_CODEC_LEVEL,
    DEFAULT_INT8_BLOCK,
    DEFAULT_VALUE_DTYPE,
    INDEX_DIR,
    MANIFEST_KEY,
    Group,
    Manifest,
    build_groups,
    chunk_layout,
    compressors_for,
    default_codec,
    fsync_dir,
    num_blocks,
    parse_codec,
    parse_value_dtype,
    quantize_int8,
    read_commit,
    storage_numpy_dtype,
    storage_torch_dtype,
    write_json_atomic,
)
from .index import ID_TYPES, IndexWriter
from .plan import PruningPlan, TensorSpec
from .shards import ShardWriter

DEFAULT_BUFFER_BYTES = 256 * 2**20  # both halves of the double buffer together
DEFAULT_STEPS_PER_SHARD = 64
DEFAULT_MASK_POOL = 4


@dataclass
class _StepBuffer:
    """Host rows for up to ``capacity`` steps of every group (pinned when recording from CUDA)."""

    values: list[torch.Tensor]
    scales: list[torch.Tensor | None]
    indices: list[torch.Tensor | None]
    index_rows: list[tuple[int, int, object]]
    count: int = 0
    pending: Future | None = None
    ready_event: object = None


def _parse_path_for_create(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise StoreExistsError(
            f"{path}: expected a new or empty directory for a new store, found existing files; "
            "open it for append (mode='a') or choose another path — deltastore never overwrites"
        )


def load_manifest(root: Path) -> Manifest:
    if not (root / "zarr.json").exists():
        raise StoreNotFoundError(f"{root}: expected a deltastore store (zarr.json), found none")
    try:
        group = zarr.open_group(str(root), mode="r")
        attrs = dict(group.attrs)
    except Exception as exc:  # zarr raises several types for a damaged zarr.json
        raise CorruptStoreError(f"{root}/zarr.json: expected Zarr v3 group metadata, could not read it ({exc})") from exc
    if MANIFEST_KEY not in attrs:
        raise CorruptStoreError(f"{root}: Zarr group without a {MANIFEST_KEY!r} manifest attribute; not a deltastore store")
    return Manifest.from_json(attrs[MANIFEST_KEY], where=f"{root}/zarr.json")


class StoreWriter:
    """Low-level writer: rows of encoded group values in, committed steps out.

    Use :meth:`create` or :meth:`open_append`; the :class:`~deltastore.Recorder`
    drives it from optimizer hooks.
    """

    def __init__(self, root: Path, manifest: Manifest, committed: int, *, buffer_bytes: int, fsync: bool, pin_memory: bool):
        self.root = root
        self.manifest = manifest
        self.committed = committed
        self._next_step = committed
        self.fsync = fsync
        self._closed = False
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        group = zarr.open_group(str(root), mode="r+")
        self._values = [group[f"{g.path}/values"] for g in manifest.groups]
        self._scales = [group[f"{g.path}/scales"] if manifest.value_dtype == "int8" else None for g in manifest.groups]
        self._indices = [group[f"{g.path}/indices"] if g.stores_indices else None for g in manifest.groups]
        self._index = IndexWriter(root / INDEX_DIR, manifest.sample_id_type)
        # Steps per flush: a whole shard, unless the memory bound asks for fewer.
        self.capacity = min(manifest.steps_per_shard, _capacity(manifest.groups, manifest.value_dtype, manifest.int8_block, buffer_bytes))
        self._buffers = [self._alloc(pin_memory) for _ in range(2)]
        self._current = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deltastore-writer")
        self.bytes_written = 0
        self._shard_writers: dict[str, ShardWriter] = {}
        self.write_seconds = 0.0  # writer thread: time committing buffers
        self.wait_seconds = 0.0  # calling thread: time waiting for the writer thread

    # ---- construction -------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        specs: Sequence[TensorSpec],
        *,
        plan: PruningPlan | None = None,
        value_dtype: str = DEFAULT_VALUE_DTYPE,
        codec: str | None = None,
        codec_level: int | None = None,
        int8_block: int = DEFAULT_INT8_BLOCK,
        mask_seed: int = 0,
        mask_pool: int = DEFAULT_MASK_POOL,
        sample_id_type: str = "int64",
        steps_per_shard: int = DEFAULT_STEPS_PER_SHARD,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        fsync: bool = False,
        pin_memory: bool = False,
    ) -> "StoreWriter":
        root = Path(path)
        _parse_path_for_create(root)
        plan = plan if plan is not None else PruningPlan.layerwise()
        value_dtype = parse_value_dtype(value_dtype)
        codec = parse_codec(default_codec(value_dtype) if codec is None else codec)
        level = DEFAULT_CODEC_LEVEL[codec] if codec_level is None else int(codec_level)
        if sample_id_type not in ID_TYPES:
            raise InvalidArgumentError(f"sample_id_type: expected one of {ID_TYPES}, got {sample_id_type!r}")
        for name, v, lo in (("steps_per_shard", steps_per_shard, 1), ("int8_block", int8_block, 1), ("mask_pool", mask_pool, 1), ("buffer_bytes", buffer_bytes, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InvalidArgumentError(f"{name}: expected an integer >= {lo}, got {v!r}")
        if isinstance(mask_seed, bool) or not isinstance(mask_seed, int) or not 0 <= mask_seed < 2**63:
            raise InvalidArgumentError(f"mask_seed: expected an integer in [0, 2**63), got {mask_seed!r}")
        if not specs:
            raise InvalidArgumentError("tensors: expected at least one parameter or buffer to record, got none")
        seed = plan.seed if plan.seed is not None else mask_seed
        groups = build_groups(specs, plan)
        # A flush writes one buffer half; when the memory bound holds fewer steps than a
        # shard, shrink the shard to match, so every flush writes whole new shards (the
        # fast path) instead of rewriting part-filled ones through Zarr.
        steps_per_shard = min(steps_per_shard, _capacity(groups, value_dtype, int8_block, buffer_bytes))
        manifest = Manifest(
            tensors=tuple(specs),
            groups=tuple(groups),
            plan=plan,
            mask_seed=seed,
            mask_pool=mask_pool,
            value_dtype=value_dtype,
            int8_block=int8_block,
            codec=codec,
            codec_level=level,
            steps_per_shard=steps_per_shard,
            sample_id_type=sample_id_type,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            writer=f"deltastore {__version__}",
        )
        root.mkdir(parents=True, exist_ok=True)
        # Build everything in a hidden sibling and rename it into place, so a crash
        # during creation never leaves a half-made store at the path.
        tmp = root / ".creating"
        shutil.rmtree(tmp, ignore_errors=True)
        zgroup = zarr.open_group(str(tmp), mode="w-", attributes={MANIFEST_KEY: manifest.to_json()})
        vdt = storage_numpy_dtype(value_dtype)
        for g in groups:
            sub = zgroup.create_group(g.path, attributes={"tensors": list(g.tensors), "selection": g.selection, "k": g.k})
            _create_rows_array(sub, "values", g.k, vdt, codec, level, steps_per_shard, {"value_dtype": value_dtype})
            if value_dtype == "int8":
                _create_rows_array(sub, "scales", num_blocks(g.k, int8_block), np.dtype("float32"), codec, level, steps_per_shard, {"int8_block": int8_block})
            if g.stores_indices:
                _create_rows_array(sub, "indices", g.k, np.dtype(g.index_dtype), codec, level, steps_per_shard, {"order": "ascending"})
        (tmp / INDEX_DIR).mkdir()
        write_json_atomic(tmp / COMMIT_FILE, {"committed_steps": 0, "model_fingerprint": None}, fsync=fsync)
        # commit.json last: its presence is what makes the directory a store.
        for entry in sorted(tmp.iterdir(), key=lambda e: e.name == COMMIT_FILE):
            os.replace(entry, root / entry.name)
        tmp.rmdir()
        if fsync:
            fsync_dir(root)
        return cls(root, manifest, 0, buffer_bytes=buffer_bytes, fsync=fsync, pin_memory=pin_memory)

    @classmethod
    def open_append(cls, path: str | os.PathLike, *, buffer_bytes: int = DEFAULT_BUFFER_BYTES, fsync: bool = False, pin_memory: bool = False) -> "StoreWriter":
        """Reopen a store to record more steps; the uncommitted tail of a crash is dropped."""
        root = Path(path)
        manifest = load_manifest(root)
        committed = read_commit(root)["committed_steps"]
        truncate_uncommitted(root, manifest, committed)
        # The old fingerprint described the model at close; recording resumes, so it is void.
        write_json_atomic(root / COMMIT_FILE, {"committed_steps": committed, "model_fingerprint": None}, fsync=fsync)
        return cls(root, manifest, committed, buffer_bytes=buffer_bytes, fsync=fsync, pin_memory=pin_memory)

    def _alloc(self, pin: bool) -> _StepBuffer:
        m = self.manifest
        vdt = storage_torch_dtype(m.value_dtype)
        pin = pin and torch.cuda.is_available()

        def empty(shape, dtype):
            return torch.empty(shape, dtype=dtype, pin_memory=pin)

        values = [empty((self.capacity, g.k), vdt) for g in m.groups]
        scales = [empty((self.capacity, num_blocks(g.k, m.int8_block)), torch.float32) if m.value_dtype == "int8" else None for g in m.groups]
        idx_dt = {"int32": torch.int32, "int64": torch.int64}
        indices = [empty((self.capacity, g.k), idx_dt[g.index_dtype]) if g.stores_indices else None for g in m.groups]
        return _StepBuffer(values, scales, indices, [])

    # ---- per step -----------------------------------------------------------
    @property
    def next_step(self) -> int:
        """Global index of the step being recorded now."""
        return self._next_step

    def _check_open(self) -> None:
        if self._closed:
            raise RecorderClosedError(f"{self.root}: writer is closed; open the store again with mode='a' to record more steps")
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def put(self, group: Group, values: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        """Encode one group's pruned values (float32 or the parameter dtype, any device) into the current row."""
        buf = self._buffers[self._current]
        row = buf.count
        gid = group.id
        if self.manifest.value_dtype == "int8":
            if values.device.type == "cpu":
                quantize_int8_into(values.float(), self.manifest.int8_block, buf.values[gid][row], buf.scales[gid][row])
            else:  # quantise on the device, copy a quarter of the bytes to the host
                q, s = quantize_int8(values.float(), self.manifest.int8_block)
                buf.values[gid][row].copy_(q, non_blocking=True)
                buf.scales[gid][row].copy_(s, non_blocking=True)
        else:
            buf.values[gid][row].copy_(values, non_blocking=True)
        if group.stores_indices:
            buf.indices[gid][row].copy_(indices, non_blocking=True)

    def end_step(self, sample_ids, epoch: int) -> int:
        """Close the current row with its sample ids; flushes when the buffer is full. Returns the step."""
        self._check_open()
        buf = self._buffers[self._current]
        step = self._next_step
        buf.index_rows.append((step, int(epoch), sample_ids))
        buf.count += 1
        self._next_step += 1
        # Flush at shard ends too: after an early flush() or a resume mid-shard, the
        # next flush then completes that shard and later ones are whole shards again.
        if buf.count == self.capacity or self._next_step % self.manifest.steps_per_shard == 0:
            self._submit()
        return step

    def begin(self) -> None:
        """Make sure the current buffer is free to take a row (waits on an earlier flush of it)."""
        self._check_open()
        buf = self._buffers[self._current]
        if buf.pending is not None:
            fut, buf.pending = buf.pending, None
            self._wait(fut)  # re-raises a writer-thread error here, on the training thread

    def flush(self) -> None:
        """Commit every buffered step now and wait until it is durable."""
        self._check_open()
        if self._buffers[self._current].count:
            self._submit()
        for b in self._buffers:
            if b.pending is not None:
                fut, b.pending = b.pending, None
                self._wait(fut)

    def _direct(self, arr) -> "ShardWriter":
        w = self._shard_writers.get(arr.path)
        if w is None:
            w = self._shard_writers[arr.path] = ShardWriter(arr)
        return w

    def _wait(self, fut: Future) -> None:
        t0 = time.perf_counter()
        try:
            fut.result()
        finally:
            self.wait_seconds += time.perf_counter() - t0

    def _submit(self) -> None:
        buf = self._buffers[self._current]
        if buf.count == 0:
            return
        event = None
        if any(t.is_pinned() for t in buf.values if t.numel()):
            event = torch.cuda.Event()
            event.record()
        start = self._next_step - buf.count
        buf.pending = self._executor.submit(self._write, buf, start, buf.count, event)
        self._current = 1 - self._current
        other = self._buffers[self._current]
        if other.pending is not None:
            fut, other.pending = other.pending, None
            self._wait(fut)

    def _write(self, buf: _StepBuffer, start: int, count: int, event) -> None:
        t0 = time.perf_counter()
        try:
            if event is not None:
                event.synchronize()  # the non-blocking device->host copies have landed
            end = start + count
            touched: list[Path] = []
            jobs = []
            for gid in range(len(self.manifest.groups)):
                for arr, rows in ((self._values[gid], buf.values[gid]), (self._scales[gid], buf.scales[gid]), (self._indices[gid], buf.indices[gid])):
                    if arr is None:
                        continue
                    data = rows[:count]
                    data = data.view(torch.int16).numpy().view(np.uint16) if data.dtype == torch.bfloat16 else data.numpy()
                    jobs.append((arr, data, self._direct(arr)))
                    self.bytes_written += data.nbytes
                    if self.fsync:
                        touched.extend(_shard_files(self.root, arr, start, end))
            _grow_and_write(jobs, start, end)
            for step, epoch, ids in buf.index_rows:
                self._index.add(step, epoch, ids)
            part = self._index.flush(fsync=self.fsync)
            if self.fsync:
                for p in touched:
                    if p.exists():
                        with open(p, "rb") as f:
                            os.fsync(f.fileno())
            write_json_atomic(self.root / COMMIT_FILE, {"committed_steps": end, "model_fingerprint": None}, fsync=self.fsync)
            del part
            with self._lock:
                self.committed = end
        except BaseException as exc:  # surfaced on the training thread at the next call
            self._error = exc
            raise
        finally:
            buf.count = 0
            buf.index_rows = []
            self.write_seconds += time.perf_counter() - t0

    def close(self, fingerprint: str | None = None) -> None:
        """Flush, commit, record the final model's fingerprint, stop the writer thread."""
        if self._closed:
            return
        try:
            self.flush()
            self._index.compact(self.committed, fsync=self.fsync)
            write_json_atomic(self.root / COMMIT_FILE, {"committed_steps": self.committed, "model_fingerprint": fingerprint}, fsync=self.fsync)
        finally:
            self._closed = True
            self._executor.shutdown(wait=True)

    def abort(self) -> None:
        """Stop without committing the buffered tail (what a crash would leave)."""
        self._closed = True
        self._executor.shutdown(wait=True)

    @property
    def closed(self) -> bool:
        return self._closed


def _step_bytes(groups, value_dtype: str, int8_block: int) -> int:
    """Host bytes one buffered step takes."""
    item = storage_numpy_dtype(value_dtype).itemsize
    total = 0
    for g in groups:
        total += g.k * item
        if value_dtype == "int8":
            total += 4 * num_blocks(g.k, int8_block)
        if g.stores_indices:
            total += g.k * np.dtype(g.index_dtype).itemsize
    return total


def _capacity(groups, value_dtype: str, int8_block: int, buffer_bytes: int) -> int:
    """Steps one half of the double buffer holds under ``buffer_bytes`` (at least 1)."""
    return max(1, buffer_bytes // max(1, 2 * _step_bytes(groups, value_dtype, int8_block)))


def _grow_and_write(jobs: list, start: int, end: int) -> None:
    """Grow every array to ``end`` rows, then write rows [start, end) of each.

    Rows that start a shard (every flush of a fresh store: the buffer holds a whole
    shard, or a shard's worth of steps arrives in whole flushes) are written by
    :class:`~deltastore.shards.ShardWriter` straight to the shard files; anything else -- a partly
    written shard after a resume, an unusual codec -- through Zarr. Zarr's own
    resize calls are gathered into one event-loop round trip.

    Why not Zarr for everything: Zarr's sharded writes run every inner chunk through
    its asyncio codec pipeline, ~2 ms of Python per chunk (measured with py-spy on the
    2-core dev CPU); a ResNet-18-sized int8 step has ~40 inner chunks, so a flush cost
    ~80-90 ms per step even without compression -- most of the recorder's overhead.
    The commit order is unchanged: every array is grown, then every row written,
    then the index part, then commit.json.
    """

    async def grow() -> None:
        await asyncio.gather(*(a.async_array.resize((end, a.shape[1])) for a, _, _ in jobs if a.shape[0] < end))

    zarr_sync(grow())
    rest = [(a, d) for a, d, direct in jobs if not direct.write(d, start)]
    if rest:

        async def write() -> None:
            await asyncio.gather(*(a.async_array.setitem((slice(start, end), slice(None)), d) for a, d in rest))

        zarr_sync(write())


def quantize_int8_into(values: torch.Tensor, block: int, q_out: torch.Tensor, s_out: torch.Tensor) -> None:
    """:func:`~deltastore.format.quantize_int8` of a CPU float32 vector, written into ``q_out`` / ``s_out``.

    Bit-identical results (same division, rounding and clamp), in fewer memory
    passes: the whole blocks are viewed in place (no zero-padded copy), the
    per-block max |v| is max(-min, max) (no ``abs`` copy), and the codes go
    straight into the int8 row buffer. Only a ragged last block takes the
    reference path. ``amax`` and ``amin`` are separate reductions on purpose:
    ``torch.aminmax(dim=1)`` over 256-wide rows took 7.0 ms for 2.4 M values on the
    2-core dev CPU against 0.42 ms for the pair (torch 2.13, one thread).
    """
    k = values.numel()
    full = k // block
    if full:
        head = values[: full * block].reshape(full, block)
        lo, hi = head.amin(dim=1), head.amax(dim=1)
        scales = s_out[:full]
        torch.maximum(lo.neg_(), hi, out=scales)  # max |v| per block (NaN propagates, as in amax)
        scales.div_(127.0)
        safe = torch.where(scales > 0, scales, 1.0)
        q = torch.div(head, safe[:, None])
        q.round_().clamp_(-127, 127)
        q_out[: full * block].view(full, block).copy_(q)
    if full * block < k:
        tq, ts = quantize_int8(values[full * block :], block)
        q_out[full * block :].copy_(tq)
        s_out[full:].copy_(ts)


def _create_rows_array(parent, name: str, cols: int, dtype: np.dtype, codec: str, level: int, steps_per_shard: int, attrs: dict):
    chunks, shards = chunk_layout(cols, dtype.itemsize, steps_per_shard)
    return parent.create_array(
        name,
        shape=(0, cols),
        dtype=dtype,
        chunks=chunks,
        shards=shards,
        compressors=compressors_for(codec, level, dtype.itemsize),
        fill_value=0,
        attributes=attrs,
        dimension_names=["step", "position"],
    )


def _shard_files(root: Path, arr, start: int, end: int) -> list[Path]:
    """Files of the shards covering rows [start, end) (default v3 chunk keys: c/<i>/<j>)."""
    rows_per_shard = arr.shards[0]
    cols_shards = math.ceil(arr.shape[1] / arr.shards[1]) if arr.shape[1] else 1
    base = root / arr.path
    out = []
    for i in range(start // rows_per_shard, (end - 1) // rows_per_shard + 1):
        for j in range(cols_shards):
            out.append(base / "c" / str(i) / str(j))
    return out


def truncate_uncommitted(root: Path, manifest: Manifest, committed: int) -> None:
    """Drop rows >= committed from every array and the index (the crash tail)."""
    group = zarr.open_group(str(root), mode="r+")
    for g in manifest.groups:
        for name in ("values", "scales", "indices"):
            key = f"{g.path}/{name}"
            if key in group:
                arr = group[key]
                if arr.shape[0] > committed:
                    arr.resize((committed, arr.shape[1]))
    IndexWriter(root / INDEX_DIR, manifest.sample_id_type).truncate(committed)
