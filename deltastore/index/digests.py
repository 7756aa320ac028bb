"""Digests of index objects: CRC-32C and size of every part and sidecar, for the commit record.

A :class:`Digest` is computed from the bytes as they are written
(:class:`DigestingFile` wraps the file object of ``io.writer``: no re-read)
and checked against the bytes a reader maps before it uses them. CRC-32C
(Castagnoli, the polynomial of iSCSI, ext4 and Zarr's ``crc32c`` codec) runs
at ~12 GB/s through ``google_crc32c`` here (SSE4.2), so checking a 60 MB
sidecar costs ~5 ms. The JSON form (FORMAT.md §6.2) is
``{"size": <int>, "crc32c": "<8 lowercase hex digits>"}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import google_crc32c
import numpy as np

from ..errors import CorruptStoreError

__all__ = ["Digest", "DigestMap", "DigestingFile", "check_digest", "digest_of", "digests_from_json", "digests_to_json"]

_HEX8 = re.compile(r"^[0-9a-f]{8}$")


@dataclass(frozen=True)
class Digest:
    """Size in bytes and CRC-32C of one stored object."""

    size: int
    crc32c: int

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "crc32c": f"{self.crc32c:08x}"}

    @classmethod
    def from_json(cls, obj: Any, what: str) -> Digest:
        """A digest from its JSON form; CorruptStoreError naming ``what`` if malformed."""
        if isinstance(obj, Digest):
            return obj
        size = obj.get("size") if isinstance(obj, dict) else None
        crc = obj.get("crc32c") if isinstance(obj, dict) else None
        if (
            isinstance(size, bool) or not isinstance(size, int) or size < 0
            or not isinstance(crc, str) or not _HEX8.match(crc) or set(obj) != {"size", "crc32c"}
        ):
            raise CorruptStoreError(
                f"Digest of {what}: expected {{'size': <int >= 0>, 'crc32c': '<8 lowercase hex digits>'}}, got {obj!r:.120}."
            )
        return cls(size, int(crc, 16))

    def __str__(self) -> str:
        return f"crc32c:{self.crc32c:08x} ({self.size} bytes)"


DigestMap = dict[str, Digest]
"""Store key (``index/part-...parquet``, ``index/_part-...ids``) -> digest."""


def _as_array(data: Any) -> np.ndarray | bytes:
    # google_crc32c takes bytes or an ndarray, not a memoryview or mmap (they need a buffer release).
    return data if isinstance(data, bytes) else np.frombuffer(data, dtype=np.uint8)


def digest_of(buffer: Any) -> Digest:
    """The digest of a whole object (bytes, mmap, memoryview: any contiguous buffer)."""
    arr = _as_array(buffer)
    return Digest(len(arr), google_crc32c.value(arr))


def check_digest(buffer: Any, expected: Digest, name: str) -> None:
    """CorruptStoreError naming ``name`` unless ``buffer`` has the expected size and CRC-32C."""
    arr = _as_array(buffer)
    if len(arr) != expected.size:
        raise CorruptStoreError(
            f"Index file {name}: expected {expected.size} bytes (commit record), found {len(arr)}."
        )
    got = google_crc32c.value(arr)
    if got != expected.crc32c:
        raise CorruptStoreError(
            f"Index file {name} fails its checksum: expected crc32c {expected.crc32c:08x} (commit record), "
            f"computed {got:08x}."
        )


class DigestingFile:
    """A write-only file that passes bytes to ``f`` and digests them on the way.

    Enough of a binary file for ``pyarrow.parquet.write_table`` and plain
    ``write`` calls: ``write``, ``flush``, ``tell``, ``closed``, ``writable``.
    """

    def __init__(self, f: Any):
        self._f = f
        self._crc = 0
        self._size = 0

    def write(self, data: Any) -> int:
        arr = _as_array(data)
        self._crc = google_crc32c.extend(self._crc, arr)
        self._size += len(arr)
        self._f.write(data)
        return len(arr)

    def flush(self) -> None:
        self._f.flush()

    def tell(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        return bool(getattr(self._f, "closed", False))

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    @property
    def digest(self) -> Digest:
        """The digest of every byte written so far."""
        return Digest(self._size, self._crc)


def digests_to_json(digests: Mapping[str, Digest]) -> dict[str, dict[str, Any]]:
    """The JSON form of a digest map, keys sorted (what the commit record stores)."""
    return {key: digests[key].to_json() for key in sorted(digests)}


def digests_from_json(obj: Any, where: str = "commit record") -> DigestMap | None:
    """A digest map from its JSON form (None stays None: a store written before digests).

    Raises
    ------
    CorruptStoreError
        Not an object of key -> digest; names ``where``.
    """
    if obj is None:
        return None
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise CorruptStoreError(f"{where}: expected the index digests as an object of store key -> digest, got {obj!r:.120}.")
    return {key: Digest.from_json(value, f"{key} in {where}") for key, value in obj.items()}


DigestSource = Mapping[str, Any] | Callable[[], Mapping[str, Any] | None] | None
