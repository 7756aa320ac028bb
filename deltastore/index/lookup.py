"""SampleIndex: the read side. Which steps saw which samples, at a committed step count.

A part with a sidecar is searched through it (``np.searchsorted`` on the mapped
keys); a part without one (stores written before sidecars, foreign writers)
through pyarrow: row groups pruned by their ``sample_id`` statistics, then
``pyarrow.compute.is_in``. Both routes answer the same (a property test holds
them equal). Full scans (``sample_ids``, ``steps``, ``step_table``,
``num_rows``) always read the Parquet parts, the index's data of record.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import CorruptStoreError, InvalidArgumentError, UnknownSampleIdsError
from ..storage import LocalStoreIO, StoreIO
from .coverage import MissingIndexObjectError, PlannedPart, plan_parts
from .digests import DigestMap, DigestSource, digests_from_json
from .ids import check_id_type, parse_sample_ids, unique_int
from .parts import check_step, check_step_range, check_steps, join_key, list_index, open_part, parquet_errors, read_rows
from .sidecar import Query, Sidecar, open_sidecar

__all__ = ["SampleIndex"]


def _unique_steps(steps: np.ndarray, committed: int) -> np.ndarray:
    """Sorted distinct steps, all in [0, committed): a bitmap beats sorting when the range is small."""
    if committed <= 8 * len(steps) + 65536 and (len(steps) == 0 or 0 <= steps.min() <= steps.max() < committed):
        flags = np.zeros(committed, dtype=bool)
        flags[steps] = True
        return np.flatnonzero(flags).astype(np.int64, copy=False)
    return unique_int(steps)


class _Part:
    """One opened part: its sidecar when it has one, else its Parquet footer.

    A part with a sidecar opens only the sidecar (header and block table
    checked); its Parquet file is mapped, checked and its footer parsed when a
    full scan first needs them. Bytes are checked before use: against the
    commit record's digest when there is one (a version 2 sidecar's blocks
    against its table, the table against the digest), else the sidecar
    against its own checksums and the Parquet pages against their page CRCs.
    """

    def __init__(self, io: StoreIO, plan: PlannedPart, id_type: str, prefix: str):
        ref = plan.ref
        self.ref, self.id_type, self._io, self._digest = ref, id_type, io, plan.digest
        self.sidecar: Sidecar | None = None
        if plan.has_sidecar:
            # Local files are mapped; elsewhere (object storage) only the header, the block
            # table and the blocks a lookup touches are read (version 2 sidecars).
            self.sidecar = open_sidecar(
                io, join_key(prefix, ref.sidecar_name), ref.sidecar_name, id_type, ref.first, ref.end,
                plan.sidecar_digest, ranged=not isinstance(io, LocalStoreIO),
            )
        self._file: pq.ParquetFile | None = None
        if self.sidecar is None:
            _ = self.file  # no sidecar: the footer's statistics drive every lookup, check it now

    @property
    def nbytes(self) -> int:
        return self._io.size(self.ref.key) + (self.sidecar.size if self.sidecar is not None else 0)

    @property
    def file(self) -> pq.ParquetFile:
        if self._file is None:
            self._file = open_part(self._io, self.ref, self.id_type, digest=self._digest)
            with parquet_errors(self.ref.name):
                self._footer(self._file.metadata)
        return self._file

    def _footer(self, md: pq.FileMetaData) -> None:
        """Row counts and statistics of every row group (statistics prune the pyarrow route's reads).

        Statistics are used only when the part's digest was checked: no page
        CRC covers the footer, and a flipped byte in a min or max would skip a
        row group that holds a queried id (measured: 1-2 % of single-byte flips
        in a small part's file did). Worse, pyarrow 26 aborts the process on
        some damaged statistics (a C++ exception thrown through ``.statistics``:
        6 of 2,456 flips of a footer). Without a digest they are not touched
        and every row group is read.
        """
        trusted = self._digest is not None
        self.rg_rows, self.sid_min, self.sid_max, self.step_min, self.step_max = [], [], [], [], []
        for i in range(md.num_row_groups):
            rg = md.row_group(i)
            self.rg_rows.append(rg.num_rows)
            s0, s1 = (rg.column(0).statistics, rg.column(1).statistics) if trusted else (None, None)
            has0 = s0 is not None and s0.has_min_max
            has1 = s1 is not None and s1.has_min_max
            self.sid_min.append(s0.min if has0 else None)  # None: no statistics, never pruned
            self.sid_max.append(s0.max if has0 else None)
            self.step_min.append(s1.min if has1 else self.ref.first)
            self.step_max.append(s1.max if has1 else self.ref.end - 1)
            if rg.num_rows and has1:
                check_step_range(self.ref, s1.min, s1.max)
        if any(n < 0 for n in self.rg_rows) or sum(self.rg_rows) != md.num_rows:  # num_rows answers from these
            raise CorruptStoreError(
                f"Index part {self.ref.name} is damaged: its footer counts {md.num_rows} rows, its row groups {self.rg_rows}."
            )

    # -- the pyarrow route

    def _groups_for_ids(self, q: np.ndarray | tuple[str, ...]) -> list[int]:
        """Row groups whose sample_id statistics admit any of the sorted queries."""
        out = []
        numeric = isinstance(q, np.ndarray)
        for i, (lo, hi) in enumerate(zip(self.sid_min, self.sid_max)):
            if self.rg_rows[i] == 0 and self._digest is not None:  # an unchecked footer's row counts can lie too
                continue
            if numeric:
                a = 0 if lo is None else int(np.searchsorted(q, lo, "left"))
                b = len(q) if hi is None else int(np.searchsorted(q, hi, "right"))
            else:
                a = 0 if lo is None else bisect.bisect_left(q, lo)
                b = len(q) if hi is None else bisect.bisect_right(q, hi)
            if b > a:
                out.append(i)
        return out

    def _read(self, groups: list[int] | None, columns: list[str]) -> pa.Table:
        """Row groups (all for None) of the Parquet part; the steps read checked against its range."""
        table = read_rows(self.file, self.ref.name, columns, groups)
        if "step" in columns:
            check_steps(self.ref, table.column("step"))
        return table

    def lookup(self, query: Query, committed: int) -> tuple[np.ndarray, np.ndarray]:
        """(steps < committed of rows whose id is queried, positions in ``query.ids`` of the ids seen)."""
        if self.sidecar is not None:
            return self.sidecar.lookup(query, committed)
        q = query.ids
        _ = self.file
        groups = self._groups_for_ids(q)
        if not groups:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        table = self._read(groups, ["sample_id", "step"])
        value_set = pa.array(q, type=pa.int64() if self.id_type == "int64" else pa.string())
        mask = pc.is_in(table.column("sample_id"), value_set=value_set)
        if self.ref.end > committed:
            mask = pc.and_(mask, pc.less(table.column("step"), committed))
        steps = pc.filter(table.column("step"), mask).to_numpy()
        found = pc.unique(pc.filter(table.column("sample_id"), mask))
        # q is sorted and distinct: index_in gives each found id's position in it.
        pos = pc.index_in(found, value_set=value_set).to_numpy(zero_copy_only=False)
        return steps.astype(np.int64, copy=False), pos.astype(np.int64, copy=False)

    def samples_at(self, step: int) -> np.ndarray | list[str]:
        """Ids of the rows of ``step`` (any order)."""
        if self.sidecar is not None:
            return self.sidecar.samples_at(step)
        _ = self.file
        trusted = self._digest is not None
        groups = [i for i, n in enumerate(self.rg_rows) if (n or not trusted) and self.step_min[i] <= step <= self.step_max[i]]
        if not groups:
            return np.empty(0, dtype=np.int64) if self.id_type == "int64" else []
        table = self._read(groups, ["sample_id", "step"])
        ids = pc.filter(table.column("sample_id"), pc.equal(table.column("step"), step))
        return ids.to_numpy() if self.id_type == "int64" else ids.to_pylist()

    # -- full scans (always the Parquet part)

    def rows(self, committed: int, columns: tuple[str, ...] = ("sample_id", "step")) -> list[Any]:
        """Committed rows, one array per column (NumPy for integers, pyarrow for strings)."""
        table = self._read(None, list(dict.fromkeys(("step", *columns))))
        if self.ref.end > committed:
            table = table.filter(pc.less(table.column("step"), committed))
        out = []
        for c in columns:
            col = table.column(c).combine_chunks()
            out.append(col.to_numpy() if pa.types.is_integer(col.type) else col)
        return out

    def count(self, committed: int) -> int:
        """Committed rows of this part."""
        if self.ref.end <= committed:
            return self.file.metadata.num_rows
        steps = self._read(None, ["step"]).column("step")
        return int(pc.sum(pc.less(steps, committed)).as_py() or 0)


class SampleIndex:
    """Read-only view of a store's sample index at a committed step count.

    Parameters
    ----------
    io
        The store (:func:`deltastore.storage.open_io` gives one for a path).
    id_type
        ``"int64"`` or ``"string"``; every part must match.
    committed_steps
        The store's commit counter: rows with ``step >= committed_steps`` are
        invisible.
    prefix
        Where the parts live in the store (``"index"``).
    digests
        The commit record's digests of the index objects (store key ->
        :class:`~deltastore.index.Digest` or its JSON form), or a callable
        returning them (called again, once, when a listed object has vanished:
        a concurrent compaction committed a new record). None for a store
        written before digests.

    Notes
    -----
    Every committed step must lie in a part: a committed step range that no
    part covers is a :class:`~deltastore.errors.CorruptStoreError` naming it
    (absence is never data). With ``digests``, the parts read are exactly the
    recorded ones, every byte checked against its digest before use (a
    sidecar when the part is opened, the Parquet file when a full scan or the
    pyarrow route first needs it); without, sidecars are checked against
    their own CRC-32 and Parquet pages against their page CRCs. Rules:
    FORMAT.md §6.2. Parts are listed and opened on first use and kept until
    :meth:`close`. Committed rows never change, so when a concurrent
    compaction removes a part before it is read, the reader lists again and
    reads the part that replaced it.

    Examples
    --------
    >>> from deltastore.storage import open_io
    >>> index = SampleIndex(open_io("store"), "int64", 10)        # doctest: +SKIP
    >>> steps, unknown = index.lookup([4, 8, 15])                 # doctest: +SKIP
    """

    def __init__(
        self, io: StoreIO, id_type: str, committed_steps: int, *, prefix: str = "index", digests: DigestSource = None
    ):
        if not isinstance(io, StoreIO):
            raise InvalidArgumentError(
                f"Expected a StoreIO for the store (deltastore.storage.open_io(store_root)). Got {type(io).__name__}."
            )
        self._io, self._prefix = io, prefix
        self._id_type = check_id_type(id_type)
        self._committed = check_step(committed_steps, "committed_steps")
        self._digest_source = digests
        self._digests: DigestMap | None = None if callable(digests) else digests_from_json(digests)
        self._parts: list[_Part] | None = None

    @property
    def id_type(self) -> str:
        """``"int64"`` or ``"string"``."""
        return self._id_type

    @property
    def committed_steps(self) -> int:
        """The commit counter this reader was opened at."""
        return self._committed

    @property
    def digests(self) -> DigestMap | None:
        """The commit record's digests this reader checks against (None: a store written before digests)."""
        if callable(self._digest_source) and self._digests is None:
            self._digests = digests_from_json(self._digest_source())
        return self._digests

    def _open(self) -> list[_Part]:
        return self._each(lambda part: part)

    def _load(self) -> list[_Part]:
        listing = list_index(self._io, self._prefix)
        where = self._io.where(self._prefix.strip("/"))
        plan = plan_parts(listing, self._committed, self._prefix, where, self.digests)
        return [_Part(self._io, p, self._id_type, self._prefix) for p in plan]

    def _each(self, fn: Callable[[_Part], Any]) -> list[Any]:
        """``fn`` of every part holding committed steps, listing again if a part vanished."""
        for attempt in range(3):
            try:
                if self._parts is None:
                    self._parts = self._load()
                return [fn(p) for p in self._parts]
            except (FileNotFoundError, MissingIndexObjectError) as exc:
                # A concurrent compaction replaced a part: list again. With digests, only a
                # re-read commit record can name the new part; a fixed record cannot.
                self._parts = None
                if isinstance(exc, MissingIndexObjectError) and not callable(self._digest_source):
                    raise
                if callable(self._digest_source):
                    self._digests = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Drop the opened parts (and their memory maps)."""
        self._parts = None

    def __enter__(self) -> SampleIndex:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- properties

    @property
    def num_rows(self) -> int:
        """Committed rows in the live parts."""
        return sum(self._each(lambda p: p.count(self._committed)))

    @property
    def num_parts(self) -> int:
        """Live parts holding committed steps."""
        return len(self._open())

    @property
    def num_sidecar_parts(self) -> int:
        """Live parts looked up through their sidecar (the others go through pyarrow)."""
        return sum(p.sidecar is not None for p in self._open())

    @property
    def nbytes(self) -> int:
        """Bytes of the live parts holding committed steps, sidecars included."""
        return sum(self._each(lambda p: p.nbytes))

    @property
    def part_keys(self) -> list[str]:
        """Store keys of the live parts holding committed steps, in step order."""
        return [p.ref.key for p in self._open()]

    def check_sidecars(self) -> None:
        """Check every sidecar's body checksum (reads them whole); CorruptStoreError names a bad one."""
        for p in self._open():
            if p.sidecar is not None:
                p.sidecar.check_body()

    def check(self) -> None:
        """Check every byte of every part holding committed steps; CorruptStoreError names a bad one.

        Opening already checks coverage and every sidecar's header (a version
        1 sidecar whole, a version 2 sidecar's block table); this also checks
        every block of each sidecar and each Parquet part: against its digest, or (a store written before
        digests) by decoding every page (page CRCs where written) and checking
        every row's step against the part's range.
        """
        def one(p: _Part) -> None:
            if p.sidecar is not None:
                p.sidecar.check_body()  # a lookup checks only the blocks it reads
            _ = p.file
            if p._digest is None:
                p.rows(self._committed, ("sample_id", "step", "epoch"))

        self._each(one)

    # -- queries

    def _empty_ids(self) -> np.ndarray | list[str]:
        return np.empty(0, dtype=np.int64) if self._id_type == "int64" else []

    def lookup(self, sample_ids: Any) -> tuple[np.ndarray, list]:
        """Steps that used any of ``sample_ids``, and the ids never seen.

        Parameters
        ----------
        sample_ids
            A :class:`SampleIds` (used as it is) or raw ids (parsed first; see
            :func:`parse_sample_ids`).

        Returns
        -------
        steps : numpy.ndarray
            Sorted unique int64 steps ``< committed_steps`` whose rows hold any
            of the ids.
        unknown : list
            Sorted unique ids with no committed row (Python ints or str).
        """
        ids = parse_sample_ids(sample_ids, self._id_type)
        q = ids.unique()
        if len(q) == 0:
            return np.empty(0, dtype=np.int64), []
        query = Query.of(q)
        seen = np.zeros(len(q), dtype=bool)
        found = []
        for part in self._open():
            steps, pos = part.lookup(query, self._committed)
            found.append(steps)
            seen[pos] = True
        steps = _unique_steps(np.concatenate(found), self._committed) if found else np.empty(0, dtype=np.int64)
        missing = np.flatnonzero(~seen)
        unknown = q[missing].tolist() if isinstance(q, np.ndarray) else [q[i] for i in missing.tolist()]
        return steps.astype(np.int64, copy=False), unknown

    def steps_for(self, sample_ids: Any) -> np.ndarray:
        """Like :meth:`lookup`, but every id must be known.

        Raises
        ------
        UnknownSampleIdsError
            Some ids have no committed row; ``.ids`` lists them.
        """
        steps, unknown = self.lookup(sample_ids)
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
            raise UnknownSampleIdsError(
                f"Expected sample ids recorded in the index (committed steps < {self._committed}). "
                f"Got {len(unknown)} never seen: [{shown}].",
                ids=unknown,
            )
        return steps

    def samples_for(self, step: int) -> np.ndarray | list[str]:
        """Sorted unique sample ids of one step (empty for an uncommitted or unknown step)."""
        step = check_step(step, "step")
        if step >= self._committed:
            return self._empty_ids()
        chunks = [p.samples_at(step) for p in self._open() if p.ref.first <= step < p.ref.end]
        if self._id_type == "int64":
            return unique_int(np.concatenate(chunks)) if chunks else self._empty_ids()
        return sorted({s for c in chunks for s in c})

    def sample_ids(self) -> np.ndarray | list[str]:
        """All distinct ids with a committed row, sorted."""
        chunks = self._each(lambda p: p.rows(self._committed, ("sample_id",))[0])
        if self._id_type == "int64":
            if not chunks:
                return self._empty_ids()
            # Each part is sorted by id: drop runs of repeats before the global unique.
            dedup = [c[np.r_[True, c[1:] != c[:-1]]] if len(c) else c for c in chunks]
            return unique_int(np.concatenate(dedup))
        out: set[str] = set()
        for c in chunks:
            out.update(pc.unique(c).to_pylist())
        return sorted(out)

    def steps(self) -> np.ndarray:
        """Sorted unique committed steps that have rows."""
        chunks = self._each(lambda p: unique_int(p.rows(self._committed, ("step",))[0]))
        return unique_int(np.concatenate(chunks)) if chunks else np.empty(0, dtype=np.int64)

    def step_table(self) -> dict[int, np.ndarray | list[str]]:
        """Every committed step with rows mapped to its sorted unique ids (reads everything)."""
        pairs = self._each(lambda p: p.rows(self._committed))
        sids, steps = [p[0] for p in pairs], [p[1] for p in pairs]
        if not sum(len(s) for s in steps):  # no part, or parts of steps without rows
            return {}
        step = np.concatenate(steps)
        if self._id_type == "int64":
            sid = np.concatenate(sids)
            order = np.lexsort((sid, step))
            sid = sid[order]
        else:
            sid = pa.chunked_array(sids, type=pa.string()).combine_chunks()
            keys = pa.table({"step": step, "sid": sid})
            order = pc.sort_indices(keys, [("step", "ascending"), ("sid", "ascending")]).to_numpy()
            sid = sid.take(pa.array(order)).to_pylist()
        step = step[order]
        bounds = np.flatnonzero(np.diff(step)) + 1
        out: dict[int, Any] = {}
        for a, b in zip(np.r_[0, bounds].tolist(), np.r_[bounds, len(step)].tolist()):
            ids = sid[a:b]
            out[int(step[a])] = unique_int(ids) if self._id_type == "int64" else sorted(set(ids))
        return out

