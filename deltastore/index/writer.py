"""IndexWriter: append ``(sample_id, step, epoch)`` rows as Parquet parts; truncate and compact them.

Every part is written with its lookup sidecar, the sidecar first: a part that
is visible always has its sidecar, and a crash between the two leaves only an
orphan sidecar, which :meth:`IndexWriter.truncate` and :meth:`IndexWriter.compact`
delete. Deleting goes the other way (part, then sidecar); a part without a
sidecar is still read correctly, through pyarrow.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InvalidArgumentError
from ..storage import StoreIO
from .ids import check_id_type, parse_sample_ids
from .parts import (
    COMPRESSIONS, STEP_LIMIT, PartRef, check_step, index_schema, join_key, list_index, open_part, part_name,
    read_part_table, sort_dedupe, write_part,
)
from .sidecar import write_sidecar

__all__ = ["IndexWriter"]

_INT32_MAX = 2**31 - 1
_MAX_ROW_GROUP = 1 << 27


# Below one row group, pyarrow's route reads a single group (1,000 ids in ~1-3 ms), and a
# sidecar's 6-9 bytes per row would grow small stores by up to ~10 % (the digits MLP's
# whole store is ~1 MB for 20,000 index rows; measured: +6.5 KB on a 163 KB quick store).
STORE_SIDECAR_MIN_ROWS = 65536


class IndexWriter:
    """Append ``(sample_id, step, epoch)`` rows to a store's index as Parquet parts.

    Parameters
    ----------
    io
        The store (:func:`deltastore.storage.open_io` gives one for a path).
    id_type
        ``"int64"`` or ``"string"``; checked against every part read back.
    prefix
        Where the parts live in the store (``"index"``).
    row_group_size
        Rows per Parquet row group.
    compression
        Parquet codec of the parts (``"zstd"``, default, ``"snappy"``,
        ``"lz4"``, ``"gzip"``, ``"brotli"``) or None for uncompressed. Ids and
        steps are delta-encoded either way; lookups read the sidecars, so the
        codec costs only full scans.
    sidecar_min_rows
        Parts of at least this many rows get a lookup sidecar (default: every
        part). Stores use :data:`STORE_SIDECAR_MIN_ROWS`.

    Notes
    -----
    One writer per index. Steps are appended in order: :meth:`add` refuses a
    step below the end of the parts already flushed. After a crash, open a new
    writer and call :meth:`truncate` with the store's committed step count
    before adding steps again.
    """

    def __init__(
        self,
        io: StoreIO,
        id_type: str,
        *,
        prefix: str = "index",
        row_group_size: int = 65536,
        compression: str | None = "zstd",
        sidecar_min_rows: int = 0,
    ):
        if not isinstance(io, StoreIO):
            raise InvalidArgumentError(
                f"Expected a StoreIO for the store (deltastore.storage.open_io(store_root)). Got {type(io).__name__}."
            )
        self._id_type = check_id_type(id_type)
        if isinstance(row_group_size, bool) or not isinstance(row_group_size, (int, np.integer)) or not (
            1 <= row_group_size <= _MAX_ROW_GROUP
        ):
            raise InvalidArgumentError(
                f"Expected row_group_size in the inclusive range [1, {_MAX_ROW_GROUP}]. Got {row_group_size!r} instead."
            )
        if compression is not None and compression not in COMPRESSIONS:
            raise InvalidArgumentError(
                f"Expected compression None or one of {COMPRESSIONS}. Got {compression!r} instead."
            )
        self._io, self._prefix = io, prefix
        self._row_group_size = int(row_group_size)
        self._compression = compression
        if isinstance(sidecar_min_rows, bool) or not isinstance(sidecar_min_rows, int) or sidecar_min_rows < 0:
            raise InvalidArgumentError(f"Expected sidecar_min_rows to be an integer >= 0. Got {sidecar_min_rows!r} instead.")
        self._sidecar_min_rows = sidecar_min_rows
        self._clear_buffer()
        live = list_index(io, prefix).live
        if live:  # one footer: catches a writer opened with the wrong id type early
            open_part(io, live[-1], self._id_type)
        self._end = max((r.end for r in live), default=0)

    @property
    def io(self) -> StoreIO:
        """The store the index lives in."""
        return self._io

    @property
    def prefix(self) -> str:
        """Where the parts live in the store."""
        return self._prefix

    @property
    def id_type(self) -> str:
        """``"int64"`` or ``"string"``."""
        return self._id_type

    @property
    def end_step(self) -> int:
        """One past the last step of the flushed parts: ``add`` accepts steps from here on."""
        return self._end

    @property
    def buffered_rows(self) -> int:
        """Rows added but not yet flushed (before deduplication)."""
        return int(sum(self._counts))

    def _clear_buffer(self) -> None:
        self._steps: list[int] = []
        self._epochs: list[int] = []
        self._counts: list[int] = []
        self._ids: list[Any] = []

    def add(self, step: int, epoch: int, sample_ids: Any) -> None:
        """Buffer the rows of one step: every id in ``sample_ids`` was in ``step``.

        Parameters
        ----------
        step
            Optimizer step, ``>= end_step`` (steps already flushed are final).
        epoch
            Epoch of the step, in ``[0, 2**31 - 1]``.
        sample_ids
            A :class:`SampleIds` (kept as it is) or raw ids of the store's
            type (parsed; see :func:`parse_sample_ids`); none adds nothing.

        Raises
        ------
        InvalidArgumentError
            Negative or non-integer step or epoch, or a step below ``end_step``.
        SampleIdTypeError
            Ids of the wrong type.
        """
        step = check_step(step, "step", limit=STEP_LIMIT - 1)
        epoch = check_step(epoch, "epoch", limit=_INT32_MAX)
        if step < self._end:
            raise InvalidArgumentError(
                f"Expected a step >= {self._end} (steps below it are already flushed). Got step {step}; "
                f"call truncate() first to rewrite recorded steps."
            )
        ids = parse_sample_ids(sample_ids, self._id_type)  # a SampleIds owns immutable values: no copy
        if len(ids) == 0:
            return
        self._steps.append(step)
        self._epochs.append(epoch)
        self._counts.append(len(ids))
        self._ids.append(ids.values)

    def _buffer_table(self) -> pa.Table:
        counts = np.asarray(self._counts, dtype=np.int64)
        steps = np.repeat(np.asarray(self._steps, dtype=np.int64), counts)
        epochs = np.repeat(np.asarray(self._epochs, dtype=np.int32), counts)
        if self._id_type == "int64":
            sid = pa.array(np.concatenate(self._ids), type=pa.int64())
        else:
            sid = pa.array([s for chunk in self._ids for s in chunk], type=pa.string())
        table = pa.Table.from_arrays([sid, pa.array(steps), pa.array(epochs)], schema=index_schema(self._id_type))
        return sort_dedupe(table)

    def _write(self, table: pa.Table, first: int, end: int, *, fsync: bool, compression: str | None) -> str:
        """Write a sorted, deduplicated table as a new part with its sidecar; the part's key."""
        while True:  # 8 hex digits can collide; an atomic write would overwrite
            name = part_name(first, end)
            ref = PartRef(first, end, name, join_key(self._prefix, name))
            side = join_key(self._prefix, ref.sidecar_name)
            if not (self._io.exists(ref.key) or self._io.exists(side)):
                break
        with_sidecar = table.num_rows >= self._sidecar_min_rows
        if with_sidecar:
            write_sidecar(self._io, side, table, first, end, id_type=self._id_type, fsync=fsync)
        try:
            write_part(
                self._io, ref.key, table, id_type=self._id_type, compression=compression,
                row_group_size=self._row_group_size, fsync=fsync,
            )
        except BaseException:
            if with_sidecar:
                self._io.delete(side)
            raise
        return ref.key

    def flush(self, *, fsync: bool = False, first_step: int | None = None, end_step: int | None = None) -> str | None:
        """Write the buffered rows as one new part (and its sidecar).

        Parameters
        ----------
        fsync
            Make the part and its sidecar durable before returning.
        first_step, end_step
            The part's step range; default ``[min step, max step + 1)`` of the
            buffered rows. An explicit range must contain the rows and start
            at or after ``end_step`` of the writer.

        Returns
        -------
        str or None
            The new part's store key, or None when nothing was buffered.
        """
        if not self._counts:
            return None
        lo, hi = min(self._steps), max(self._steps) + 1
        first = lo if first_step is None else check_step(first_step, "first_step")
        end = hi if end_step is None else check_step(end_step, "end_step")
        if not (self._end <= first <= lo and hi <= end):
            raise InvalidArgumentError(
                f"Expected a part range [first_step, end_step) inside [{self._end}, {STEP_LIMIT}] that "
                f"contains the buffered steps [{lo}, {hi}). Got [{first}, {end})."
            )
        key = self._write(self._buffer_table(), first, end, fsync=fsync, compression=self._compression)
        self._clear_buffer()
        self._end = end
        return key

    def _remove(self, refs: Iterable[PartRef]) -> bool:
        """Delete parts, each before its sidecar (a part never loses its sidecar while visible)."""
        removed = False
        for ref in refs:
            self._io.delete(ref.key)
            self._io.delete(join_key(self._prefix, ref.sidecar_name))
            removed = True
        return removed

    def _delete_garbage(self, names: Iterable[str]) -> bool:
        names = list(names)
        for name in names:
            self._io.delete(join_key(self._prefix, name))
        return bool(names)

    def _sync_prefix(self, keys: list[str]) -> None:
        # A deletion is made durable by syncing the folder: sync a surviving key beside it.
        self._io.sync(keys)

    def truncate(self, committed_steps: int, *, fsync: bool = False) -> None:
        """Remove every row with ``step >= committed_steps``, buffered or flushed.

        Parts wholly at or above ``committed_steps`` are deleted; a part that
        straddles it is rewritten (new part first, then the old one deleted).
        Dead parts, orphan sidecars and stray ``.partial`` files are deleted
        too. Afterwards ``end_step <= committed_steps`` and recording can resume.
        """
        committed = check_step(committed_steps, "committed_steps")
        keep = [i for i, s in enumerate(self._steps) if s < committed]
        self._steps = [self._steps[i] for i in keep]
        self._epochs = [self._epochs[i] for i in keep]
        self._counts = [self._counts[i] for i in keep]
        self._ids = [self._ids[i] for i in keep]
        listing = list_index(self._io, self._prefix)
        # Dead parts first: their rows are all in a live part, so deleting them is always safe.
        changed = self._delete_garbage(listing.partials + listing.orphans)
        changed = self._remove(listing.dead) or changed
        end, kept = 0, []
        for ref in listing.live:
            if ref.first >= committed:
                changed = self._remove([ref]) or changed
            elif ref.end > committed:
                table = read_part_table(self._io, ref, self._id_type)
                table = table.filter(pc.less(table.column("step"), committed))
                if len(table):
                    kept.append(self._write(table, ref.first, committed, fsync=fsync, compression=self._compression))
                    end = max(end, committed)
                self._remove([ref])
                changed = True
            else:
                end = max(end, ref.end)
                kept.append(ref.key)
        if fsync and changed and kept:
            self._sync_prefix(kept[:1])
        self._end = end

    def compact(self, committed_steps: int, *, fsync: bool = False, compression: str | None = "writer") -> str | None:
        """Merge the committed live parts into one sorted part (with its sidecar), then delete them.

        Only parts with ``end <= committed_steps`` are merged (uncommitted rows
        stay where a later ``truncate`` can find them); the new part covers
        their whole range. Dead parts and orphan sidecars are deleted. A lone
        committed part without a sidecar (written before sidecars existed)
        gets one, so old stores look up fast after their next compaction.

        Parameters
        ----------
        compression
            Codec of the merged part; ``"writer"`` (default) uses the writer's.

        Returns
        -------
        str or None
            The merged part's key, or None when fewer than two parts could be merged.
        """
        committed = check_step(committed_steps, "committed_steps")
        if compression == "writer":
            compression = self._compression
        elif compression is not None and compression not in COMPRESSIONS:
            raise InvalidArgumentError(f"Expected compression None, 'writer' or one of {COMPRESSIONS}. Got {compression!r}.")
        listing = list_index(self._io, self._prefix)
        removed = self._delete_garbage(listing.orphans)
        removed = self._remove(listing.dead) or removed
        merge = [r for r in listing.live if r.end <= committed]
        if len(merge) < 2:
            for ref in merge:
                if ref.name in listing.sidecars:
                    continue
                # Another writer's part: sort it even if it says it is sorted, keys must ascend.
                table = sort_dedupe(read_part_table(self._io, ref, self._id_type))
                if table.num_rows >= self._sidecar_min_rows:
                    side = join_key(self._prefix, ref.sidecar_name)
                    write_sidecar(self._io, side, table, ref.first, ref.end, id_type=self._id_type, fsync=fsync)
            if fsync and removed and listing.live:
                self._sync_prefix([listing.live[0].key])
            return None
        tables = [read_part_table(self._io, r, self._id_type) for r in merge]  # in step order
        table = sort_dedupe(pa.concat_tables(tables).combine_chunks(), presorted_runs=True)
        key = self._write(table, merge[0].first, merge[-1].end, fsync=fsync, compression=compression)
        self._remove(merge)
        if fsync:
            self._sync_prefix([key])
        return key
