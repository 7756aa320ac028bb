"""StoreWriter: buffers whole shards of steps and commits them off the training thread.

Commit protocol (docs/FORMAT.md §5): for steps [a, b) the writer
1. grows every array to b rows (array metadata replaced atomically),
2. writes each group's rows [a, b) as whole shards (one write per shard),
3. writes one Parquet index part holding the rows of steps [a, b),
4. optionally fsyncs those objects,
5. atomically replaces commit.json with committed_steps = b.
A crash before 5 leaves committed_steps = a: readers never look past it, and
reopening for append truncates the tail (arrays and index) and resumes at a.
Every byte goes through the store's :class:`~deltastore.storage.StoreIO`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import torch
import zarr
from zarr.core.sync import sync as zarr_sync  # the loop zarr.Array's own methods run on

from ..errors import DeltaStoreError, RecorderClosedError, RecordingFailedError
from ..format import Group, Manifest, ShardEncoder, ShardLayout, read_commit, read_manifest, write_commit, write_consolidated
from ..format.trained import delete_stale_trained, write_trained
from ..format.int4 import group_rounding_key, step_rounding_key
from ..index import IndexWriter, digests_to_json
from ..plan import TensorSpec
from ..storage import open_io
from .options import RecordOptions
from .store import WRITER_LOCK, capacity, check_creatable, create_store, open_for_append, open_index


@dataclass
class _StepBuffer:
    """Host rows for up to ``capacity`` steps of every group (pinned when recording from CUDA).

    ``rows[gid][name]`` is a (capacity, cols) tensor per rows array of the group.
    """

    rows: list[dict[str, torch.Tensor]]
    index_rows: list[tuple[int, int, object]]
    count: int = 0
    pending: Future | None = None


@dataclass
class _Array:
    """One rows array being written: Zarr's handle (growth, odd shards) and the direct encoder."""

    gid: int
    name: str
    zarr: object
    encoder: ShardEncoder


class StoreWriter:
    """Low-level writer: rows of encoded group values in, committed steps out.

    Use :meth:`create` or :meth:`open_append`; the :class:`~deltastore.Recorder`
    drives it from optimizer hooks.
    """

    def __init__(self, io, manifest: Manifest, manifest_sha256: str, committed: int, options: RecordOptions, *, pin_memory: bool,
                 lease=None, index: IndexWriter | None = None, owned: frozenset[int] | None = None, with_index: bool = True):
        self.io = io
        # Multi-rank recording (record/ranked.py): this rank buffers and writes only the groups it owns,
        # and only the coordinator writes the index. None: every group (one process).
        self.owned = owned
        self._lease = lease  # the writer lock (WRITER_LOCK), held until close
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256
        self.values = manifest.values
        self._step_key = (-1, 0)  # (step, its rounding-key chain) for stochastic rounding
        self.committed = committed
        self._next_step = committed
        self.fsync = options.fsync
        self._closed = False
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        group = zarr.open_group(io.zarr_store(read_only=False, fsync=self.fsync), mode="r+", use_consolidated=False)
        self._arrays: list[_Array] = []
        for g in manifest.groups:
            if owned is not None and g.id not in owned:
                continue
            for name, (cols, dtype, _) in manifest.arrays(g).items():
                path = f"{g.path}/{name}"
                lay = ShardLayout.of(path, cols, dtype, manifest.codec, manifest.codec_level, manifest.steps_per_shard,
                                     encrypted=manifest.encryption is not None)
                self._arrays.append(_Array(g.id, name, group[path], ShardEncoder(io, lay)))
        # Encrypted stores (deltastore.crypto): a random data key per step, wrapped in key objects.
        self._step_keys = io.step_keys(manifest.steps_per_shard) if manifest.encryption is not None else None
        if self._step_keys is not None and owned is not None:
            from ..errors import InvalidArgumentError

            raise InvalidArgumentError(f"{io.url}: encrypted stores are recorded by one writer; per-rank (FSDP2) recording of an "
                                       "encrypted store is not supported yet (every rank would need the same step data keys)")
        commit = read_commit(io)
        self._index = index if index is not None or not with_index else open_index(io, manifest, commit)
        self._erased = commit.get("erased")  # purge records (FORMAT.md §5.2): every commit carries them
        # Steps per flush: a whole shard, unless the memory bound asks for fewer.
        self.capacity = min(manifest.steps_per_shard, capacity(manifest.groups, self.values, options.buffer_bytes))
        self._buffers = [self._alloc(pin_memory) for _ in range(2)]
        self._current = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deltastore-writer")
        self.write_seconds = 0.0  # writer thread: time committing buffers
        self.wait_seconds = 0.0  # calling thread: time waiting for the writer thread

    # ---- construction -------------------------------------------------------
    @classmethod
    def create(cls, location, specs: Sequence[TensorSpec], options: RecordOptions | None = None, *, pin_memory: bool = False,
               **extra) -> "StoreWriter":
        """Create a new store at ``location`` (a path or a StoreIO); refuses to overwrite anything."""
        options = RecordOptions.from_kwargs(options)
        io = open_io(location)
        check_creatable(io)  # before taking the lock, which leaves a file behind
        lease = io.acquire(WRITER_LOCK, _holder())
        try:
            manifest, digest = create_store(io, specs, options)
            return cls(io, manifest, digest, 0, options, pin_memory=pin_memory, lease=lease, **extra)
        except OSError as exc:
            lease.release()
            if isinstance(exc, DeltaStoreError):
                raise
            raise RecordingFailedError(f"{io.url}: creating the store failed ({exc}); nothing was committed, "
                                       "and the path can be used again for a new store", committed_steps=0) from exc
        except BaseException:
            lease.release()
            raise

    @classmethod
    def open_append(cls, location, options: RecordOptions | None = None, *, pin_memory: bool = False, **extra) -> "StoreWriter":
        """Reopen a store to record more steps; the uncommitted tail of a crash is dropped."""
        options = RecordOptions.from_kwargs(options)
        io = open_io(location)
        read_manifest(io)  # a store at all, before the lock leaves a file behind
        lease = io.acquire(WRITER_LOCK, _holder())
        try:
            manifest, digest, committed, index = open_for_append(io, options)
            return cls(io, manifest, digest, committed, options, pin_memory=pin_memory, lease=lease, index=index, **extra)
        except BaseException:
            lease.release()
            raise

    def _alloc(self, pin: bool) -> _StepBuffer:
        pin = pin and torch.cuda.is_available()
        m = self.manifest
        rows = []
        for g in m.groups:  # a group another rank owns gets no rows here
            rows.append({name: torch.empty((self.capacity, cols), dtype=_buffer_dtype(self.values, name, dt), pin_memory=pin)
                         for name, (cols, dt, _) in m.arrays(g).items()} if self.owned is None or g.id in self.owned else {})
        return _StepBuffer(rows, [])

    # ---- per step -----------------------------------------------------------
    @property
    def next_step(self) -> int:
        """Global index of the step being recorded now."""
        return self._next_step

    def check(self) -> None:
        """Raise the failure that stopped this recording, if one did (RecordingFailedError)."""
        if self._error is not None:
            raise self._error

    def _check_open(self) -> None:
        self.check()  # sticky: nothing is committed after a failed commit
        if self._closed:
            raise RecorderClosedError(f"{self.io.url}: writer is closed; open the store again with mode='a' to record more steps")

    def put(self, group: Group, values: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        """Encode one group's kept values (float, any device) into the current row."""
        buf = self._buffers[self._current]
        row = {name: t[buf.count] for name, t in buf.rows[group.id].items()}
        # Stochastic rounding (int4) is seeded from (mask seed, step, group): a re-recording writes the same bytes.
        key = None
        if self.values.stochastic:  # the chain up to the step once per step, one splitmix64 per group
            if self._step_key[0] != self._next_step:
                self._step_key = (self._next_step, step_rounding_key(self.manifest.mask_seed, self._next_step))
            key = group_rounding_key(self._step_key[1], group.id)
        self.values.encode_into(values, row, rounding_key=key)
        if group.selection.stores_indices:
            row["indices"].copy_(indices, non_blocking=True)

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
        if any(t.is_pinned() for rows in buf.rows for t in rows.values() if t.numel()):
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
        if self._error is not None:  # an earlier flush failed: never commit past it
            buf.count, buf.index_rows = 0, []
            raise self._error
        try:
            end = start + count
            self._write_rows(buf, start, count, event)
            self._commit(end, None)
            with self._lock:
                self.committed = end
        except BaseException as exc:  # surfaced on the training thread at every later call
            self._error = self._failure(exc, f"committing steps [{start}, {start + count})")
            raise self._error from exc
        finally:
            buf.count = 0
            buf.index_rows = []
            self.write_seconds += time.perf_counter() - t0

    def _write_rows(self, buf: _StepBuffer, start: int, count: int, event) -> None:
        """Steps 1-4 of the commit protocol for [start, start + count): arrays grown, shards and index part written."""
        if event is not None:
            event.synchronize()  # the non-blocking device->host copies have landed
        end = start + count
        if self._lease is not None:  # object storage: a lease that may have expired stops us before any write
            self._lease.check()
        jobs = []
        for a in self._arrays:
            data = self.values.as_numpy(buf.rows[a.gid][a.name][:count])
            jobs.append((a, data))
        if self._step_keys is not None:  # the steps' data keys reach their key objects before any chunk of them
            self._step_keys.prepare(start, end, fsync=self.fsync)
        self._grow_and_write(jobs, start, end)
        if self._index is not None:  # None on a multi-rank recording's peers: the coordinator writes the index
            for step, epoch, ids in buf.index_rows:
                self._index.add(step, epoch, ids)
            self._index.flush(fsync=self.fsync)

    def _commit(self, steps: int, fingerprint: str | None, digests=None, trained: dict | None = None) -> None:
        digests = self._index.digests() if digests is None else digests
        write_commit(self.io, steps, fingerprint, fsync=self.fsync, manifest_sha256=self.manifest_sha256,
                     index_digests=digests_to_json(digests), trained=trained, erased=self._erased)

    def _grow_and_write(self, jobs: list, start: int, end: int) -> None:
        """Grow every array to ``end`` rows, then write rows [start, end) of each.

        Rows that start a shard (every flush of a fresh store: the buffer holds a whole
        shard, or a shard's worth of steps arrives in whole flushes) are written by the
        :class:`~deltastore.format.ShardEncoder` straight to the shard objects; anything
        else -- a partly written shard after a resume, an unusual codec -- through Zarr.
        Zarr's own resize calls are gathered into one event-loop round trip. The commit
        order is unchanged: every array is grown, then every row written.
        """

        async def grow() -> None:
            await asyncio.gather(*(a.zarr.async_array.resize((end, a.zarr.shape[1])) for a, _ in jobs if a.zarr.shape[0] < end))

        zarr_sync(grow())
        rest = [(a, d) for a, d in jobs if not a.encoder.write(d, start, fsync=self.fsync)]
        if rest:

            async def write() -> None:
                await asyncio.gather(*(a.zarr.async_array.setitem((slice(start, end), slice(None)), d) for a, d in rest))

            zarr_sync(write())
            # Zarr writes no shard whose chunks are all zero; a store has every shard (absence is damage).
            for a, _ in rest:
                lay = a.encoder.layout
                for i in range(start // lay.shard[0], (end - 1) // lay.shard[0] + 1):
                    for j in range(-(-a.zarr.shape[1] // lay.shard[1])):
                        if not self.io.exists(lay.key(i, j)):
                            self.io.write(lay.key(i, j), a.encoder.empty_shard(), fsync=self.fsync)

    def _failure(self, exc: BaseException, what: str) -> BaseException:
        """An I/O error as the library error that stops this recording (other errors as they are)."""
        if not isinstance(exc, OSError) or isinstance(exc, DeltaStoreError):
            return exc
        err = RecordingFailedError(
            f"{self.io.url}: recording stopped: {what} failed ({exc}); steps [0, {self.committed}) are committed and intact; "
            f"reopen with mode='a' to resume at step {self.committed}", committed_steps=self.committed)
        err.__cause__ = exc
        return err

    def close(self, fingerprint: str | None = None, trained=None) -> None:
        """Flush, commit, record the final model's fingerprint, stop the writer thread, release the store.

        ``trained``: the recorded tensors by name (the final model), kept in the store under a
        fresh key that the last commit record names (FORMAT.md §5.1); forgetting derives every
        model from them. Only with a ``fingerprint``. After a failed commit nothing more is
        written: the failure is raised again.
        """
        if self._closed:
            return
        try:
            self.flush()
            self._finish(fingerprint, trained)
        finally:
            self._release()

    def _finish(self, fingerprint: str | None, trained) -> None:
        """What close writes after the last flush: the compacted index, trained weights, the final commit record."""
        try:  # compaction is crash-safe; a failure leaves the committed steps as they are
            # The merged part is recorded before the parts it replaces are deleted.
            self._index.compact(self.committed, fsync=self.fsync, commit=lambda d: self._commit(self.committed, None, d))
            ref = write_trained(self.io, trained, fsync=self.fsync) if trained is not None and fingerprint is not None else None
            self._commit(self.committed, fingerprint, trained=ref)
            if ref is not None:
                delete_stale_trained(self.io, ref["key"])  # after the commit that no longer names them
        except BaseException as exc:
            self._error = self._failure(exc, "closing (compacting the index, writing the commit record)")
            raise self._error from exc
        try:  # plain Zarr lists the store from it without warnings (FORMAT.md §2.1); last: nothing depends on it
            if self._lease is not None:  # object storage: a successor may have taken the store over (and appended)
                self._lease.check()
            write_consolidated(self.io, self.manifest, self.committed, self.manifest_sha256, fsync=self.fsync)
        except BaseException as exc:
            self._error = self._failure(exc, "closing (writing the root's consolidated metadata for plain Zarr readers; "
                                             "the fingerprint and trained weights are committed)")
            raise self._error from exc

    def _release(self) -> None:
        """Stop the writer thread and release the store (the writer lock)."""
        self._closed = True
        self._executor.shutdown(wait=True)
        if self._lease is not None:
            self._lease.release()

    def abort(self) -> None:
        """Stop without committing the buffered tail (what a crash leaves) and release the store."""
        self._closed = True
        self._executor.shutdown(wait=True)
        if self._lease is not None:
            self._lease.release()

    @property
    def closed(self) -> bool:
        return self._closed


def _holder() -> str:
    """Who holds the writer lock, for another process's error message."""
    return f"process {os.getpid()} on {socket.gethostname()} (deltastore recording since {time.strftime('%Y-%m-%d %H:%M:%S')})"


def _buffer_dtype(values, name: str, dtype) -> torch.dtype:
    """Torch dtype of a host buffer for one rows array (indices by their stored width)."""
    if name == "indices":
        return torch.int32 if dtype.itemsize == 4 else torch.int64
    return values.torch_dtype(name)
