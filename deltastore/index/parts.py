"""Index parts: naming, listing with the liveness rules, the pinned schema, one part written or read.

Every byte goes through a :class:`~deltastore.storage.StoreIO`; a part's key
is ``<prefix>/part-{first:012d}-{end:012d}-{uuid8}.parquet``.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import CorruptStoreError, FormatVersionError, InvalidArgumentError
from ..storage import StoreIO
from .digests import Digest, DigestingFile, check_digest
from .ids import check_id_type

__all__ = [
    "COLUMNS", "COMPRESSIONS", "ID_TYPE_KEY", "INDEX_VERSION", "STEP_LIMIT", "VERSION_KEY",
    "Listing", "PartRef", "check_step", "check_step_range", "check_steps", "declares_sort", "index_schema", "join_key",
    "list_index", "open_part", "parquet_errors", "parse_part_name", "parse_sidecar_name", "part_name", "read_part_table",
    "read_rows", "sort_dedupe", "write_part",
]

INDEX_VERSION = "1"
VERSION_KEY = "deltastore.index_version"
ID_TYPE_KEY = "deltastore.id_type"
COLUMNS = ("sample_id", "step", "epoch")
PARQUET_MAGIC = b"PAR1"
COMPRESSIONS = ("zstd", "snappy", "lz4", "gzip", "brotli")
# 12 decimal digits in part names; the largest step must leave room for end = step + 1.
STEP_LIMIT = 10**12 - 1

_PART_RE = re.compile(r"^part-(\d{12})-(\d{12})-([0-9a-f]{8})\.parquet$")
_SIDECAR_RE = re.compile(r"^_(part-\d{12}-\d{12}-[0-9a-f]{8})\.ids$")
# Temporaries of a crashed atomic write (LocalStoreIO names them ".<name>.<uuid>.partial").
_PARTIAL_RE = re.compile(r"^\._?part-.*\.partial$")


def check_step(value: Any, what: str, *, limit: int = STEP_LIMIT) -> int:
    """``value`` as an int in ``[0, limit]``, else InvalidArgumentError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidArgumentError(f"Expected an integer {what}. Got {type(value).__name__} ({value!r:.40}).")
    value = int(value)
    if not 0 <= value <= limit:
        raise InvalidArgumentError(f"Expected {what} in the inclusive range [0, {limit}]. Got {value} instead.")
    return value


def join_key(prefix: str, name: str) -> str:
    """The store key of ``name`` under ``prefix`` ('' is the store root)."""
    prefix = prefix.strip("/")
    return f"{prefix}/{name}" if prefix else name


@dataclass(frozen=True, order=True)
class PartRef:
    """A part found under the index prefix: its step range, file name and store key."""

    first: int
    end: int
    name: str
    key: str

    def contains(self, other: PartRef) -> bool:
        """True when ``other``'s range lies inside this part's range."""
        return self.first <= other.first and other.end <= self.end

    @property
    def sidecar_name(self) -> str:
        """File name of this part's lookup sidecar (``_part-...ids``)."""
        return "_" + self.name[: -len(".parquet")] + ".ids"


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


def parse_sidecar_name(name: str) -> str | None:
    """The part file name a sidecar file name belongs to, or None for any other name."""
    m = _SIDECAR_RE.match(name)
    return None if m is None else m.group(1) + ".parquet"


@dataclass(frozen=True)
class Listing:
    """What one listing of the index prefix found.

    ``live`` and ``dead`` are sorted by ``(first, end, name)``. A part is dead
    when another part's range contains its range (ties: the lexicographically
    smaller name is live). ``sidecars`` names the parts that have a sidecar;
    ``orphans`` are sidecar names whose part is gone and ``partials`` crashed
    temporaries: both are garbage a writer deletes.
    """

    live: list[PartRef]
    dead: list[PartRef]
    sidecars: frozenset[str]
    orphans: list[str]
    partials: list[str]


def list_index(io: StoreIO, prefix: str) -> Listing:
    """List the index prefix once and apply the liveness rules."""
    names = io.list_dir(prefix.strip("/"))
    refs, sidecar_parts, partials = [], set(), []
    for name in names:
        rng = parse_part_name(name)
        if rng is not None:
            refs.append(PartRef(rng[0], rng[1], name, join_key(prefix, name)))
            continue
        m = _SIDECAR_RE.match(name)
        if m is not None:
            sidecar_parts.add(m.group(1) + ".parquet")
        elif _PARTIAL_RE.match(name):
            partials.append(name)
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
    present = {r.name for r in refs}
    orphans = sorted("_" + n[: -len(".parquet")] + ".ids" for n in sidecar_parts - present)
    return Listing(sorted(live), sorted(dead), frozenset(sidecar_parts & present), orphans, partials)


def index_schema(id_type: str) -> pa.Schema:
    """The pinned Arrow schema of every part of an ``id_type`` index."""
    id_arrow = pa.int64() if check_id_type(id_type) == "int64" else pa.string()
    return pa.schema(
        [
            pa.field("sample_id", id_arrow, nullable=False),
            pa.field("step", pa.int64(), nullable=False),
            pa.field("epoch", pa.int32(), nullable=False),
        ],
        metadata={VERSION_KEY: INDEX_VERSION, ID_TYPE_KEY: id_type},
    )


def _parquet_options(id_type: str, compression: str | None, row_group_size: int) -> dict[str, Any]:
    # Sorted ids delta-encode well: ints as DELTA_BINARY_PACKED, strings as DELTA_BYTE_ARRAY
    # (each string a shared-prefix length and a suffix). Lookups use the sidecar, not these pages.
    sid_encoding = "DELTA_BINARY_PACKED" if id_type == "int64" else "DELTA_BYTE_ARRAY"
    return dict(
        row_group_size=row_group_size,
        write_statistics=True,
        use_dictionary=False,
        sorting_columns=[pq.SortingColumn(0), pq.SortingColumn(1)],
        compression=compression or "none",
        # A CRC-32 of every page (readers open parts with page_checksum_verification): covers the
        # page bytes of parts read without a commit-record digest. Page headers and the footer
        # are covered only by the part's digest (FORMAT.md §6.2).
        write_page_checksum=True,
        column_encoding={"sample_id": sid_encoding, "step": "DELTA_BINARY_PACKED", "epoch": "DELTA_BINARY_PACKED"},
    )


def write_part(
    io: StoreIO, key: str, table: pa.Table, *, id_type: str, compression: str | None, row_group_size: int, fsync: bool
) -> Digest:
    """Write a sorted, deduplicated table as the part ``key`` (atomically, through the seam); its digest."""
    with io.writer(key, fsync=fsync) as f:
        out = DigestingFile(f)
        pq.write_table(table, out, **_parquet_options(id_type, compression, row_group_size))
    return out.digest


@contextlib.contextmanager
def parquet_errors(name: str) -> Iterator[None]:
    """Turn what pyarrow raises for damaged bytes (bad page CRC, undecodable pages) into CorruptStoreError naming the part."""
    try:
        yield
    except (CorruptStoreError, FormatVersionError):
        raise
    except (pa.ArrowException, OSError, ValueError, IndexError) as exc:
        # Only ever applied to a buffer already in memory: an OSError here is pyarrow's, not the store's.
        raise CorruptStoreError(f"Index part {name} is damaged: {type(exc).__name__}: {exc}") from exc


def open_part(io: StoreIO, ref: PartRef, id_type: str, buffer: Any = None, *, digest: Digest | None = None) -> pq.ParquetFile:
    """Open a part (from ``buffer``, else ``io.map``) and check it against the store.

    With ``digest`` (from the commit record) every byte is checked first; pages
    are checked against their own CRCs whenever they are read either way.

    Raises
    ------
    CorruptStoreError
        Bytes that fail the digest, not Parquet, or a schema or id type other
        than the store's; names the part.
    FormatVersionError
        An index version this code does not read.
    """
    if buffer is None:
        buffer = io.map(ref.key)
    if digest is not None:
        check_digest(buffer, digest, ref.name)
    if bytes(buffer[:4]) != PARQUET_MAGIC:  # pyarrow reads from the footer and never looks at the leading magic
        raise CorruptStoreError(f"Index part {ref.name} is not a Parquet file: expected {PARQUET_MAGIC!r} at its start.")
    try:
        pf = pq.ParquetFile(pa.BufferReader(buffer), page_checksum_verification=True)
        kv = pf.metadata.metadata or {}
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError, ValueError, IndexError) as exc:
        raise CorruptStoreError(f"Index part {ref.name} is not a readable Parquet file: {exc}") from exc
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
    if got_type != id_type or schema.names != list(COLUMNS) or any(
        schema.field(c).type != expected.field(c).type or schema.field(c).nullable for c in COLUMNS
    ):
        raise CorruptStoreError(
            f"Index part {ref.name} does not match the store: expected {id_type} ids with schema "
            f"{expected.remove_metadata()}, got id type {got_type!r} with schema {schema.remove_metadata()}."
        )
    return pf


def declares_sort(md: Any) -> bool:
    """True when every row group declares the (sample_id, step) ascending sort."""
    for i in range(md.num_row_groups):
        sc = md.row_group(i).sorting_columns
        if len(sc) < 2 or any(sc[k].column_index != k or sc[k].descending for k in (0, 1)):
            return False
    return True


def check_step_range(ref: PartRef, lo: Any, hi: Any) -> None:
    """CorruptStoreError unless steps ``[lo, hi]`` lie in the part's range."""
    if lo < ref.first or hi >= ref.end:
        raise CorruptStoreError(
            f"Index part {ref.name} holds steps [{lo}, {hi}] outside its range [{ref.first}, {ref.end}).",
            step=int(lo) if lo < ref.first else int(hi),
        )


def check_steps(ref: PartRef, steps: Any) -> None:
    """CorruptStoreError unless every step read (NumPy or Arrow) lies in the part's range."""
    if len(steps) == 0:
        return
    if isinstance(steps, np.ndarray):
        check_step_range(ref, steps.min(), steps.max())
        return
    mm = pc.min_max(steps).as_py()
    check_step_range(ref, mm["min"], mm["max"])


def read_rows(pf: pq.ParquetFile, name: str, columns: list[str], groups: list[int] | None = None) -> pa.Table:
    """Columns of some row groups (all for None), with as many rows as the footer says they hold.

    pyarrow reads a row group whose footer row count was damaged (16 -> -17,
    one flipped bit) as fewer rows without an error; the counts are
    cross-checked here (they are the footer's own: the file's total and each
    group's), so a lone flipped count is an error naming the part.
    """
    with parquet_errors(name):
        md = pf.metadata
        counts = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        if any(n < 0 for n in counts) or sum(counts) != md.num_rows:
            raise CorruptStoreError(
                f"Index part {name} is damaged: its footer counts {md.num_rows} rows, its row groups {counts}."
            )
        if groups is None:
            table = pf.read(columns=columns, use_threads=True)
        else:
            table = pf.read_row_groups(groups, columns=columns, use_threads=True)
    expected = md.num_rows if groups is None else sum(counts[i] for i in groups)
    if table.num_rows != expected:
        raise CorruptStoreError(f"Index part {name} is damaged: expected {expected} rows, read {table.num_rows}.")
    return table


def read_part_table(io: StoreIO, ref: PartRef, id_type: str, *, digest: Digest | None = None) -> pa.Table:
    """All rows of one part, sorted and deduplicated, with the pinned schema (for truncate and compact).

    ``digest`` (the commit record's) is checked first: a damaged part is never
    merged into a new one with a fresh, valid digest.
    """
    pf = open_part(io, ref, id_type, digest=digest)
    table = read_rows(pf, ref.name, list(COLUMNS))
    check_steps(ref, table.column("step"))
    table = pa.Table.from_arrays([table.column(c) for c in COLUMNS], schema=index_schema(id_type))
    return table if declares_sort(pf.metadata) else sort_dedupe(table)


def sort_dedupe(table: pa.Table, *, presorted_runs: bool = False) -> pa.Table:
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
