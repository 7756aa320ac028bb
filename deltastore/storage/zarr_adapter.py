"""SeamZarrStore: zarr's Store API over a :class:`StoreIO`, so zarr's own reads and writes
(group and array metadata, resizes, partly filled shards) take the same seam as ours."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, AsyncIterator, Iterable

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer
from zarr.core.buffer.core import default_buffer_prototype

if TYPE_CHECKING:
    from zarr.core.buffer import BufferPrototype

    from .base import StoreIO


class SeamZarrStore(Store):
    supports_writes = True
    supports_deletes = True
    supports_listing = True
    supports_partial_writes = False

    def __init__(self, io: "StoreIO", *, read_only: bool = True, fsync: bool = False):
        super().__init__(read_only=read_only)
        self.io = io
        self.fsync = fsync
        self._inflight = 0
        self._idle = threading.Condition()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SeamZarrStore) and other.io is self.io and other.read_only == self.read_only

    def __str__(self) -> str:
        return f"deltastore-seam://{self.io.url}"

    def with_read_only(self, read_only: bool = False) -> "SeamZarrStore":
        return SeamZarrStore(self.io, read_only=read_only, fsync=self.fsync)

    def _get(self, key: str, prototype: "BufferPrototype", byte_range: ByteRequest | None) -> Buffer | None:
        try:
            if byte_range is None:
                data = self.io.read(key)
            else:
                with self.io.open_range(key) as f:
                    if isinstance(byte_range, RangeByteRequest):
                        data = f.pread(byte_range.end - byte_range.start, byte_range.start)
                    elif isinstance(byte_range, OffsetByteRequest):
                        data = f.pread(max(0, f.size - byte_range.offset), byte_range.offset)
                    elif isinstance(byte_range, SuffixByteRequest):
                        start = max(0, f.size - byte_range.suffix)
                        data = f.pread(f.size - start, start)
                    else:
                        raise TypeError(f"Unexpected byte_range, got {byte_range!r}; expected a zarr ByteRequest")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return prototype.buffer.from_bytes(data)

    async def get(self, key: str, prototype: "BufferPrototype | None" = None, byte_range: ByteRequest | None = None) -> Buffer | None:
        return await asyncio.to_thread(self._get, key, prototype or default_buffer_prototype(), byte_range)

    async def get_partial_values(self, prototype: "BufferPrototype", key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.io.exists, key)

    # Writes are counted while in flight: when one of Zarr's gathered writes fails, the
    # others still run on their threads, and a caller cleaning up must wait for them (drain).
    def _write(self, fn, *args, **kwargs):
        with self._idle:
            self._inflight += 1
        try:
            return fn(*args, **kwargs)
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def drain(self, timeout: float = 60.0) -> None:
        """Wait until no write of this store is in flight."""
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout)

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()
        await asyncio.to_thread(self._write, self.io.write, key, value.as_buffer_like(), fsync=self.fsync)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        self._check_writable()
        await asyncio.to_thread(self._write, self.io.create, key, value.as_buffer_like(), fsync=self.fsync)

    async def delete(self, key: str) -> None:
        self._check_writable()
        await asyncio.to_thread(self._write, self.io.delete, key)

    async def delete_dir(self, prefix: str) -> None:
        self._check_writable()
        await asyncio.to_thread(self._write, self.io.delete_prefix, prefix)

    # Hidden names (a segment starting with '.': locks, temporaries) are the seam's, not
    # Zarr's: listing them would make Zarr see data in a store that has none yet.
    async def list(self) -> AsyncIterator[str]:
        for k in await asyncio.to_thread(self.io.list_prefix, ""):
            if not _hidden(k):
                yield k

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for k in await asyncio.to_thread(self.io.list_prefix, prefix):
            if not _hidden(k):
                yield k

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        for k in await asyncio.to_thread(self.io.list_dir, prefix.rstrip("/")):
            if not k.startswith("."):
                yield k


def _hidden(key: str) -> bool:
    return any(part.startswith(".") for part in key.split("/"))
