"""IndexWriter: append ``(sample_id, step, epoch)`` rows as Parquet parts; truncate and compact them.

Every part is written with its lookup sidecar, the sidecar first: a part that
is visible always has its sidecar, and a crash between the two leaves only an
orphan sidecar, which :meth:`IndexWriter.truncate` and :meth:`IndexWriter.compact`
delete. Deleting goes the other way (part, then sidecar); a part without a
sidecar is still read correctly, through pyarrow.

The writer digests every object as it writes it (:meth:`IndexWriter.digests`,
for the commit record). Given the digests of the last commit record, it
treats exactly the recorded parts as the index, checks a part's digest before
it reads it (a damaged part is never merged into a new one with a valid
digest), and deletes a recorded part only after the ``commit`` callback has
recorded its replacement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InvalidArgumentError
from ..storage import StoreIO
from .coverage import MissingIndexObjectError
from .digests import Digest, DigestMap, digest_of, digests_from_json
from .ids import check_id_type, parse_sample_ids
from .parts import (
    COMPRESSIONS, STEP_LIMIT, Listing, PartRef, check_step, check_steps, index_schema, join_key, list_index, open_part,
    parse_part_name, parse_sidecar_name, part_name, read_part_table, read_rows, sort_dedupe, write_part,
)
from .sidecar import Sidecar, write_sidecar

__all__ = ["IndexWriter"]

CommitHook = Callable[[DigestMap], None]

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
    digests
        The index digests of the store's commit record (store key ->
        :class:`~deltastore.index.Digest` or its JSON form), or None for an
        index without them (written before digests, or not part of a store).
        With them, the recorded parts *are* the index: each must exist, and
        any other part is crash garbage that :meth:`truncate` and
        :meth:`compact` delete.

    Notes
    -----
    One writer per index. Steps are appended in order: :meth:`add` refuses a
    step below the end of the parts already flushed. After a crash, open a new
    writer and call :meth:`truncate` with the store's committed step count
    before adding steps again. Parts tile the steps: a part starts where the
    previous one ended (a step without rows still lies in a part), so a
    reader can tell a missing part from steps without rows.
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
        digests: Mapping[str, Any] | None = None,
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
        # Digests of every object this writer knows (written, recorded, or adopted): store key -> digest.
        self._known: DigestMap = {}
        # The recorded parts (name -> ref) when the index has a commit record; None: the listing decides.
        self._recorded: dict[str, PartRef] | None = None
        if digests is not None:
            self._adopt_record(digests_from_json(digests))
            live = sorted(self._recorded.values())
        else:
            live = list_index(io, prefix).live
        if live:  # one footer: catches a writer opened with the wrong id type early
            open_part(io, live[-1], self._id_type, digest=self._known.get(live[-1].key))
        self._end = max((r.end for r in live), default=0)

    def _adopt_record(self, digests: DigestMap) -> None:
        """Take the commit record's digests as the index (checked present, not yet read)."""
        folder = self._prefix.strip("/")
        recorded, known = {}, {}
        for key, digest in digests.items():
            head, _, name = key.rpartition("/")
            if head != folder:
                continue
            rng = parse_part_name(name)
            if rng is not None:
                recorded[name] = PartRef(rng[0], rng[1], name, key)
            elif parse_sidecar_name(name) is None:
                raise InvalidArgumentError(f"Expected index digests of parts and sidecars under {folder!r}. Got key {key!r}.")
            known[key] = digest
        self._recorded, self._known = recorded, known
        self._check_present({join_key(self._prefix, n) for n in self._io.list_dir(folder)})

    def _check_present(self, present: set[str]) -> None:
        """MissingIndexObjectError unless every object of the record is in ``present`` (store keys)."""
        missing = sorted(k for k in self._known if k not in present)
        if missing:
            raise MissingIndexObjectError(
                f"Index at {self._io.where(self._prefix.strip('/'))}: {len(missing)} object(s) the commit record "
                f"lists are missing: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}."
            )

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
        self._added_end: int | None = None  # one past the largest step added, rows or not
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
        # A step without ids still extends the next part's range: parts tile the steps.
        self._added_end = max(self._added_end or 0, step + 1)
        if len(ids) == 0:
            return
        self._steps.append(step)
        self._epochs.append(epoch)
        self._counts.append(len(ids))
        self._ids.append(ids.values)

    def _buffer_table(self) -> pa.Table:
        if not self._counts:  # steps without rows: an empty part still covers them
            return index_schema(self._id_type).empty_table()
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
            side_digest = write_sidecar(self._io, side, table, first, end, id_type=self._id_type, fsync=fsync)
        try:
            digest = write_part(
                self._io, ref.key, table, id_type=self._id_type, compression=compression,
                row_group_size=self._row_group_size, fsync=fsync,
            )
        except BaseException:
            if with_sidecar:
                self._io.delete(side)
            raise
        if with_sidecar:
            self._known[side] = side_digest
        self._known[ref.key] = digest
        if self._recorded is not None:
            self._recorded[name] = ref
        return ref.key

    def flush(self, *, fsync: bool = False, first_step: int | None = None, end_step: int | None = None) -> str | None:
        """Write the buffered rows as one new part (and its sidecar).

        Parameters
        ----------
        fsync
            Make the part and its sidecar durable before returning.
        first_step, end_step
            The part's step range; default ``[end_step of the writer, max
            step + 1)``: parts tile the steps. An explicit range must contain
            the rows and start at or after ``end_step`` of the writer. With
            both given, a part is written even without rows (steps without
            rows still lie in a part: a reader tells them from a lost part).

        Returns
        -------
        str or None
            The new part's store key, or None when nothing was buffered (and
            no explicit range given).
        """
        explicit = first_step is not None and end_step is not None
        if self._added_end is None and not explicit:
            return None
        first = self._end if first_step is None else check_step(first_step, "first_step")
        end = (self._added_end or first + 1) if end_step is None else check_step(end_step, "end_step")
        lo, hi = (min(self._steps), max(self._steps) + 1) if self._counts else (first, first)
        if not (self._end <= first <= lo and hi <= end and first < end):
            raise InvalidArgumentError(
                f"Expected a non-empty part range [first_step, end_step) inside [{self._end}, {STEP_LIMIT}] that "
                f"contains the buffered steps [{lo}, {hi}). Got [{first}, {end})."
            )
        key = self._write(self._buffer_table(), first, end, fsync=fsync, compression=self._compression)
        self._clear_buffer()
        self._end = end
        return key

    # -- what the index is: the recorded parts, or (no commit record) the listing

    def _view(self) -> tuple[list[PartRef], set[str], list[PartRef], list[str]]:
        """(live parts, names of live parts with a usable sidecar, garbage parts, garbage file names).

        Garbage is what no reader uses: dead parts, orphan sidecars, crashed
        temporaries and, with a commit record, every part and sidecar it does
        not list (a crash between writing them and recording them).
        """
        listing: Listing = list_index(self._io, self._prefix)
        if self._recorded is None:
            return listing.live, set(listing.sidecars), listing.dead, listing.partials + listing.orphans
        present = {r.key for r in listing.live + listing.dead}
        present |= {join_key(self._prefix, "_" + n[: -len(".parquet")] + ".ids") for n in listing.sidecars}
        self._check_present(present)
        live = sorted(self._recorded.values())
        garbage = [r for r in listing.live + listing.dead if r.name not in self._recorded]
        garbage_names = {r.name for r in garbage}
        sidecars, stray = set(), list(listing.partials) + list(listing.orphans)
        for name in listing.sidecars:
            if name in garbage_names:
                continue  # deleted with its part
            ref = self._recorded[name]
            if join_key(self._prefix, ref.sidecar_name) in self._known:
                sidecars.add(name)
            else:
                stray.append(ref.sidecar_name)  # not recorded: never read, rewritten by compact()
        return live, sidecars, garbage, stray

    def _forget(self, refs: Iterable[PartRef]) -> None:
        """Stop counting parts (and their sidecars) as the index; their files are deleted later."""
        for ref in refs:
            self._known.pop(ref.key, None)
            self._known.pop(join_key(self._prefix, ref.sidecar_name), None)
            if self._recorded is not None:
                self._recorded.pop(ref.name, None)

    def _remove(self, refs: Iterable[PartRef]) -> bool:
        """Delete parts, each before its sidecar (a part never loses its sidecar while visible)."""
        removed = False
        for ref in refs:
            self._forget([ref])
            self._io.delete(ref.key)
            self._io.delete(join_key(self._prefix, ref.sidecar_name))
            removed = True
        return removed

    def _delete_garbage(self, names: Iterable[str]) -> bool:
        names = list(names)
        for name in names:
            key = join_key(self._prefix, name)
            self._known.pop(key, None)
            self._io.delete(key)
        return bool(names)

    def _sync_prefix(self, keys: list[str]) -> None:
        # A deletion is made durable by syncing the folder: sync a surviving key beside it.
        self._io.sync(keys)

    def _read(self, ref: PartRef) -> pa.Table:
        """A part's rows, its digest checked first when the writer knows it."""
        return read_part_table(self._io, ref, self._id_type, digest=self._known.get(ref.key))

    def _replace(self, old: list[PartRef], commit: CommitHook | None, *, fsync: bool, survivor: str | None) -> None:
        """Record the new set of parts (``commit``), then delete the parts it no longer holds."""
        self._forget(old)
        if commit is not None:
            commit(self.digests())
        self._remove(old)
        if fsync and old and survivor is not None:
            self._sync_prefix([survivor])

    def truncate(self, committed_steps: int, *, fsync: bool = False, commit: CommitHook | None = None) -> None:
        """Remove every row with ``step >= committed_steps``, buffered or flushed.

        Parts wholly at or above ``committed_steps`` are deleted; a part that
        straddles it is rewritten as ``[first, committed_steps)`` (new part
        first, then the old one deleted; written even when no row is left, so
        the parts still tile the committed steps). Garbage (dead parts,
        orphan sidecars, stray ``.partial`` files and, with a commit record,
        unrecorded parts) is deleted too. Afterwards ``end_step <=
        committed_steps`` and recording can resume.

        Parameters
        ----------
        commit
            Called with :meth:`digests` after the new parts are written and
            before any part they replace is deleted: the caller records the
            new digests there (a crash between leaves the old record valid).
            Called only when the set of parts changed.
        """
        committed = check_step(committed_steps, "committed_steps")
        keep = [i for i, s in enumerate(self._steps) if s < committed]
        self._steps = [self._steps[i] for i in keep]
        self._epochs = [self._epochs[i] for i in keep]
        self._counts = [self._counts[i] for i in keep]
        self._ids = [self._ids[i] for i in keep]
        if self._added_end is not None:
            self._added_end = min(self._added_end, committed)
        live, _, garbage, stray = self._view()
        # Garbage first: no reader uses it, so deleting it is always safe.
        changed = self._delete_garbage(stray)
        changed = self._remove(garbage) or changed
        end, kept, replaced = 0, [], []
        for ref in live:
            if ref.first >= committed:
                replaced.append(ref)
            elif ref.end > committed:
                table = self._read(ref)
                table = table.filter(pc.less(table.column("step"), committed))
                kept.append(self._write(table, ref.first, committed, fsync=fsync, compression=self._compression))
                end = max(end, committed)
                replaced.append(ref)
            else:
                end = max(end, ref.end)
                kept.append(ref.key)
        if replaced:
            self._replace(replaced, commit, fsync=False, survivor=None)
        if fsync and (changed or replaced) and kept:
            self._sync_prefix(kept[:1])
        self._end = end
        if self._added_end is not None and self._added_end <= end:
            self._added_end = None  # nothing buffered beyond the parts kept

    def compact(
        self, committed_steps: int, *, fsync: bool = False, compression: str | None = "writer", commit: CommitHook | None = None
    ) -> str | None:
        """Merge the committed live parts into one sorted part (with its sidecar), then delete them.

        Only parts with ``end <= committed_steps`` are merged (uncommitted rows
        stay where a later ``truncate`` can find them); the new part covers
        their whole range. Garbage is deleted as in :meth:`truncate`. A lone
        committed part without a sidecar (written before sidecars existed)
        gets one, so old stores look up fast after their next compaction.
        Every part read is checked against its digest when the writer knows
        it: a damaged part is refused, never merged.

        Parameters
        ----------
        compression
            Codec of the merged part; ``"writer"`` (default) uses the writer's.
        commit
            Called with :meth:`digests` once the merged part (or a new
            sidecar) is written and before the parts it replaces are deleted:
            the caller records the new digests there. Called only when
            something changed.

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
        live, sidecars, garbage, stray = self._view()
        removed = self._delete_garbage(stray)
        removed = self._remove(garbage) or removed
        merge = [r for r in live if r.end <= committed]
        if len(merge) < 2:
            added = False
            for ref in merge:
                if ref.name in sidecars:
                    continue
                # Another writer's part: sort it even if it says it is sorted, keys must ascend.
                table = sort_dedupe(self._read(ref))
                if table.num_rows >= self._sidecar_min_rows:
                    side = join_key(self._prefix, ref.sidecar_name)
                    self._known[side] = write_sidecar(self._io, side, table, ref.first, ref.end, id_type=self._id_type, fsync=fsync)
                    added = True
            if added and commit is not None:
                commit(self.digests())
            if fsync and removed and live:
                self._sync_prefix([live[0].key])
            return None
        tables = [self._read(r) for r in merge]  # in step order
        table = sort_dedupe(pa.concat_tables(tables).combine_chunks(), presorted_runs=True)
        key = self._write(table, merge[0].first, merge[-1].end, fsync=fsync, compression=compression)
        self._replace(merge, commit, fsync=fsync, survivor=key)
        return key

    def drop_ids(self, sample_ids: Any, parts: Iterable[str] | None = None, *, fsync: bool = False) -> list[str]:
        """Rewrite every recorded part holding any of ``sample_ids`` without those ids' rows (purge).

        Each new part keeps its old part's range (so the parts still tile the steps) and
        gets a sidecar as any part; it is *recorded* here (:meth:`digests` names it, not
        the old one) but the old part is not deleted: the caller writes its commit record,
        then calls :meth:`collect_garbage`. ``parts``: the keys to consider (e.g. those
        whose range holds the ids' steps); default every recorded part. Needs a commit
        record's digests (a store written since digests). Returns the keys replaced.
        """
        if self._recorded is None:
            raise InvalidArgumentError("drop_ids: expected an index with a commit record's digests (a store written since digests)")
        ids = parse_sample_ids(sample_ids, self._id_type)
        probe = pa.array(list(ids.values), type=pa.int64() if self._id_type == "int64" else pa.string())
        wanted = None if parts is None else set(parts)
        replaced = []
        for ref in sorted(self._recorded.values()):
            if wanted is not None and ref.key not in wanted:
                continue
            table = self._read(ref)
            hit = pc.is_in(table.column("sample_id"), value_set=probe)
            if not pc.any(hit).as_py():
                continue
            self._forget([ref])
            self._write(table.filter(pc.invert(hit)), ref.first, ref.end, fsync=fsync, compression=self._compression)
            replaced.append(ref.key)
        return replaced

    def collect_garbage(self, *, fsync: bool = False) -> bool:
        """Delete what no reader uses (unrecorded parts and sidecars, dead parts, temporaries).

        After a commit record that no longer names some parts (:meth:`drop_ids`), this
        deletes them; idempotent, so a crash in between is finished by calling it again.
        """
        live, _, garbage, stray = self._view()
        changed = self._delete_garbage(stray)
        changed = self._remove(garbage) or changed
        if fsync and changed and live:
            self._sync_prefix([live[0].key])
        return changed

    # -- digests for the commit record

    def digests(self) -> DigestMap:
        """Store key -> :class:`~deltastore.index.Digest` of every live part and its sidecar, sorted by key.

        What the commit record must hold after every :meth:`flush`,
        :meth:`truncate` and :meth:`compact` (FORMAT.md §6.2). Digests are
        taken from the bytes as they were written. An index without a commit
        record (a store written before digests) has its parts *adopted*
        here, once: each is read whole and checked (Parquet decoded with its
        page CRCs where written and steps in range; sidecar header and body
        CRC) before its digest is taken, and from then on the writer treats
        the digests as its commit record.
        """
        if self._recorded is None:
            listing = list_index(self._io, self._prefix)
            known: DigestMap = {}
            for ref in listing.live:
                known[ref.key] = self._known.get(ref.key) or self._adopt_part(ref)
                if ref.name in listing.sidecars:
                    side = join_key(self._prefix, ref.sidecar_name)
                    known[side] = self._known.get(side) or self._adopt_sidecar(ref, side)
            self._known = known
            self._recorded = {r.name: r for r in listing.live}
        return dict(sorted(self._known.items()))

    def _adopt_part(self, ref: PartRef) -> Digest:
        buffer = self._io.map(ref.key)
        pf = open_part(self._io, ref, self._id_type, buffer)
        table = read_rows(pf, ref.name, ["step"])
        check_steps(ref, table.column("step"))
        return digest_of(buffer)

    def _adopt_sidecar(self, ref: PartRef, key: str) -> Digest:
        buffer = self._io.map(key)
        Sidecar(buffer, ref.sidecar_name, self._id_type, ref.first, ref.end).check_body()
        return digest_of(buffer)
