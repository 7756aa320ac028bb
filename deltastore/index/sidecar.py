"""The lookup sidecar of a part: its sorted ids as raw little-endian arrays, searched in place.

``<prefix>/_part-F-E-U.ids`` beside ``part-F-E-U.parquet`` holds the part's rows
grouped by id: sorted keys (int64 ids, or 64-bit BLAKE2b hashes of string
ids with the strings themselves to resolve collisions), each key's row range
and the rows' steps. Readers map it (``StoreIO.map``) and ``np.searchsorted``
the keys; every section sits at a fixed offset, so a remote reader can
range-read just the keys it probes. Byte layout: docs/FORMAT.md, sample index.
The leading ``_`` keeps pyarrow.dataset, Spark and Hive from reading it as data.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import CorruptStoreError, FormatVersionError
from ..storage import StoreIO
from .digests import Digest, DigestingFile
from .ids import hash_strings

__all__ = ["HEADER", "MAGIC", "SIDECAR_VERSION", "Query", "Sidecar", "gather_ranges", "write_sidecar"]

MAGIC = b"DSIDS\x00"
SIDECAR_VERSION = 1
# magic, version, id kind, step width, 6 pad, n_keys, n_rows, first, end, string bytes, body crc, header crc
HEADER = struct.Struct("<6sHBB6xQQqqQII")
_KINDS = {1: "int64", 2: "string"}


def _pad8(n: int) -> int:
    return -n % 8


def gather_ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(lo[i], hi[i])`` for all i, vectorised."""
    lengths = hi - lo
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    return np.repeat(lo - starts, lengths) + np.arange(total, dtype=np.int64)


def _utf8_buffers(arr: pa.LargeStringArray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 offsets, uint8 bytes) of a large_string array without nulls: string i is bytes[off[i]:off[i+1]]."""
    _, offsets, data = arr.buffers()
    off = np.frombuffer(offsets, dtype="<i8", count=len(arr) + 1, offset=8 * arr.offset)
    return off, (np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, dtype=np.uint8))


def _sections(table: pa.Table, first: int, end: int, id_type: str) -> list[Any]:
    """keys, starts, steps (and string offsets, string bytes) of a sorted, deduplicated table."""
    sid = table.column("sample_id").combine_chunks()
    step = table.column("step").to_numpy().astype(np.int64, copy=False)
    n = len(step)
    if id_type == "int64":
        sid_np = sid.to_numpy()
        new = np.r_[True, sid_np[1:] != sid_np[:-1]] if n else np.zeros(0, dtype=bool)
        keys = sid_np[new].astype("<i8", copy=False)
        starts = np.r_[np.flatnonzero(new), n].astype("<i8")
        rel = step - first
        strings = []
    elif n == 0:  # a part of steps without rows
        keys, starts, rel = np.empty(0, "<u8"), np.zeros(1, "<i8"), step
        strings = [np.zeros(1, "<i8"), np.empty(0, np.uint8)]
    else:
        new = pc.not_equal(sid.slice(1), sid.slice(0, max(n - 1, 0))).to_numpy(zero_copy_only=False) if n > 1 else None
        new = np.r_[True, new] if new is not None else np.ones(n, dtype=bool)
        first_rows = np.flatnonzero(new)
        unique = sid.take(pa.array(first_rows))
        hashes = hash_strings(unique.to_pylist())
        # Rows arrive sorted by string (UTF-8 bytes): a stable sort by hash orders keys by (hash, bytes).
        order = np.argsort(hashes, kind="stable")
        lengths = np.diff(np.r_[first_rows, n])[order]
        row_of = gather_ranges(first_rows[order], first_rows[order] + lengths)
        keys = hashes[order].astype("<u8", copy=False)
        starts = np.r_[0, np.cumsum(lengths)].astype("<i8")
        rel = (step - first)[row_of]
        ordered = unique.take(pa.array(order)).cast(pa.large_string())  # int64 offsets from 0
        off, data = _utf8_buffers(ordered)
        strings = [(off - off[0]).astype("<i8"), data[off[0] : off[-1]]]
    width = 4 if end - first <= 2**32 else 8
    return [keys, starts, rel.astype("<u4" if width == 4 else "<u8"), *strings]


def write_sidecar(io: StoreIO, key: str, table: pa.Table, first: int, end: int, *, id_type: str, fsync: bool) -> Digest:
    """Write the sidecar of a sorted, deduplicated part table (atomically, through the seam); its digest."""
    sections = _sections(table, first, end, id_type)
    keys, _, steps = sections[:3]
    body = []
    for arr in sections:
        buf = memoryview(np.ascontiguousarray(arr)).cast("B")
        body.append(buf)
        if _pad8(len(buf)):
            body.append(b"\x00" * _pad8(len(buf)))
    crc = 0
    for b in body:
        crc = zlib.crc32(b, crc)
    nbytes_str = len(sections[4]) if id_type == "string" else 0
    kind = 1 if id_type == "int64" else 2
    head = HEADER.pack(MAGIC, SIDECAR_VERSION, kind, steps.itemsize, len(keys), len(steps), first, end, nbytes_str, crc, 0)
    head = head[:-4] + struct.pack("<I", zlib.crc32(head[:-4]))
    with io.writer(key, fsync=fsync) as f:
        out = DigestingFile(f)
        out.write(head)
        for b in body:
            out.write(b)
    return out.digest


@dataclass(frozen=True)
class Query:
    """The distinct ids of one lookup, prepared once for every part.

    ``ids`` is sorted. ``probe`` is what the sidecars' keys are searched for,
    ascending: the ids themselves (int64), or their hashes (string), where
    ``probe[j]`` is the hash of ``ids[order[j]]`` and the UTF-8 bytes of
    ``ids[i]`` are ``data[offsets[i]:offsets[i + 1]]``.
    """

    ids: np.ndarray | tuple[str, ...]
    probe: np.ndarray
    order: np.ndarray | None = None
    offsets: np.ndarray | None = None
    data: np.ndarray | None = None

    @classmethod
    def of(cls, ids: np.ndarray | tuple[str, ...]) -> Query:
        """A query of sorted distinct ids (int64 array or tuple of str)."""
        if isinstance(ids, np.ndarray):
            return cls(ids, ids)
        hashes = hash_strings(ids)
        order = np.argsort(hashes, kind="stable")
        off, data = _utf8_buffers(pa.array(ids, type=pa.large_string()))
        return cls(ids, hashes[order], order, off.astype(np.int64), data)


class Sidecar:
    """One mapped sidecar: checked header, zero-copy views of its sections.

    Parameters
    ----------
    buffer
        The whole file (``StoreIO.map``).
    name, id_type, first, end
        What the sidecar must be: its file name (for errors), the store's id
        type and its part's step range.
    """

    def __init__(self, buffer: Any, name: str, id_type: str, first: int, end: int):
        self.name = name
        size = len(buffer)
        if size < HEADER.size:
            raise CorruptStoreError(f"Index sidecar {name} is {size} bytes, shorter than its {HEADER.size}-byte header.")
        head = bytes(buffer[: HEADER.size])
        magic, version, kind, width, n_keys, n_rows, f0, e0, n_str, self.body_crc, hcrc = HEADER.unpack(head)
        if magic != MAGIC or zlib.crc32(head[:-4]) != hcrc:
            raise CorruptStoreError(f"Index sidecar {name}: expected a header with magic {MAGIC!r} and a valid checksum.")
        if version != SIDECAR_VERSION:
            raise FormatVersionError(f"Index sidecar {name} has version {version}; this deltastore reads version {SIDECAR_VERSION}.")
        got_type = _KINDS.get(kind, f"unknown kind {kind}")
        if got_type != id_type:
            raise CorruptStoreError(
                f"Index part {name} does not match the store: expected {id_type} ids, got id type {got_type!r}."
            )
        if (f0, e0) != (first, end) or width not in (4, 8):
            raise CorruptStoreError(f"Index sidecar {name}: header says steps [{f0}, {e0}) in {width}-byte words.")
        steps_bytes = width * n_rows
        expected = HEADER.size + 16 * n_keys + 8 + steps_bytes + _pad8(steps_bytes)
        if kind == 2:
            expected += 8 * (n_keys + 1) + n_str + _pad8(n_str)
        if size != expected:
            raise CorruptStoreError(f"Index sidecar {name}: expected {expected} bytes for its header, got {size}.")
        offset = HEADER.size

        def section(dtype: str, count: int) -> np.ndarray:
            nonlocal offset
            arr = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
            offset += arr.nbytes + _pad8(arr.nbytes)
            return arr

        self.keys = section("<i8" if kind == 1 else "<u8", n_keys)
        self.starts = section("<i8", n_keys + 1)
        self.steps = section(f"<u{width}", n_rows)
        if kind == 2:
            self.str_offsets = section("<i8", n_keys + 1)
            self.str_data = section("u1", n_str)
        self.buffer, self.first, self.end, self.n_rows, self.id_type = buffer, first, end, n_rows, id_type
        if self.starts[0] != 0 or self.starts[-1] != n_rows:
            raise CorruptStoreError(f"Index sidecar {name}: row starts must run from 0 to {n_rows}.")

    # -- checks

    def check_body(self) -> None:
        """Recompute the body checksum (reads the whole file); CorruptStoreError on a mismatch."""
        if zlib.crc32(memoryview(self.buffer)[HEADER.size :]) != self.body_crc:
            raise CorruptStoreError(f"Index sidecar {self.name} fails its checksum.")

    # -- queries

    def _entries(self, query: Query) -> tuple[np.ndarray, np.ndarray]:
        """(positions in the query, key entries) of the queried ids this part holds."""
        keys, probe = self.keys, query.probe
        if len(keys) == 0 or len(probe) == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        # Binary-search the shorter sorted array in the longer one: O(min log max).
        flip = len(keys) <= len(probe)
        short, long = (keys, probe) if flip else (probe, keys)
        if query.order is None:  # int64 ids: distinct on both sides, at most one match each
            pos = np.searchsorted(long, short)
            hit = np.flatnonzero(long[np.minimum(pos, len(long) - 1)] == short)
            return (pos[hit], hit) if flip else (hit, pos[hit])
        lo, hi = np.searchsorted(long, short, "left"), np.searchsorted(long, short, "right")
        a, b = np.repeat(np.arange(len(short)), hi - lo), gather_ranges(lo, hi)
        entry, qi = (a, b) if flip else (b, a)
        if len(qi) == 0:
            return qi, entry
        # String ids: equal hashes make candidates; the stored UTF-8 bytes decide.
        qi = query.order[qi]
        q0, q1 = query.offsets[qi], query.offsets[qi + 1]
        s0, s1 = self.str_offsets[entry], self.str_offsets[entry + 1]
        same = np.flatnonzero(s1 - s0 == q1 - q0)
        lengths = (q1 - q0)[same]
        differs = self.str_data[gather_ranges(s0[same], s1[same])] != query.data[gather_ranges(q0[same], q1[same])]
        mismatches = np.bincount(np.repeat(np.arange(len(same)), lengths), weights=differs, minlength=len(same))
        match = same[mismatches == 0]
        return qi[match], entry[match]

    def lookup(self, query: Query, committed: int) -> tuple[np.ndarray, np.ndarray]:
        """(steps < committed of rows whose id is queried, positions in ``query.ids`` of the ids seen)."""
        qpos, entry = self._entries(query)
        lo, hi = self.starts[entry], self.starts[entry + 1]
        rel = self.steps[gather_ranges(lo, hi)]
        if len(rel) and int(rel.max()) >= self.end - self.first:  # every row read lies in the part's range
            raise CorruptStoreError(
                f"Index sidecar {self.name} holds step {self.first + int(rel.max())} outside its range "
                f"[{self.first}, {self.end}).", step=self.first + int(rel.max()),
            )
        steps = rel.astype(np.int64) + self.first
        if self.end > committed:
            # Steps ascend within an id: the first row of each id holds its earliest step.
            qpos = qpos[self.steps[lo] + self.first < committed]
            steps = steps[steps < committed]
        return steps, qpos

    def samples_at(self, step: int) -> np.ndarray | list[str]:
        """Ids of the rows of ``step`` (int64 array, or list of str), unsorted for strings."""
        rows = np.flatnonzero(self.steps == step - self.first)
        entry = np.searchsorted(self.starts, rows, "right") - 1
        if self.id_type == "int64":
            return self.keys[entry]
        data = self.str_data
        return [bytes(data[a:b]).decode("utf-8") for a, b in zip(self.str_offsets[entry].tolist(), self.str_offsets[entry + 1].tolist())]

    def count(self, committed: int) -> int:
        """Rows with a step below ``committed``."""
        if self.end <= committed:
            return self.n_rows
        return int(np.count_nonzero(self.steps < committed - self.first))
