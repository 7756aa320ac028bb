"""Sample index: which training samples were in which optimizer step.

Rows are ``(sample_id, step, epoch)``, stored as append-only Parquet *parts* in
one directory (``<store>/index/``). The store declares its id type, ``"int64"``
or ``"string"``; every part pins the same schema.

Layout
------
- A part is named ``part-{first_step:012d}-{end_step:012d}-{uuid8}.parquet``
  and holds rows with ``first_step <= step < end_step``. Parts are written to a
  hidden temporary name (``.part-...parquet.<uuid>.partial``) and moved into
  place with ``os.replace``, optionally with an fsync of the file and of the
  directory. A leading ``.`` is one of pyarrow.dataset's default ignore
  prefixes, so ``pyarrow.dataset.dataset(dir, format="parquet")`` (and DuckDB
  globs on ``part-*.parquet``) never see a half-written file.
- Schema: ``sample_id`` (int64 or string), ``step`` (int64), ``epoch``
  (int32), all non-nullable; key-value metadata
  ``deltastore.index_version = "1"`` and ``deltastore.id_type``. Rows are
  sorted by ``(sample_id, step)`` and unique on that pair (the index is a set
  relation: a sample drawn twice into one batch is one row); the sort is
  declared in ``sorting_columns``, statistics are on, row groups hold
  ``row_group_size`` rows so readers can skip row groups by min/max.
- int64 stores, by default (``compression=None``), write ``sample_id`` and
  ``step`` PLAIN and uncompressed, one data page per column chunk, so each
  column chunk is a plain little-endian int64 array inside the file. The
  reader memory-maps the part and proves that layout from the page headers
  (a small Thrift compact parser, below); anything else (a compressed part, a
  file from another writer, string ids) is read through pyarrow instead: row
  groups pruned by their ``sample_id`` statistics, then
  ``pyarrow.compute.is_in``. ``compression="zstd"`` (or another codec)
  selects DELTA_BINARY_PACKED + that codec: ~7x smaller, read by decoding.
- Searching a mapped part: the values sit at arbitrary byte offsets, and
  ``np.searchsorted`` copies an unaligned array whole before searching, so a
  small query runs a vectorised binary search that gathers only the probed
  elements (~log2(n) rounds; only the touched pages are read), while a query
  that would probe most of the part (n <= 1024 * queries, or a part of at
  most 65,536 rows) searches an aligned copy kept for the reader's lifetime.

Why this layout. Measured with :func:`benchmarks.index_bench.run_index_benchmark`
on the project machine (2 cores, shared and loaded during the runs, so
figures are upper bounds), 10 M rows = 1.25 M samples x 8 epochs, 128 samples
per step, ids reshuffled every epoch, page cache warm:

- 1,000 random ids hit every one of the 153 row groups of a 10 M-row part:
  row-group pruning alone reads the whole file. The fastest decoded variant
  (DELTA_BINARY_PACKED, uncompressed, 2.9 bytes/row) needs 40-75 ms just to
  decode ``sample_id`` and ``step``; with zstd (2.2 bytes/row) a lookup of
  1,000 ids took 140-155 ms. Smaller row groups cost ~12 us each in footer
  parsing and still read most of the file.
- The mapped PLAIN layout (16.5 bytes/row) answered 1,000 ids in 14-16 ms from
  a fresh reader (open + lookup) and 4 ms warm; 1 id in ~10 ms cold (footer
  and page headers of 153 row groups), <1 ms warm; 100,000 ids in ~80-110 ms.
  With the page cache dropped, a first lookup took ~0.3 s.
- Many parts cost an open each (~0.3-0.6 ms): 1,000 ids over 200 parts took
  ~115 ms cold / ~45 ms warm, over 1,221 parts (a flush every 64 steps)
  ~680 / 145 ms. ``compact`` (~5 s for 10 M rows) restores the single-part
  figures, so writers should compact regularly.
- String ids decode every touched row group (DELTA_BYTE_ARRAY, ~3.2
  bytes/row): 1,000 ids in 1 M rows took ~45-60 ms, so ~0.5 s at 10 M rows.

Visibility rules (readers)
--------------------------
- Rows with ``step >= committed_steps`` are invisible: the uncommitted tail
  that a crash may leave; ``IndexWriter.truncate`` removes it.
- A part whose ``[first, end)`` range is contained in another part's range is
  *dead*: compaction and truncation write the containing part first and delete
  the contained ones after, so a crash in between must not double-count. For
  equal ranges the lexicographically smallest name is live. Plain pyarrow
  readers do not know this rule: they see duplicates until the next
  ``truncate`` or ``compact`` deletes dead parts.

Writers
-------
One writer per directory. Steps are appended in order: ``add`` refuses a step
below the end of the parts already flushed (a step split over two parts with
equal ranges would otherwise hide one of them). After a crash, reopen, call
``truncate(committed_steps)``, then resume adding. Many small parts (a flush
every ~64 steps) make lookups open many files; ``compact`` merges the
committed parts into one.
"""

from __future__ import annotations

import bisect
import inspect
import mmap
import os
import re
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from deltastore.format import fsync_dir as _fsync_path
from deltastore.errors import (
    CorruptStoreError,
    FormatVersionError,
    InvalidArgumentError,
    SampleIdTypeError,
    StoreNotFoundError,
    UnknownSampleIdsError,
)

__all__ = [
    "ID_TYPES",
    "INDEX_VERSION",
    "IndexWriter",
    "PartRef",
    "SampleIndex",
    "index_schema",
    "parse_part_name",
    "parse_sample_ids",
    "part_name",
    "scan_parts",
]

ID_TYPES = ("int64", "string")
INDEX_VERSION = "1"
VERSION_KEY = "deltastore.index_version"
ID_TYPE_KEY = "deltastore.id_type"

# 12 decimal digits in part names; the largest step must leave room for end = step + 1.
STEP_LIMIT = 10**12 - 1
# Up to this many rows a compacted part is stored DELTA + zstd: 1,000-id lookups
# decode it in ~15 ms at 1 M rows (measured), and small stores stay small.
AUTO_ZSTD_MAX_ROWS = 1_000_000
_INT32_MAX = 2**31 - 1
# One PLAIN page per column chunk must stay under Parquet's 2 GiB page size (int32).
_MAX_ROW_GROUP = 1 << 27
_COMPRESSIONS = ("zstd", "snappy", "lz4", "gzip", "brotli")
_PART_RE = re.compile(r"^part-(\d{12})-(\d{12})-([0-9a-f]{8})\.parquet$")
_PARTIAL_RE = re.compile(r"^\.part-.*\.partial$")
_COLUMNS = ("sample_id", "step", "epoch")
_WRITER_PARAMS = frozenset(inspect.signature(pq.ParquetWriter.__init__).parameters)


# --------------------------------------------------------------------------- ids


def _check_id_type(id_type: str) -> str:
    if id_type not in ID_TYPES:
        raise InvalidArgumentError(f"Expected an id type in {ID_TYPES}. Got {id_type!r} instead.")
    return id_type


def _type_names(types: Iterable[type]) -> str:
    names = sorted({t.__name__ for t in types})
    if len(names) == 1:
        return names[0]
    return "a mix of " + ", ".join(names[:-1]) + " and " + names[-1]


def _is_int_type(t: type) -> bool:
    # bool is an int subclass in Python: a bool id is almost surely a mask passed by mistake.
    return (t is int or issubclass(t, np.integer)) and not issubclass(t, (bool, np.bool_))


def _torch_tensor(ids: Any):
    torch = sys.modules.get("torch")  # no import: ids can only be a tensor if torch is loaded
    if torch is not None and isinstance(ids, torch.Tensor):
        return torch
    return None


def parse_sample_ids(ids: Any, id_type: str) -> np.ndarray | list[str]:
    """Check and normalise a sequence of sample ids for a store of ``id_type``.

    Parameters
    ----------
    ids
        For ``"int64"``: a list/tuple/range/iterable of Python or NumPy
        integers, a 1-D integer NumPy array, torch tensor (any device) or
        pyarrow array. For ``"string"``: a sequence of ``str``, a 1-D NumPy
        str/object array or a pyarrow string array.
    id_type
        ``"int64"`` or ``"string"``.

    Returns
    -------
    numpy.ndarray or list of str
        A 1-D ``int64`` array (a copy or view of the input), or a list of
        ``str``. Order and duplicates are kept; an empty input is allowed.

    Raises
    ------
    SampleIdTypeError
        Ids of the wrong type (floats, bools, mixed types, strings for an
        integer store, integers for a string store, values outside int64).

    Examples
    --------
    >>> parse_sample_ids([3, 1, 2], "int64")
    array([3, 1, 2])
    >>> parse_sample_ids(("a", "b"), "string")
    ['a', 'b']
    """
    _check_id_type(id_type)
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (Iterable, pa.Array, pa.ChunkedArray)):
        expected = "a sequence of int64 integers" if id_type == "int64" else "a sequence of str"
        raise SampleIdTypeError(
            f"Expected {expected} as sample ids. Got a single {type(ids).__name__} "
            f"({ids!r:.40}); wrap it in a list."
        )
    if id_type == "int64":
        return _parse_int_ids(ids)
    return _parse_str_ids(ids)


def _parse_int_ids(ids: Any) -> np.ndarray:
    expected = "int64 sample ids (integers)"
    torch = _torch_tensor(ids)
    if torch is not None:
        if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
            raise SampleIdTypeError(f"Expected {expected}. Got a torch tensor of {ids.dtype}.")
        ids = ids.detach().to("cpu").numpy()
    elif isinstance(ids, (pa.Array, pa.ChunkedArray)):
        if not pa.types.is_integer(ids.type):
            raise SampleIdTypeError(f"Expected {expected}. Got a pyarrow array of {ids.type}.")
        if ids.null_count:
            raise SampleIdTypeError(f"Expected {expected}. Got a pyarrow array with {ids.null_count} nulls.")
        ids = ids.to_numpy()
    elif isinstance(ids, range):
        return np.arange(ids.start, ids.stop, ids.step, dtype=np.int64)
    elif not isinstance(ids, np.ndarray):
        seq = ids if isinstance(ids, (list, tuple)) else list(ids)
        types = set(map(type, seq))
        if not all(_is_int_type(t) for t in types):
            raise SampleIdTypeError(f"Expected {expected}. Got {_type_names(types)}.")
        try:
            return np.array(seq, dtype=np.int64).reshape(-1)
        except OverflowError:
            raise SampleIdTypeError(f"Expected {expected}. Got an integer outside the int64 range.") from None
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise SampleIdTypeError(f"Expected a 1-D array of {expected}. Got an array of shape {arr.shape}.")
    if arr.dtype.kind == "O":
        return _parse_int_ids(arr.tolist())
    if arr.dtype.kind not in "iu":
        raise SampleIdTypeError(f"Expected {expected}. Got an array of {arr.dtype}.")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise SampleIdTypeError(f"Expected {expected}. Got a uint64 value above the int64 range.")
    return arr.astype(np.int64, copy=False)


def _parse_str_ids(ids: Any) -> list[str]:
    expected = "string sample ids (str)"
    if _torch_tensor(ids) is not None:
        raise SampleIdTypeError(f"Expected {expected}. Got a torch tensor of {ids.dtype}.")
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
            raise SampleIdTypeError(f"Expected {expected}. Got a pyarrow array of {ids.type}.")
        if ids.null_count:
            raise SampleIdTypeError(f"Expected {expected}. Got a pyarrow array with {ids.null_count} nulls.")
        return ids.to_pylist()
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise SampleIdTypeError(f"Expected a 1-D array of {expected}. Got an array of shape {ids.shape}.")
        if ids.dtype.kind not in "UOT":
            raise SampleIdTypeError(f"Expected {expected}. Got an array of {ids.dtype}.")
        ids = ids.tolist()
    seq = ids if isinstance(ids, (list, tuple)) else list(ids)
    types = set(map(type, seq))
    if not all(issubclass(t, str) for t in types):
        raise SampleIdTypeError(f"Expected {expected}. Got {_type_names(types)}.")
    out = [str(s) for s in seq] if types - {str} else list(seq)  # np.str_ -> str
    try:
        "".join(out).encode("utf-8")  # Parquet strings are UTF-8: a lone surrogate cannot be stored
    except UnicodeEncodeError as exc:
        raise SampleIdTypeError(f"Expected {expected} that are valid Unicode. Got {exc.reason}.") from None
    return out


def _unique_int(a: np.ndarray) -> np.ndarray:
    """Sorted unique values (numpy 2's hash-based ``np.unique`` is ~10x slower on this)."""
    a = np.sort(a)
    if len(a) > 1:
        a = a[np.r_[True, a[1:] != a[:-1]]]
    return a


def _unique_steps(steps: np.ndarray, committed: int) -> np.ndarray:
    """Sorted unique steps, all in [0, committed): a bitmap beats sorting when the range is small."""
    if committed <= 8 * len(steps) + 65536 and (len(steps) == 0 or 0 <= steps.min() <= steps.max() < committed):
        flags = np.zeros(committed, dtype=bool)
        flags[steps] = True
        return np.flatnonzero(flags).astype(np.int64, copy=False)
    return _unique_int(steps)


def _unique_sorted(ids: np.ndarray | list[str]) -> np.ndarray | list[str]:
    if isinstance(ids, np.ndarray):
        return _unique_int(ids)
    return sorted(set(ids))


def _check_step(value: Any, what: str, *, limit: int = STEP_LIMIT) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidArgumentError(f"Expected an integer {what}. Got {type(value).__name__} ({value!r:.40}).")
    value = int(value)
    if not 0 <= value <= limit:
        raise InvalidArgumentError(f"Expected {what} in the inclusive range [0, {limit}]. Got {value} instead.")
    return value


# --------------------------------------------------------------------------- parts


@dataclass(frozen=True, order=True)
class PartRef:
    """A part file found in the index directory: its step range and path."""

    first: int
    end: int
    name: str
    path: Path

    def contains(self, other: PartRef) -> bool:
        """True when ``other``'s range lies inside this part's range."""
        return self.first <= other.first and other.end <= self.end


def part_name(first_step: int, end_step: int) -> str:
    """The file name of a new part holding steps ``[first_step, end_step)``."""
    return f"part-{first_step:012d}-{end_step:012d}-{uuid.uuid4().hex[:8]}.parquet"


def parse_part_name(name: str) -> tuple[int, int] | None:
    """``(first_step, end_step)`` of a part file name, or None for any other name."""
    m = _PART_RE.match(name)
    if m is None:
        return None
    first, end = int(m.group(1)), int(m.group(2))
    return (first, end) if first < end else None


def scan_parts(directory: str | Path) -> tuple[list[PartRef], list[PartRef]]:
    """List the part files of an index directory, split into live and dead.

    A part is dead when another part's range contains its range (ties: the
    lexicographically smaller name is live). Files that are not parts,
    including ``.partial`` leftovers, are ignored.

    Returns
    -------
    (live, dead)
        Each sorted by ``(first, end, name)``; live parts have disjoint ranges
        when the index was written by :class:`IndexWriter`.
    """
    directory = Path(directory)
    refs = []
    with os.scandir(directory) as it:
        for entry in it:
            rng = parse_part_name(entry.name)
            if rng is not None:
                refs.append(PartRef(rng[0], rng[1], entry.name, directory / entry.name))
    # Sort by first ascending, end descending, name ascending: any part whose end does not
    # exceed the largest end seen so far lies inside an earlier part (or equals it, larger name).
    refs.sort(key=lambda r: (r.first, -r.end, r.name))
    live, dead = [], []
    max_end = -1
    for ref in refs:
        if ref.end <= max_end:
            dead.append(ref)
        else:
            live.append(ref)
            max_end = ref.end
    live.sort()
    dead.sort()
    return live, dead


def index_schema(id_type: str) -> pa.Schema:
    """The pinned Arrow schema of every part of an ``id_type`` index."""
    id_arrow = pa.int64() if _check_id_type(id_type) == "int64" else pa.string()
    return pa.schema(
        [
            pa.field("sample_id", id_arrow, nullable=False),
            pa.field("step", pa.int64(), nullable=False),
            pa.field("epoch", pa.int32(), nullable=False),
        ],
        metadata={VERSION_KEY: INDEX_VERSION, ID_TYPE_KEY: id_type},
    )


def _parquet_options(id_type: str, compression: str | None, row_group_size: int) -> dict[str, Any]:
    opts: dict[str, Any] = dict(
        row_group_size=row_group_size,
        write_statistics=True,
        use_dictionary=False,
        sorting_columns=[pq.SortingColumn(0), pq.SortingColumn(1)],
    )
    if id_type == "int64" and compression is None:
        # The memory-mappable layout: PLAIN, uncompressed, one page per column chunk.
        opts.update(
            compression="none",
            column_encoding={"sample_id": "PLAIN", "step": "PLAIN", "epoch": "DELTA_BINARY_PACKED"},
            data_page_size=row_group_size * 8 + (1 << 20),
        )
        if "max_rows_per_page" in _WRITER_PARAMS:  # newer pyarrow also caps pages by rows (20,000)
            opts["max_rows_per_page"] = row_group_size
    elif id_type == "int64":
        opts.update(
            compression=compression,
            column_encoding={c: "DELTA_BINARY_PACKED" for c in _COLUMNS},
        )
    else:
        # Sorted strings share long prefixes: DELTA_BYTE_ARRAY stores each as (prefix length, suffix).
        opts.update(
            compression=compression or "none",
            column_encoding={
                "sample_id": "DELTA_BYTE_ARRAY",
                "step": "DELTA_BINARY_PACKED",
                "epoch": "DELTA_BINARY_PACKED",
            },
        )
    return opts


def _write_part(
    directory: Path,
    table: pa.Table,
    first: int,
    end: int,
    *,
    id_type: str,
    compression: str | None,
    row_group_size: int,
    fsync: bool,
) -> Path:
    """Write a sorted, deduplicated table as a new part, crash-safely."""
    name = part_name(first, end)
    while (directory / name).exists():  # 8 hex digits can collide; os.replace would overwrite
        name = part_name(first, end)
    final = directory / name
    tmp = directory / f".{name}.{uuid.uuid4().hex}.partial"
    try:
        pq.write_table(table, tmp, **_parquet_options(id_type, compression, row_group_size))
        if fsync:
            _fsync_path(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_path(directory)
    return final


def _open_parquet(ref: PartRef, id_type: str, source: Any = None) -> pq.ParquetFile:
    """Open a part and check its footer against the store; errors name the file."""
    try:
        pf = pq.ParquetFile(ref.path if source is None else source)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise CorruptStoreError(f"Index part {ref.name} is not a readable Parquet file: {exc}") from exc
    kv = pf.metadata.metadata or {}
    version = kv.get(VERSION_KEY.encode())
    if version is None:
        raise CorruptStoreError(f"Index part {ref.name} lacks the {VERSION_KEY} metadata key.")
    if version != INDEX_VERSION.encode():
        raise FormatVersionError(
            f"Index part {ref.name} has index version {version.decode(errors='replace')!r}; "
            f"this deltastore reads version {INDEX_VERSION!r}."
        )
    got_type = kv.get(ID_TYPE_KEY.encode(), b"").decode(errors="replace")
    expected = index_schema(id_type)
    schema = pf.schema_arrow
    if got_type != id_type or schema.names != list(_COLUMNS) or any(
        schema.field(c).type != expected.field(c).type for c in _COLUMNS
    ):
        raise CorruptStoreError(
            f"Index part {ref.name} does not match the store: expected {id_type} ids with schema "
            f"{expected.remove_metadata()}, got id type {got_type!r} with schema {schema.remove_metadata()}."
        )
    return pf


def _declares_sort(md: Any) -> bool:
    """True when every row group declares the (sample_id, step) ascending sort."""
    for i in range(md.num_row_groups):
        sc = md.row_group(i).sorting_columns
        if len(sc) < 2 or any(sc[k].column_index != k or sc[k].descending for k in (0, 1)):
            return False
    return True


def _read_part_table(ref: PartRef, id_type: str) -> pa.Table:
    """All rows of one part, sorted, with the pinned schema (for truncate and compact)."""
    pf = _open_parquet(ref, id_type)
    table = pf.read(columns=list(_COLUMNS))
    steps = table.column("step")
    if len(steps) and (pc.min(steps).as_py() < ref.first or pc.max(steps).as_py() >= ref.end):
        raise CorruptStoreError(f"Index part {ref.name} holds steps outside its range [{ref.first}, {ref.end}).")
    table = pa.Table.from_arrays([table.column(c) for c in _COLUMNS], schema=index_schema(id_type))
    return table if _declares_sort(pf.metadata) else _sort_dedupe(table)


def _sort_dedupe(table: pa.Table, *, presorted_runs: bool = False) -> pa.Table:
    """Sort rows by (sample_id, step) and drop repeated pairs (the index is a set relation)."""
    if len(table) == 0:
        return table
    sid = table.column("sample_id")
    step = table.column("step")
    if pa.types.is_integer(sid.type):
        sid_np, step_np = sid.to_numpy(), step.to_numpy()
        # Runs already sorted by (sample_id, step) and concatenated in step order: a stable
        # sort on sample_id alone gives the full order (timsort merges the runs).
        order = np.argsort(sid_np, kind="stable") if presorted_runs else np.lexsort((step_np, sid_np))
        sid_np, step_np = sid_np[order], step_np[order]
        keep = np.ones(len(order), dtype=bool)
        keep[1:] = (sid_np[1:] != sid_np[:-1]) | (step_np[1:] != step_np[:-1])
        return table.take(pa.array(order[keep]))
    table = table.sort_by([("sample_id", "ascending"), ("step", "ascending")])
    sid, step = table.column("sample_id"), table.column("step")
    differs = pc.or_(
        pc.not_equal(sid.slice(1), sid.slice(0, len(sid) - 1)),
        pc.not_equal(step.slice(1), step.slice(0, len(step) - 1)),
    )
    keep = pa.concat_arrays([pa.array([True]), *differs.chunks]) if differs.num_chunks else pa.array([True])
    return table.filter(keep)


# --------------------------------------------------------------------------- writer


class IndexWriter:
    """Append ``(sample_id, step, epoch)`` rows to an index directory as Parquet parts.

    Parameters
    ----------
    directory
        The index directory (created if missing).
    id_type
        ``"int64"`` or ``"string"``; checked against every part read back.
    row_group_size
        Rows per Parquet row group.
    compression
        None (default): int64 parts are PLAIN and uncompressed, the layout
        readers memory-map (~16.5 bytes/row, fastest lookups). A codec name
        (``"zstd"``, ``"snappy"``, ``"lz4"``, ``"gzip"``, ``"brotli"``):
        DELTA_BINARY_PACKED + that codec (~2.2 bytes/row with zstd), read by
        decoding. String parts are always read by decoding.

    Notes
    -----
    After a crash, open a new writer and call :meth:`truncate` with the
    store's committed step count before adding steps again.
    """

    def __init__(
        self,
        directory: str | Path,
        id_type: str,
        *,
        row_group_size: int = 65536,
        compression: str | None = None,
    ):
        self._id_type = _check_id_type(id_type)
        if isinstance(row_group_size, bool) or not isinstance(row_group_size, (int, np.integer)) or not (
            1 <= row_group_size <= _MAX_ROW_GROUP
        ):
            raise InvalidArgumentError(
                f"Expected row_group_size in the inclusive range [1, {_MAX_ROW_GROUP}]. Got {row_group_size!r} instead."
            )
        if compression is not None and compression not in _COMPRESSIONS:
            raise InvalidArgumentError(
                f"Expected compression None or one of {_COMPRESSIONS}. Got {compression!r} instead."
            )
        self._row_group_size = int(row_group_size)
        self._compression = compression
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._clear_buffer()
        live, _ = scan_parts(self._dir)
        if live:  # one footer: catches a writer opened with the wrong id type early
            _open_parquet(live[-1], self._id_type)
        self._end = max((r.end for r in live), default=0)

    @property
    def directory(self) -> Path:
        """The index directory."""
        return self._dir

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
            Ids of the store's type (see :func:`parse_sample_ids`); an empty
            sequence adds nothing.

        Raises
        ------
        InvalidArgumentError
            Negative or non-integer step or epoch, or a step below ``end_step``.
        SampleIdTypeError
            Ids of the wrong type.
        """
        step = _check_step(step, "step", limit=STEP_LIMIT - 1)
        epoch = _check_step(epoch, "epoch", limit=_INT32_MAX)
        if step < self._end:
            raise InvalidArgumentError(
                f"Expected a step >= {self._end} (steps below it are already flushed). Got step {step}; "
                f"call truncate() first to rewrite recorded steps."
            )
        ids = parse_sample_ids(sample_ids, self._id_type)
        if len(ids) == 0:
            return
        if isinstance(ids, np.ndarray):
            ids = ids.copy()  # may be a view of the caller's (reused) array or tensor
        self._steps.append(step)
        self._epochs.append(epoch)
        self._counts.append(len(ids))
        self._ids.append(ids)

    def _buffer_table(self) -> pa.Table:
        counts = np.asarray(self._counts, dtype=np.int64)
        steps = np.repeat(np.asarray(self._steps, dtype=np.int64), counts)
        epochs = np.repeat(np.asarray(self._epochs, dtype=np.int32), counts)
        if self._id_type == "int64":
            sid = pa.array(np.concatenate(self._ids), type=pa.int64())
        else:
            sid = pa.array([s for chunk in self._ids for s in chunk], type=pa.string())
        table = pa.Table.from_arrays([sid, pa.array(steps), pa.array(epochs)], schema=index_schema(self._id_type))
        return _sort_dedupe(table)

    def flush(self, *, fsync: bool = False, first_step: int | None = None, end_step: int | None = None) -> Path | None:
        """Write the buffered rows as one new part.

        Parameters
        ----------
        fsync
            Fsync the part and the directory before returning.
        first_step, end_step
            The part's step range; default ``[min step, max step + 1)`` of the
            buffered rows. An explicit range must contain the rows and start
            at or after ``end_step`` of the writer.

        Returns
        -------
        pathlib.Path or None
            The new part, or None when nothing was buffered.
        """
        if not self._counts:
            return None
        lo, hi = min(self._steps), max(self._steps) + 1
        first = lo if first_step is None else _check_step(first_step, "first_step")
        end = hi if end_step is None else _check_step(end_step, "end_step")
        if not (self._end <= first <= lo and hi <= end):
            raise InvalidArgumentError(
                f"Expected a part range [first_step, end_step) inside [{self._end}, {STEP_LIMIT}] that "
                f"contains the buffered steps [{lo}, {hi}). Got [{first}, {end})."
            )
        table = self._buffer_table()
        path = _write_part(
            self._dir, table, first, end, id_type=self._id_type, compression=self._compression,
            row_group_size=self._row_group_size, fsync=fsync,
        )
        self._clear_buffer()
        self._end = end
        return path

    def _remove(self, refs: Iterable[PartRef]) -> bool:
        removed = False
        for ref in refs:
            ref.path.unlink(missing_ok=True)
            removed = True
        return removed

    def truncate(self, committed_steps: int, *, fsync: bool = False) -> None:
        """Remove every row with ``step >= committed_steps``, buffered or flushed.

        Parts wholly at or above ``committed_steps`` are deleted; a part that
        straddles it is rewritten (new part first, then the old one deleted).
        Dead parts and stray ``.partial`` files are deleted too. Afterwards
        ``end_step <= committed_steps`` and recording can resume.
        """
        committed = _check_step(committed_steps, "committed_steps")
        keep = [i for i, s in enumerate(self._steps) if s < committed]
        self._steps = [self._steps[i] for i in keep]
        self._epochs = [self._epochs[i] for i in keep]
        self._counts = [self._counts[i] for i in keep]
        self._ids = [self._ids[i] for i in keep]
        with os.scandir(self._dir) as it:
            partials = [Path(e.path) for e in it if _PARTIAL_RE.match(e.name)]
        for p in partials:
            p.unlink(missing_ok=True)
        live, dead = scan_parts(self._dir)
        # Dead parts first: their rows are all in a live part, so deleting them is always safe.
        changed = self._remove(dead) or bool(partials)
        end = 0
        for ref in live:
            if ref.first >= committed:
                changed = self._remove([ref]) or changed
            elif ref.end > committed:
                table = _read_part_table(ref, self._id_type)
                table = table.filter(pc.less(table.column("step"), committed))
                if len(table):
                    _write_part(
                        self._dir, table, ref.first, committed, id_type=self._id_type,
                        compression=self._compression, row_group_size=self._row_group_size, fsync=fsync,
                    )
                    end = max(end, committed)
                self._remove([ref])
                changed = True
            else:
                end = max(end, ref.end)
        if fsync and changed:
            _fsync_path(self._dir)
        self._end = end

    def compact(self, committed_steps: int, *, fsync: bool = False, compression: str | None = "auto") -> Path | None:
        """Merge the committed live parts into one sorted part, then delete them.

        ``compression="auto"`` (default) writes DELTA + zstd (~2.2 bytes/row)
        when the merged part has at most ``AUTO_ZSTD_MAX_ROWS`` rows, where a
        decoded lookup of 1,000 ids stays well under 50 ms, and the mapped
        PLAIN layout (~16.5 bytes/row) above that; ``None`` or a codec name
        forces one layout.

        Only parts with ``end <= committed_steps`` are merged (uncommitted rows
        stay where a later ``truncate`` can find them); the new part covers
        their whole range. Dead parts are deleted.

        Returns
        -------
        pathlib.Path or None
            The merged part, or None when fewer than two parts could be merged.
        """
        committed = _check_step(committed_steps, "committed_steps")
        live, dead = scan_parts(self._dir)
        removed = self._remove(dead)
        merge = [r for r in live if r.end <= committed]
        if len(merge) < 2:
            if fsync and removed:
                _fsync_path(self._dir)
            return None
        tables = [_read_part_table(r, self._id_type) for r in merge]  # in step order
        table = _sort_dedupe(pa.concat_tables(tables).combine_chunks(), presorted_runs=True)
        if compression == "auto":
            compression = "zstd" if len(table) <= AUTO_ZSTD_MAX_ROWS else self._compression
        path = _write_part(
            self._dir, table, merge[0].first, merge[-1].end, id_type=self._id_type,
            compression=compression, row_group_size=self._row_group_size, fsync=fsync,
        )
        self._remove(merge)
        if fsync:
            _fsync_path(self._dir)
        return path


# --------------------------------------------------------------------------- page layout


class _LayoutError(Exception):
    """The bytes are not the expected Thrift: the caller falls back to pyarrow."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]  # IndexError past the end: callers turn it into _LayoutError
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _LayoutError


def _thrift_struct(buf: bytes, pos: int, depth: int = 0) -> tuple[dict[int, Any], int]:
    """Read one Thrift compact-protocol struct starting at ``pos``.

    Returns its integer, bool and struct fields by field id (binary, double and
    collection fields are skipped) and the position after it.
    """
    if depth > 8:
        raise _LayoutError
    fields: dict[int, Any] = {}
    fid = 0
    while True:
        head = buf[pos]
        pos += 1
        ftype = head & 0x0F
        if ftype == 0:  # STOP
            return fields, pos
        if head >> 4:
            fid += head >> 4
        else:
            raw, pos = _varint(buf, pos)
            fid = (raw >> 1) ^ -(raw & 1)
        if ftype <= 2:  # bools live in the field header
            fields[fid] = ftype == 1
        elif ftype == 12:
            fields[fid], pos = _thrift_struct(buf, pos, depth + 1)
        elif 4 <= ftype <= 6:  # i16, i32, i64: zigzag varints
            raw, pos = _varint(buf, pos)
            fields[fid] = (raw >> 1) ^ -(raw & 1)
        else:
            pos = _thrift_skip(buf, pos, ftype, depth + 1)


def _thrift_skip(buf: bytes, pos: int, ttype: int, depth: int) -> int:
    """Skip one Thrift compact value of type ``ttype`` (as a collection element)."""
    if depth > 8:
        raise _LayoutError
    if ttype in (1, 2, 3):  # bool element or byte: one byte
        return pos + 1
    if 4 <= ttype <= 6:
        return _varint(buf, pos)[1]
    if ttype == 7:  # double
        return pos + 8
    if ttype == 8:  # binary: varint length, then bytes
        n, pos = _varint(buf, pos)
        return pos + n
    if ttype in (9, 10):  # list, set
        head = buf[pos]
        pos += 1
        size, etype = head >> 4, head & 0x0F
        if size == 15:
            size, pos = _varint(buf, pos)
        for _ in range(size):
            pos = _thrift_skip(buf, pos, etype, depth + 1)
        return pos
    if ttype == 11:  # map
        size, pos = _varint(buf, pos)
        if size:
            kv = buf[pos]
            pos += 1
            for _ in range(size):
                pos = _thrift_skip(buf, pos, kv >> 4, depth + 1)
                pos = _thrift_skip(buf, pos, kv & 0x0F, depth + 1)
        return pos
    if ttype == 12:
        return _thrift_struct(buf, pos, depth)[1]
    raise _LayoutError


def _page_header(buf: bytes) -> tuple[dict[int, Any], int]:
    """Parse a Parquet PageHeader at the start of ``buf``: (fields, header length)."""
    try:
        fields, pos = _thrift_struct(buf, 0)
    except (IndexError, RecursionError):
        raise _LayoutError from None
    if pos > len(buf):
        raise _LayoutError
    return fields, pos


_DATA_PAGE, _DATA_PAGE_V2, _PLAIN = 0, 3, 0


def _plain_int64_offset(mm: mmap.mmap, column: Any, num_rows: int) -> int:
    """Byte offset of the values of a PLAIN, uncompressed, single-page, required int64 column chunk.

    Raises ``_LayoutError`` unless the page header proves that the chunk's
    bytes are exactly one header followed by ``num_rows`` little-endian int64.
    """
    if (
        column.physical_type != "INT64"
        or column.compression != "UNCOMPRESSED"
        or column.has_dictionary_page
        or column.num_values != num_rows
    ):
        raise _LayoutError
    start, total = column.data_page_offset, column.total_compressed_size
    if start < 0 or start + total > len(mm):
        raise _LayoutError
    # An int64 page header is ~70 bytes; a longer one is not this layout.
    header, hlen = _page_header(mm[start : start + min(total, 4096)])
    nbytes = num_rows * 8
    ptype = header.get(1)
    if ptype == _DATA_PAGE:
        dph = header.get(5)
        ok = isinstance(dph, dict) and dph.get(1) == num_rows and dph.get(2) == _PLAIN
    elif ptype == _DATA_PAGE_V2:
        dph = header.get(8)
        ok = (
            isinstance(dph, dict)
            and dph.get(1) == num_rows
            and dph.get(2, 0) == 0
            and dph.get(4) == _PLAIN
            and dph.get(5, 0) == 0
            and dph.get(6, 0) == 0
        )
    else:
        ok = False
    if not (ok and header.get(2) == nbytes and header.get(3) == nbytes and hlen + nbytes == total):
        raise _LayoutError
    return start + hlen


# --------------------------------------------------------------------------- reader


def _gather_ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(lo[i], hi[i])`` for all i, vectorised."""
    lengths = hi - lo
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    return np.repeat(lo - starts, lengths) + np.arange(total, dtype=np.int64)


class _MappedColumn:
    """A PLAIN int64 column spread over row groups, read in place from the memory map.

    Values sit at arbitrary byte offsets, so the views are unaligned: NumPy
    gathers from them fine, but ``np.searchsorted`` would first copy the whole
    array. Lookups therefore either run a vectorised binary search that
    gathers only the probed elements (:func:`_bsearch`), or make one aligned
    copy (:meth:`array`) when a query is large enough to read most of it anyway.
    """

    def __init__(self, mm: mmap.mmap, offsets: list[int], rg_start: np.ndarray):
        self.rg_start = rg_start  # first global row of each row group, plus the total
        self.n = int(rg_start[-1])
        offsets_np = np.asarray(offsets, dtype=np.int64)
        self.res = offsets_np % 8
        # One flat view per byte residue: every row group's values are then a slice of one of them.
        self.flat = {
            r: np.frombuffer(mm, dtype="<i8", count=(len(mm) - r) // 8, offset=r) for r in set(self.res.tolist())
        }
        self.word0 = (offsets_np - self.res) // 8
        self._single = len(self.flat) == 1
        self._copy: np.ndarray | None = None

    def rg_view(self, i: int) -> np.ndarray:
        w = int(self.word0[i])
        return self.flat[int(self.res[i])][w : w + int(self.rg_start[i + 1] - self.rg_start[i])]

    def take(self, g: np.ndarray) -> np.ndarray:
        """Values at global row indices ``g`` (touches only their pages)."""
        if self._copy is not None:
            return self._copy[g]
        r = np.searchsorted(self.rg_start, g, "right") - 1
        w = self.word0[r] + (g - self.rg_start[r])
        if self._single:
            return next(iter(self.flat.values()))[w]
        out = np.empty(len(g), dtype=np.int64)
        rr = self.res[r]
        for res, flat in self.flat.items():
            m = rr == res
            if m.any():
                out[m] = flat[w[m]]
        return out

    @property
    def cached(self) -> bool:
        return self._copy is not None

    def array(self, *, cache: bool = True) -> np.ndarray:
        """An aligned copy of the whole column (kept when ``cache``)."""
        if self._copy is not None:
            return self._copy
        out = np.empty(self.n, dtype=np.int64)
        for i in range(len(self.word0)):
            out[self.rg_start[i] : self.rg_start[i + 1]] = self.rg_view(i)
        if cache:
            self._copy = out
        return out


def _bsearch(col: _MappedColumn, q: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Vectorised binary search of sorted ``col`` for every ``q``.

    Returns the insertion point of each query: leftmost where ``right`` is
    False, rightmost where True (``np.searchsorted`` semantics). About
    ``log2(n)`` rounds, each gathering one element per query.
    """
    lo = np.zeros(len(q), dtype=np.int64)
    hi = np.full(len(q), col.n, dtype=np.int64)
    last = col.n - 1
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) >> 1
        v = col.take(np.minimum(mid, last))
        go = np.where(right, v <= q, v < q) & active
        lo = np.where(go, mid + 1, lo)
        hi = np.where(active & ~go, mid, hi)


# A part this small, or a query this large relative to it, is searched in an aligned copy.
_COPY_ROWS = 65536
_COPY_RATIO = 1024


class _Part:
    """One opened part: row-group statistics and, for the PLAIN int64 layout, mapped columns."""

    def __init__(self, ref: PartRef, id_type: str):
        self.ref = ref
        self.id_type = id_type
        try:
            with open(ref.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # an empty file cannot be mapped
            raise CorruptStoreError(f"Index part {ref.name} is empty.") from exc
        # Parse the footer from the mapping: no file descriptor stays open per part.
        self.file = _open_parquet(ref, id_type, pa.BufferReader(pa.py_buffer(self._mm)))
        md = self.file.metadata
        self.num_rows = md.num_rows
        self.nbytes = len(self._mm)
        self.rg_rows: list[int] = []
        self.sid_min: list[Any] = []
        self.sid_max: list[Any] = []
        self.step_min: list[int] = []
        self.step_max: list[int] = []
        for i in range(md.num_row_groups):
            rg = md.row_group(i)
            self.rg_rows.append(rg.num_rows)
            s0, s1 = rg.column(0).statistics, rg.column(1).statistics
            has0 = s0 is not None and s0.has_min_max
            has1 = s1 is not None and s1.has_min_max
            self.sid_min.append(s0.min if has0 else None)  # None: no statistics, never pruned
            self.sid_max.append(s0.max if has0 else None)
            self.step_min.append(s1.min if has1 else ref.first)
            self.step_max.append(s1.max if has1 else ref.end - 1)
            if rg.num_rows and has1 and (s1.min < ref.first or s1.max >= ref.end):
                raise CorruptStoreError(
                    f"Index part {ref.name} holds steps [{s1.min}, {s1.max}] outside its range "
                    f"[{ref.first}, {ref.end})."
                )
        self.sid: _MappedColumn | None = None
        self.step: _MappedColumn | None = None
        if id_type == "int64" and _declares_sort(md):
            self._map_columns(md)

    def _map_columns(self, md: Any) -> None:
        try:
            offsets: tuple[list[int], list[int]] = ([], [])
            for i, n in enumerate(self.rg_rows):
                rg = md.row_group(i)
                for c in (0, 1):
                    offsets[c].append(_plain_int64_offset(self._mm, rg.column(c), n))
        except _LayoutError:
            return
        rg_start = np.zeros(len(self.rg_rows) + 1, dtype=np.int64)
        np.cumsum(self.rg_rows, out=rg_start[1:])
        sid = _MappedColumn(self._mm, offsets[0], rg_start)
        # Searching across row groups needs them in order, not only sorted inside.
        bounds = [(int(v[0]), int(v[-1])) for v in (sid.rg_view(i) for i in range(len(self.rg_rows))) if len(v)]
        if any(a[1] > b[0] for a, b in zip(bounds, bounds[1:])):
            return
        self.sid, self.step = sid, _MappedColumn(self._mm, offsets[1], rg_start)
        self.id_lo = bounds[0][0] if bounds else 0
        self.id_hi = bounds[-1][1] if bounds else -1

    @property
    def mapped(self) -> bool:
        """True when lookups binary-search the memory-mapped columns."""
        return self.sid is not None

    # -- row-group selection (decoded path)

    def _groups_for_ids(self, q: np.ndarray | list[str]) -> list[int]:
        """Row groups whose sample_id statistics admit any of the sorted queries."""
        out = []
        numeric = isinstance(q, np.ndarray)
        for i, (lo, hi) in enumerate(zip(self.sid_min, self.sid_max)):
            if self.rg_rows[i] == 0:
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

    def _read(self, groups: list[int], columns: list[str]) -> pa.Table:
        return self.file.read_row_groups(groups, columns=columns, use_threads=True)

    # -- queries

    def lookup(self, q: np.ndarray | list[str], committed: int) -> tuple[np.ndarray, np.ndarray]:
        """(steps < committed of rows whose id is in q, bool mask over q of ids seen)."""
        if self.sid is not None:
            return self._lookup_mapped(q, committed)
        seen = np.zeros(len(q), dtype=bool)
        groups = self._groups_for_ids(q)
        if not groups:
            return np.empty(0, dtype=np.int64), seen
        table = self._read(groups, ["sample_id", "step"])
        value_set = pa.array(q, type=pa.int64() if self.id_type == "int64" else pa.string())
        mask = pc.is_in(table.column("sample_id"), value_set=value_set)
        if self.ref.end > committed:
            mask = pc.and_(mask, pc.less(table.column("step"), committed))
        steps = pc.filter(table.column("step"), mask).to_numpy()
        found = pc.unique(pc.filter(table.column("sample_id"), mask))
        if isinstance(q, np.ndarray):
            seen = np.isin(q, found.to_numpy())
        else:
            hits = set(found.to_pylist())
            seen = np.fromiter((s in hits for s in q), dtype=bool, count=len(q))
        return steps.astype(np.int64, copy=False), seen

    def _lookup_mapped(self, q: np.ndarray, committed: int) -> tuple[np.ndarray, np.ndarray]:
        sid_col, step_col = self.sid, self.step
        assert sid_col is not None and step_col is not None
        seen = np.zeros(len(q), dtype=bool)
        a = int(np.searchsorted(q, self.id_lo, "left"))
        b = int(np.searchsorted(q, self.id_hi, "right"))
        if b <= a:
            return np.empty(0, dtype=np.int64), seen
        sub = q[a:b]
        k, n = len(sub), sid_col.n
        filter_steps = self.ref.end > committed
        if sid_col.cached or n <= _COPY_ROWS or n <= _COPY_RATIO * k:
            sid = sid_col.array()
            step_col.array()  # take() then gathers from the aligned copy
            if n < k:
                # More queries than rows: look each row up among the queries instead.
                pos = np.minimum(np.searchsorted(sub, sid), k - 1)
                rows = np.flatnonzero(sub[pos] == sid)
                steps = step_col.array()[rows]
                pos = pos[rows]
                if filter_steps:
                    keep = steps < committed
                    steps, pos = steps[keep], pos[keep]
                seen[a + pos] = True
                return steps, seen
            lo = np.searchsorted(sid, sub, "left")
            hi = np.searchsorted(sid, sub, "right")
        else:
            both = _bsearch(sid_col, np.concatenate([sub, sub]), np.repeat([False, True], k))
            lo, hi = both[:k], both[k:]
        hit = np.flatnonzero(hi > lo)
        lo, hi = lo[hit], hi[hit]
        steps = step_col.take(_gather_ranges(lo, hi))
        if filter_steps:
            # Steps ascend within an id: the first row of each id holds its earliest step.
            lengths = hi - lo
            first = steps[np.cumsum(lengths) - lengths]
            seen[a + hit[first < committed]] = True
            steps = steps[steps < committed]
        else:
            seen[a + hit] = True
        return steps, seen

    def _groups_for_step(self, step: int) -> list[int]:
        return [
            i for i in range(len(self.rg_rows)) if self.rg_rows[i] and self.step_min[i] <= step <= self.step_max[i]
        ]

    def samples_at(self, step: int) -> np.ndarray | list[str]:
        """Ids of the rows of ``step``."""
        groups = self._groups_for_step(step)
        if self.sid is not None and self.step is not None:
            chunks = [self.sid.rg_view(i)[self.step.rg_view(i) == step] for i in groups]
            return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
        if not groups:
            return np.empty(0, dtype=np.int64) if self.id_type == "int64" else []
        table = self._read(groups, ["sample_id", "step"])
        ids = pc.filter(table.column("sample_id"), pc.equal(table.column("step"), step))
        return ids.to_numpy() if self.id_type == "int64" else ids.to_pylist()

    def rows(self, committed: int, columns: tuple[str, ...] = ("sample_id", "step")) -> list[Any]:
        """Committed rows, one array per column (NumPy for integers, pyarrow for strings)."""
        filter_steps = self.ref.end > committed
        if self.sid is not None and self.step is not None:
            cols = {"sample_id": self.sid.array(cache=False), "step": self.step.array(cache=False)}
            if filter_steps:
                keep = cols["step"] < committed
                cols = {c: v[keep] for c, v in cols.items()}
            return [cols[c] for c in columns]
        table = self.file.read(columns=list(dict.fromkeys(("step", *columns))), use_threads=True)
        if filter_steps:
            table = table.filter(pc.less(table.column("step"), committed))
        out = []
        for c in columns:
            col = table.column(c).combine_chunks()
            out.append(col.to_numpy() if pa.types.is_integer(col.type) else col)
        return out

    def count(self, committed: int) -> int:
        """Committed rows of this part."""
        if self.ref.end <= committed:
            return self.num_rows
        if self.step is not None:
            return sum(int(np.count_nonzero(self.step.rg_view(i) < committed)) for i in range(len(self.rg_rows)))
        steps = self.file.read(columns=["step"]).column("step")
        return int(pc.sum(pc.less(steps, committed)).as_py() or 0)


class SampleIndex:
    """Read-only view of an index directory at a committed step count.

    Parameters
    ----------
    directory
        The index directory.
    id_type
        ``"int64"`` or ``"string"``; every part must match.
    committed_steps
        The store's commit counter: rows with ``step >= committed_steps`` are
        invisible.

    Notes
    -----
    Parts are listed and opened (memory-mapped, footer parsed) on first use and
    kept until :meth:`close`: the reader is a snapshot. Parts removed by a
    concurrent compaction before they were opened are handled by listing again.
    """

    def __init__(self, directory: str | Path, id_type: str, committed_steps: int):
        self._id_type = _check_id_type(id_type)
        self._committed = _check_step(committed_steps, "committed_steps")
        self._dir = Path(directory)
        if not self._dir.is_dir():
            raise StoreNotFoundError(f"Expected a sample index directory at {self._dir}. Found none.")
        self._parts: list[_Part] | None = None

    @property
    def id_type(self) -> str:
        """``"int64"`` or ``"string"``."""
        return self._id_type

    @property
    def committed_steps(self) -> int:
        """The commit counter this reader was opened at."""
        return self._committed

    def _open(self) -> list[_Part]:
        if self._parts is not None:
            return self._parts
        attempts = 0
        while True:
            live, _ = scan_parts(self._dir)
            try:
                self._parts = [_Part(r, self._id_type) for r in live if r.first < self._committed]
                return self._parts
            except FileNotFoundError:  # a concurrent compaction replaced a part: list again
                attempts += 1
                if attempts == 3:
                    raise

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
        return sum(p.count(self._committed) for p in self._open())

    @property
    def num_parts(self) -> int:
        """Live parts holding committed steps."""
        return len(self._open())

    @property
    def nbytes(self) -> int:
        """Bytes on disk of the live parts holding committed steps."""
        return sum(p.nbytes for p in self._open())

    @property
    def num_mapped_parts(self) -> int:
        """Live parts searched in place through the memory map (the PLAIN int64 layout)."""
        return sum(p.mapped for p in self._open())

    @property
    def part_paths(self) -> list[Path]:
        """Paths of the live parts holding committed steps, in step order."""
        return [p.ref.path for p in self._open()]

    # -- queries

    def _empty_ids(self) -> np.ndarray | list[str]:
        return np.empty(0, dtype=np.int64) if self._id_type == "int64" else []

    def lookup(self, sample_ids: Any) -> tuple[np.ndarray, list]:
        """Steps that used any of ``sample_ids``, and the ids never seen.

        Returns
        -------
        steps : numpy.ndarray
            Sorted unique int64 steps ``< committed_steps`` whose rows hold any
            of the ids.
        unknown : list
            Sorted unique ids with no committed row (Python ints or str).
        """
        q = _unique_sorted(parse_sample_ids(sample_ids, self._id_type))
        if len(q) == 0:
            return np.empty(0, dtype=np.int64), []
        seen = np.zeros(len(q), dtype=bool)
        found = []
        for part in self._open():
            steps, hit = part.lookup(q, self._committed)
            found.append(steps)
            seen |= hit
        steps = _unique_steps(np.concatenate(found), self._committed) if found else np.empty(0, dtype=np.int64)
        missing = np.flatnonzero(~seen)
        unknown = q[missing].tolist() if isinstance(q, np.ndarray) else [q[i] for i in missing]
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
        step = _check_step(step, "step")
        if step >= self._committed:
            return self._empty_ids()
        chunks = [p.samples_at(step) for p in self._open() if p.ref.first <= step < p.ref.end]
        if self._id_type == "int64":
            return _unique_int(np.concatenate(chunks)) if chunks else self._empty_ids()
        return sorted({s for c in chunks for s in c})

    def sample_ids(self) -> np.ndarray | list[str]:
        """All distinct ids with a committed row, sorted."""
        chunks = [p.rows(self._committed, ("sample_id",))[0] for p in self._open()]
        if self._id_type == "int64":
            if not chunks:
                return self._empty_ids()
            # Each part is sorted by id: drop runs of repeats before the global unique.
            dedup = [c[np.r_[True, c[1:] != c[:-1]]] if len(c) else c for c in chunks]
            return _unique_int(np.concatenate(dedup))
        out: set[str] = set()
        for c in chunks:
            out.update(pc.unique(c).to_pylist())
        return sorted(out)

    def steps(self) -> np.ndarray:
        """Sorted unique committed steps that have rows."""
        chunks = [_unique_int(p.rows(self._committed, ("step",))[0]) for p in self._open()]
        return _unique_int(np.concatenate(chunks)) if chunks else np.empty(0, dtype=np.int64)

    def step_table(self) -> dict[int, np.ndarray | list[str]]:
        """Every committed step with rows mapped to its sorted unique ids (reads everything)."""
        sids, steps = [], []
        for p in self._open():
            sid, step = p.rows(self._committed)
            sids.append(sid)
            steps.append(step)
        if not steps:
            return {}
        step = np.concatenate(steps)
        if self._id_type == "int64":
            sid = np.concatenate(sids)
            order = np.lexsort((sid, step))
        else:
            sid = pa.chunked_array(sids, type=pa.string()).combine_chunks()
            keys = pa.table({"step": step, "sid": sid})
            order = pc.sort_indices(keys, [("step", "ascending"), ("sid", "ascending")]).to_numpy()
            sid = sid.take(pa.array(order)).to_pylist()
        step = step[order]
        if self._id_type == "int64":
            sid = sid[order]
        bounds = np.flatnonzero(np.diff(step)) + 1
        starts = np.r_[0, bounds]
        ends = np.r_[bounds, len(step)]
        out: dict[int, Any] = {}
        for a, b in zip(starts.tolist(), ends.tolist()):
            ids = sid[a:b]
            if self._id_type == "int64":
                out[int(step[a])] = _unique_int(ids)
            else:
                out[int(step[a])] = sorted(set(ids))
        return out
