"""The lookup sidecar of a part: its sorted ids as raw little-endian arrays, searched in place.

``<prefix>/_part-F-E-U.ids`` beside ``part-F-E-U.parquet`` holds the part's rows
grouped by id: sorted keys (int64 ids, or 64-bit BLAKE2b hashes of string
ids with the strings themselves to resolve collisions), each key's row range
and the rows' steps. Readers map it (``StoreIO.map``) and ``np.searchsorted``
the keys. Version 2 (written since) ends with a block table: the CRC-32C of
every 16 KiB block of the sections and the first key of every block of keys,
itself checked against the commit record's digest of the whole file. So a
reader checks (and, on object storage, range-reads) only the header, the
table and the blocks a lookup touches. Version 1 sidecars are read and checked
whole, as before. Byte layout: docs/FORMAT.md §6.1.
The leading ``_`` keeps pyarrow.dataset, Spark and Hive from reading it as data.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

import google_crc32c
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import CorruptStoreError, FormatVersionError
from ..storage import StoreIO
from .digests import Digest, DigestingFile, check_digest
from .ids import hash_strings

__all__ = ["HEADER", "MAGIC", "SIDECAR_VERSION", "Query", "Sidecar", "gather_ranges", "open_sidecar", "write_sidecar"]

MAGIC = b"DSIDS\x00"
SIDECAR_VERSION = 2  # written; versions 1 and 2 are read
# magic, version, id kind, step width, 6 bytes (v2: log2 block size, 5 zero), n_keys, n_rows, first, end,
# string bytes, body crc (v1: zlib CRC-32 of the body; v2: CRC-32C of the block table), header crc (zlib, bytes 0-59)
HEADER = struct.Struct("<6sHBB6sQQqqQII")
_KINDS = {1: "int64", 2: "string"}
BLOCK_LOG2 = 14  # 16 KiB blocks: a 1-id lookup on S3 reads ~4 of them; the table costs 4 bytes per block
_BLOCK_LOG2_RANGE = range(12, 25)  # what a reader accepts (4 KiB .. 16 MiB)
# Object storage: a sidecar smaller than this is read with one GET, a larger one by ranges.
# A ranged lookup takes 4 dependent rounds (header and table; key block; row starts; steps)
# against 1 for a whole read: at ~20 ms first-byte latency and ~100 MB/s a stream, whole
# reads win below ~6 MB (docs/INDEX.md, "On object storage").
RANGED_FROM = 4 << 20


def _crc(data: Any) -> int:
    return google_crc32c.value(data if isinstance(data, bytes) else np.frombuffer(data, dtype=np.uint8))


def _pad8up(n: int) -> int:
    return n + _pad8(n)


def _pad8(n: int) -> int:
    return -n % 8


def _body_size(kind: int, width: int, n_keys: int, n_rows: int, n_str: int) -> int:
    """Bytes of the sections (keys .. str_data), padding included."""
    size = 16 * n_keys + 8 + _pad8up(width * n_rows)
    return size + (8 * (n_keys + 1) + _pad8up(n_str) if kind == 2 else 0)


def _table_size(body: int, n_keys: int, log2: int) -> int:
    """Bytes of a v2 block table: prefix CRC, 4 zero bytes, a CRC-32C per block, first key per key block."""
    n_blocks = -(-body // (1 << log2))
    return 8 + _pad8up(4 * n_blocks) + 8 * -(-8 * n_keys // (1 << log2))


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


def write_sidecar(
    io: StoreIO, key: str, table: pa.Table, first: int, end: int, *, id_type: str, fsync: bool,
    version: int = SIDECAR_VERSION, block_log2: int | None = None,
) -> Digest:
    """Write the sidecar of a sorted, deduplicated part table (atomically, through the seam); its digest.

    ``version=1`` writes the old layout (tests of old stores use it); ``block_log2``
    defaults to :data:`BLOCK_LOG2`.
    """
    block_log2 = BLOCK_LOG2 if block_log2 is None else block_log2
    sections = _sections(table, first, end, id_type)
    keys, _, steps = sections[:3]
    parts = []
    for arr in sections:
        buf = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
        parts.append(buf)
        if _pad8(len(buf)):
            parts.append(np.zeros(_pad8(len(buf)), np.uint8))
    body = np.concatenate(parts)
    nbytes_str = len(sections[4]) if id_type == "string" else 0
    kind = 1 if id_type == "int64" else 2
    if version == 1:
        check, extra, table_body = zlib.crc32(body), bytes(6), b""
    else:
        # Version 2: the body's blocks' CRC-32C and the first key of each block of keys, after the body.
        block = 1 << block_log2
        crcs = np.array([google_crc32c.value(body[i : i + block]) for i in range(0, len(body), block)], dtype="<u4")
        fences = np.ascontiguousarray(keys[:: block // 8])
        extra = bytes([block_log2]) + bytes(5)
        table_body = crcs.tobytes() + bytes(_pad8(crcs.nbytes)) + fences.tobytes()
        check = google_crc32c.value(table_body)
    head = HEADER.pack(MAGIC, version, kind, steps.itemsize, extra, len(keys), len(steps), first, end, nbytes_str, check, 0)
    head = head[:-4] + struct.pack("<I", zlib.crc32(head[:-4]))
    tail = b""
    if version != 1:
        # The table opens with the CRC-32C of everything before it: with the commit record's
        # digest of the whole file, a reader authenticates the table from the table alone.
        tail = struct.pack("<II", google_crc32c.extend(google_crc32c.value(head), body), 0) + table_body
        assert len(tail) == _table_size(len(body), len(keys), block_log2)
    with io.writer(key, fsync=fsync) as f:
        out = DigestingFile(f)
        out.write(head)
        out.write(body)
        if tail:
            out.write(tail)
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


def open_sidecar(
    io: StoreIO, key: str, name: str, id_type: str, first: int, end: int, digest: Digest | None, *, ranged: bool,
) -> Sidecar:
    """The sidecar at ``key``, its header (and, for version 2, its block table) checked.

    ``ranged=False`` maps the file (local stores). ``ranged=True`` (object
    storage) reads a sidecar of :data:`RANGED_FROM` bytes or more by ranges:
    the header and the table with one concurrent pair of ranged reads, then
    only the blocks a query touches; a smaller one with one GET. A version 1
    sidecar is read whole either way.
    """
    if not ranged:
        return Sidecar(io.map(key), name, id_type, first, end, digest)
    size = digest.size if digest is not None else io.size(key)
    # The table's length at the reference block size (a longer table costs one more read).
    tail = min(max(size - HEADER.size, 0), 16 + 12 * -(-size // (1 << BLOCK_LOG2)) + 8)
    if size < RANGED_FROM:  # small: one GET of everything
        return Sidecar(io.read(key), name, id_type, first, end, digest)

    def fetch(ranges: list[tuple[int, int]]) -> list[bytes]:
        with io.open_range(key) as f:
            got = f.preadv(ranges)
        for (offset, length), data in zip(ranges, got):
            if len(data) != length:
                raise CorruptStoreError(
                    f"Index sidecar {name}: expected {length} bytes at offset {offset} of its {size}, got {len(data)} "
                    "(the object is shorter than its digest says)."
                )
        return got

    head, last = fetch([(0, HEADER.size), (size - tail, tail)])
    buffer = np.empty(size, dtype=np.uint8)  # untouched pages cost no memory: only fetched blocks are filled
    buffer[: HEADER.size] = np.frombuffer(head, np.uint8)
    buffer[size - tail :] = np.frombuffer(last, np.uint8)
    if head[:6] == MAGIC and struct.unpack_from("<H", head, 6)[0] == 1:
        # Version 1: the rest of the file, then checked whole as before.
        (middle,) = fetch([(HEADER.size, size - tail - HEADER.size)])
        buffer[HEADER.size : size - tail] = np.frombuffer(middle, np.uint8)
        return Sidecar(buffer, name, id_type, first, end, digest)
    return Sidecar(buffer, name, id_type, first, end, digest, fetch=fetch, loaded_from=size - tail)


class Sidecar:
    """One sidecar: checked header, zero-copy views of its sections, blocks checked before use.

    Parameters
    ----------
    buffer
        The whole file (``StoreIO.map``), or with ``fetch`` a buffer of the
        file's size holding its header and its bytes from ``loaded_from`` on.
    name, id_type, first, end
        What the sidecar must be: its file name (for errors), the store's id
        type and its part's step range.
    digest
        The commit record's digest of the file, or None (stores written
        before digests: the sidecar's own checksums are used).
    fetch
        Reads ``(offset, length)`` ranges of the file (object storage).
    """

    def __init__(
        self, buffer: Any, name: str, id_type: str, first: int, end: int, digest: Digest | None = None,
        *, fetch: Any = None, loaded_from: int = 0,
    ):
        self.name = name
        size = len(buffer)
        if size < HEADER.size:
            raise CorruptStoreError(f"Index sidecar {name} is {size} bytes, shorter than its {HEADER.size}-byte header.")
        head = bytes(buffer[: HEADER.size])
        magic, version, kind, width, extra, n_keys, n_rows, f0, e0, n_str, self.body_crc, hcrc = HEADER.unpack(head)
        if magic != MAGIC or zlib.crc32(head[:-4]) != hcrc:
            raise CorruptStoreError(f"Index sidecar {name}: expected a header with magic {MAGIC!r} and a valid checksum.")
        if version not in (1, 2):
            raise FormatVersionError(f"Index sidecar {name} has version {version}; this deltastore reads versions 1 and 2.")
        got_type = _KINDS.get(kind, f"unknown kind {kind}")
        if got_type != id_type:
            raise CorruptStoreError(
                f"Index part {name} does not match the store: expected {id_type} ids, got id type {got_type!r}."
            )
        if (f0, e0) != (first, end) or width not in (4, 8):
            raise CorruptStoreError(f"Index sidecar {name}: header says steps [{f0}, {e0}) in {width}-byte words.")
        body = _body_size(kind, width, n_keys, n_rows, n_str)
        log2 = extra[0]
        if version == 1 and extra != bytes(6) or version == 2 and (log2 not in _BLOCK_LOG2_RANGE or extra[1:] != bytes(5)):
            raise CorruptStoreError(f"Index sidecar {name}: header bytes 10-15 are {extra.hex()}.")
        expected = HEADER.size + body + (_table_size(body, n_keys, log2) if version == 2 else 0)
        if digest is not None and digest.size != size:
            raise CorruptStoreError(f"Index file {name}: expected {digest.size} bytes (commit record), found {size}.")
        if size != expected:
            raise CorruptStoreError(f"Index sidecar {name}: expected {expected} bytes for its header, got {size}.")
        self.version, self.size, self._fetch, self.id_type = version, size, fetch, id_type
        self._u8 = np.frombuffer(buffer, dtype=np.uint8)
        self._body, self._ok, self._fences = body, None, None
        self._all_ok = version == 1  # version 1: checked whole at open
        if version == 1:
            if digest is not None:
                check_digest(buffer, digest, name)
            else:
                self.check_body()  # no commit-record digest: the sidecar's own CRC-32 (~3 GB/s)
        else:
            self._open_table(head, n_keys, log2, digest, loaded_from)
        offset = HEADER.size

        def section(dtype: str, count: int) -> tuple[np.ndarray, int]:
            nonlocal offset
            arr = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
            at = offset - HEADER.size
            offset += arr.nbytes + _pad8(arr.nbytes)
            return arr, at

        self.keys, _ = section("<i8" if kind == 1 else "<u8", n_keys)
        self.starts, self._at_starts = section("<i8", n_keys + 1)
        self.steps, self._at_steps = section(f"<u{width}", n_rows)
        if kind == 2:
            self.str_offsets, self._at_str_offsets = section("<i8", n_keys + 1)
            self.str_data, self._at_str_data = section("u1", n_str)
        self.buffer, self.first, self.end, self.n_rows, self.id_type = buffer, first, end, n_rows, id_type
        self._n_str = n_str
        if version == 1 and (self.starts[0] != 0 or self.starts[-1] != n_rows):
            raise CorruptStoreError(f"Index sidecar {name}: row starts must run from 0 to {n_rows}.")

    def _open_table(self, head: bytes, n_keys: int, log2: int, digest: Digest | None, loaded_from: int) -> None:
        """Read and check a version 2 block table: against the digest (which covers the whole file), and its own CRC."""
        at = HEADER.size + self._body
        if self._fetch is not None and at < loaded_from:
            (more,) = self._fetch([(at, loaded_from - at)])
            self._u8[at:loaded_from] = np.frombuffer(more, np.uint8)
        table = self._u8[at:]
        if digest is not None:
            # The table opens with the CRC-32C of every byte before it: extended over the
            # table it must give the commit record's CRC-32C of the whole file.
            prefix_crc = int(table[:4].view("<u4")[0])
            got = google_crc32c.extend(prefix_crc, table)
            if got != digest.crc32c:
                raise CorruptStoreError(
                    f"Index file {self.name} fails its checksum: expected crc32c {digest.crc32c:08x} (commit record), "
                    f"its block table gives {got:08x}."
                )
        if google_crc32c.value(table[8:]) != self.body_crc or table[4:8].any():
            raise CorruptStoreError(f"Index sidecar {self.name}: its block table fails its checksum.")
        self._block, self._log2 = 1 << log2, log2
        n_blocks = -(-self._body // self._block)
        self._crcs = table[8 : 8 + 4 * n_blocks].view("<u4")
        fence_at = 8 + _pad8up(4 * n_blocks)
        self._fences = table[fence_at:].view("<i8" if self.id_type == "int64" else "<u8")
        self._okb = bytearray(n_blocks)  # block i checked; self._ok is its NumPy view
        self._ok = np.frombuffer(self._okb, dtype=bool)
        self._all_ok = False
        self._prefix_crc = int(table[:4].view("<u4")[0])

    # -- checks

    def _ensure(self, blocks: np.ndarray | list[int]) -> None:
        """Fetch (object storage) and check the body blocks ``blocks`` (sorted) not checked yet."""
        if isinstance(blocks, list):  # a few blocks: plain Python is faster than NumPy calls
            todo = np.array([b for b in blocks if not self._okb[b]], dtype=np.int64)
        else:
            todo = blocks[~self._ok[blocks]]
        if not len(todo):
            return
        block, base, n = self._block, HEADER.size, len(self._ok)
        if self._fetch is not None:
            runs = np.split(todo, np.flatnonzero(np.diff(todo) != 1) + 1)  # consecutive blocks: one range
            ranges = [(base + int(r[0]) * block, min((int(r[-1]) + 1) * block, self._body) - int(r[0]) * block) for r in runs]
            for (offset, length), data in zip(ranges, self._fetch(ranges)):
                self._u8[offset : offset + length] = np.frombuffer(data, np.uint8)
        if self._fetch is None and 8 * len(todo) > n:
            # A good part of a mapped file: one CRC pass over the whole body (~13 GB/s) against the
            # table's prefix CRC beats a call per block (measured: ~8 us a 16 KiB block).
            got = google_crc32c.extend(google_crc32c.value(self._u8[:base]), self._u8[base : base + self._body])
            if got != self._prefix_crc:
                raise CorruptStoreError(f"Index sidecar {self.name} fails its checksum (its sections).")
            self._ok[:] = True
            self._all_ok = True
            return
        for b in todo.tolist():
            a = base + b * block
            if google_crc32c.value(self._u8[a : min(a + block, base + self._body)]) != self._crcs[b]:
                raise CorruptStoreError(f"Index sidecar {self.name} fails its checksum: block {b} (bytes {a} to {a + block}).")
        self._ok[todo] = True
        self._all_ok = bool(self._ok.all())

    def _need(self, at: int, itemsize: int, lo: np.ndarray, hi: np.ndarray) -> None:
        """Check the blocks holding elements ``[lo[i], hi[i])`` (each non-empty) of the section at body offset ``at``."""
        if self._all_ok or not len(lo):
            return
        b0 = (at + np.asarray(lo, dtype=np.int64) * itemsize) >> self._log2
        b1 = (at + np.asarray(hi, dtype=np.int64) * itemsize - 1) >> self._log2
        n = len(self._ok)
        if len(b0) <= 64:
            blocks = sorted({b for a, z in zip(b0.tolist(), b1.tolist()) for b in range(a, z + 1)})
        else:
            d = np.bincount(b0, minlength=n + 1) - np.bincount(b1 + 1, minlength=n + 1)
            blocks = np.flatnonzero(np.cumsum(d[:n]) > 0)
        self._ensure(blocks)

    def _need_all(self, at: int, nbytes: int) -> None:
        if not self._all_ok and nbytes:
            self._ensure(np.arange(at >> self._log2, ((at + nbytes - 1) >> self._log2) + 1))

    def check_body(self) -> None:
        """Check every byte after the header (reads the whole file); CorruptStoreError on a mismatch."""
        if self._ok is None:
            if zlib.crc32(self._u8[HEADER.size :]) != self.body_crc:
                raise CorruptStoreError(f"Index sidecar {self.name} fails its checksum.")
            return
        self._ensure(np.arange(len(self._ok)))

    def _rows_of(self, entry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row ranges [lo, hi) of key entries, checked: 0 <= lo < hi <= rows."""
        self._need(self._at_starts, 8, entry, entry + 2)
        lo, hi = self.starts[entry], self.starts[entry + 1]
        if len(lo) and (lo.min() < 0 or hi.max() > self.n_rows or np.any(hi <= lo)):
            raise CorruptStoreError(f"Index sidecar {self.name}: row starts must run from 0 to {self.n_rows}.")
        return lo, hi

    # -- queries

    def _key_view(self, probe: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(keys to search, their positions in ``keys`` or None for all): the checked key blocks the probes can lie in."""
        if self._fences is None or self._all_ok:
            return self.keys, None
        fences, per = self._fences, self._block // 8
        lo = np.maximum(np.searchsorted(fences, probe, "left") - 1, 0)
        hi = np.searchsorted(fences, probe, "right") - 1
        if len(probe) <= 64:  # hi >= 0: the probe is not below the first key
            small = sorted({b for a, z in zip(lo.tolist(), hi.tolist()) if z >= 0 for b in range(a, z + 1)})
            self._ensure(small)
            pos = (np.asarray(small, dtype=np.int64)[:, None] * per + np.arange(per)).reshape(-1)
            pos = pos[pos < len(self.keys)]
            return self.keys[pos], pos
        keep = hi >= 0  # below the first key: in no block
        blocks = np.empty(0, dtype=np.int64)
        if keep.any():
            n = len(fences)
            d = np.bincount(lo[keep], minlength=n + 1) - np.bincount(hi[keep] + 1, minlength=n + 1)
            blocks = np.flatnonzero(np.cumsum(d[:n]) > 0)
        if self._fetch is None and 2 * len(blocks) > len(fences):
            blocks = np.arange(len(fences))  # mapped: most blocks anyway, search the keys in place
        self._ensure(blocks)  # key block j is body block j: keys open the body
        if len(blocks) == len(fences):
            return self.keys, None
        pos = (blocks[:, None] * per + np.arange(per)).reshape(-1)
        pos = pos[pos < len(self.keys)]
        return self.keys[pos], pos

    def _entries(self, query: Query) -> tuple[np.ndarray, np.ndarray]:
        """(positions in the query, key entries) of the queried ids this part holds."""
        probe = query.probe
        if len(self.keys) == 0 or len(probe) == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        keys, where = self._key_view(probe)
        if len(keys) == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        # Binary-search the shorter sorted array in the longer one: O(min log max).
        flip = len(keys) <= len(probe)
        short, long = (keys, probe) if flip else (probe, keys)
        if query.order is None:  # int64 ids: distinct on both sides, at most one match each
            pos = np.searchsorted(long, short)
            hit = np.flatnonzero(long[np.minimum(pos, len(long) - 1)] == short)
            qi, entry = (pos[hit], hit) if flip else (hit, pos[hit])
            return qi, (entry if where is None else where[entry])
        lo, hi = np.searchsorted(long, short, "left"), np.searchsorted(long, short, "right")
        a, b = np.repeat(np.arange(len(short)), hi - lo), gather_ranges(lo, hi)
        entry, qi = (a, b) if flip else (b, a)
        if len(qi) == 0:
            return qi, entry
        entry = entry if where is None else where[entry]
        # String ids: equal hashes make candidates; the stored UTF-8 bytes decide.
        qi = query.order[qi]
        q0, q1 = query.offsets[qi], query.offsets[qi + 1]
        self._need(self._at_str_offsets, 8, entry, entry + 2)
        s0, s1 = self.str_offsets[entry], self.str_offsets[entry + 1]
        if s0.min() < 0 or s1.max() > self._n_str or np.any(s1 < s0):
            raise CorruptStoreError(f"Index sidecar {self.name}: string offsets must run from 0 to {self._n_str}.")
        same = np.flatnonzero(s1 - s0 == q1 - q0)
        lengths = (q1 - q0)[same]
        nonempty = same[lengths > 0]
        self._need(self._at_str_data, 1, s0[nonempty], s1[nonempty])
        differs = self.str_data[gather_ranges(s0[same], s1[same])] != query.data[gather_ranges(q0[same], q1[same])]
        mismatches = np.bincount(np.repeat(np.arange(len(same)), lengths), weights=differs, minlength=len(same))
        match = same[mismatches == 0]
        return qi[match], entry[match]

    def lookup(self, query: Query, committed: int) -> tuple[np.ndarray, np.ndarray]:
        """(steps < committed of rows whose id is queried, positions in ``query.ids`` of the ids seen)."""
        qpos, entry = self._entries(query)
        lo, hi = self._rows_of(entry)
        self._need(self._at_steps, self.steps.itemsize, lo, hi)
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
        self._need_all(self._at_steps, self.steps.nbytes)
        self._need_all(self._at_starts, self.starts.nbytes)
        rows = np.flatnonzero(self.steps == step - self.first)
        entry = np.searchsorted(self.starts, rows, "right") - 1
        if len(entry) and (entry.min() < 0 or entry.max() >= len(self.keys)):
            raise CorruptStoreError(f"Index sidecar {self.name}: row starts must run from 0 to {self.n_rows}.")
        if self.id_type == "int64":
            self._need(0, 8, entry, entry + 1)
            return self.keys[entry]
        self._need(self._at_str_offsets, 8, entry, entry + 2)
        s0, s1 = self.str_offsets[entry], self.str_offsets[entry + 1]
        if len(s0) and (s0.min() < 0 or s1.max() > self._n_str or np.any(s1 < s0)):
            raise CorruptStoreError(f"Index sidecar {self.name}: string offsets must run from 0 to {self._n_str}.")
        nonempty = s1 > s0
        self._need(self._at_str_data, 1, s0[nonempty], s1[nonempty])
        data = self.str_data
        return [bytes(data[a:b]).decode("utf-8") for a, b in zip(s0.tolist(), s1.tolist())]

    def count(self, committed: int) -> int:
        """Rows with a step below ``committed``."""
        if self.end <= committed:
            return self.n_rows
        self._need_all(self._at_steps, self.steps.nbytes)
        return int(np.count_nonzero(self.steps < committed - self.first))
