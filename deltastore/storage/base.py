"""StoreIO: the small, synchronous interface every backend implements."""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from typing import BinaryIO

from ..errors import InvalidArgumentError


def check_key(key: str) -> str:
    """A key is a relative '/'-path without empty, '.' or '..' segments (it can never leave the store)."""
    if not isinstance(key, str) or not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
        raise InvalidArgumentError(f"store key: expected a relative path like 'g0000/values/zarr.json', got {key!r}")
    return key


class RangeFile(ABC):
    """One object opened for ranged reads (a shard: its index at the end, then chunks)."""

    size: int

    @abstractmethod
    def pread(self, length: int, offset: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer only at the end of the object)."""

    def tail(self, length: int) -> bytes:
        """The last ``length`` bytes (a shard's index). Object storage answers it with one
        suffix GET that also tells the size, so opening a shard costs no HEAD."""
        return self.pread(length, self.size - length) if self.size >= length else b""

    def preadv(self, ranges) -> list[bytes]:
        """``pread`` of many ``(offset, length)`` ranges; object storage issues them concurrently."""
        return [self.pread(n, o) for o, n in ranges]

    def close(self) -> None:
        pass

    def __enter__(self) -> "RangeFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Lease(ABC):
    """An exclusive lock held across calls (see :meth:`StoreIO.acquire`)."""

    @abstractmethod
    def release(self) -> None: ...

    def check(self) -> None:
        """StoreLockedError if the lease may no longer be ours (object storage: not renewed in
        time, or taken over). A writer calls it before each flush's writes."""


class StoreIO(ABC):
    """Bytes of one store. Missing keys raise ``FileNotFoundError`` naming the key.

    Writes are atomic per key: a reader sees the old bytes or the new, never a torn
    object. ``fsync=True`` also makes them survive power loss where the backend
    distinguishes the two.
    """

    def __init__(self) -> None:
        self._count_lock = threading.Lock()
        self.bytes_read = 0  # every byte returned by a read, for receipts and benchmarks

    def _count(self, n: int) -> None:
        with self._count_lock:  # reader threads add concurrently
            self.bytes_read += n

    # ---- identity -----------------------------------------------------------------
    @property
    @abstractmethod
    def url(self) -> str:
        """Where the store lives, for messages (a path or a URL)."""

    def where(self, key: str = "") -> str:
        return f"{self.url}/{key}" if key else self.url

    # ---- reading ------------------------------------------------------------------
    @abstractmethod
    def read(self, key: str) -> bytes: ...

    @abstractmethod
    def open_range(self, key: str) -> RangeFile:
        """Open ``key`` for ranged reads (one open, many ``pread`` calls)."""

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        with self.open_range(key) as f:
            return f.pread(length, offset)

    @abstractmethod
    def map(self, key: str):
        """The whole object as a read-only buffer; memory-mapped where the backend can."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def is_empty(self) -> bool:
        """True when nothing but hidden objects (names starting with '.': locks,
        temporaries) is stored here yet: a new store may be created."""

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def list_dir(self, prefix: str = "") -> list[str]:
        """Names directly under ``prefix`` (objects and sub-prefixes), sorted."""

    @abstractmethod
    def list_prefix(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix``, sorted."""

    def nbytes(self, prefix: str = "") -> int:
        """Bytes stored under ``prefix`` (the whole store for '')."""
        return sum(self.size(k) for k in self.list_prefix(prefix))

    # ---- writing ------------------------------------------------------------------
    @abstractmethod
    def writer(self, key: str, *, fsync: bool = False) -> contextlib.AbstractContextManager[BinaryIO]:
        """A file to write ``key`` into; the object appears atomically when the block ends without error."""

    def write(self, key: str, data, *, fsync: bool = False) -> None:
        """Replace ``key`` with ``data`` atomically."""
        with self.writer(key, fsync=fsync) as f:
            f.write(data)

    def swap(self, key: str, data, *, fsync: bool = False) -> None:
        """Replace ``key`` only if it is still the version this StoreIO last read or wrote
        (compare-and-swap; create-if-absent when it saw none), else CommitConflictError.

        The commit record is written with it. Backends whose writer rule is a real lock
        (local ``flock``) need no compare and replace atomically, as :meth:`write` does.
        """
        self.write(key, data, fsync=fsync)

    @abstractmethod
    def create(self, key: str, data, *, fsync: bool = False) -> bool:
        """Write ``key`` only if it does not exist (create-if-absent); False if it did."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every key under ``prefix``."""

    @abstractmethod
    def sync(self, keys) -> None:
        """Make earlier writes of ``keys`` durable (after writes made without fsync)."""

    @abstractmethod
    def lock(self, key: str, timeout: float) -> contextlib.AbstractContextManager[None]:
        """Hold an exclusive lock named ``key`` for the block (StoreLockedError after ``timeout`` s)."""

    @abstractmethod
    def acquire(self, key: str, holder: str) -> "Lease":
        """Take the exclusive lock ``key`` now, or raise StoreLockedError naming its holder.

        Held until :meth:`Lease.release` (or the process ends): the writer rule of a
        recording, FORMAT.md §5. ``holder`` describes the taker, for other processes' messages.
        """

    # ---- zarr ---------------------------------------------------------------------
    def zarr_store(self, *, read_only: bool = True, fsync: bool = False):
        """A zarr Store over this StoreIO: zarr's reads and writes take the same seam."""
        from .zarr_adapter import SeamZarrStore

        return SeamZarrStore(self, read_only=read_only, fsync=fsync)
