"""SeamZarrStore: zarr's Store API over a :class:`StoreIO`, so zarr's own reads and writes
(group and array metadata, resizes, partly filled shards) take the same seam as ours."""

from __future__ import annotations

import asyncio
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

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()
        await asyncio.to_thread(self.io.write, key, value.as_buffer_like(), fsync=self.fsync)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        self._check_writable()
        await asyncio.to_thread(self.io.create, key, value.as_buffer_like(), fsync=self.fsync)

    async def delete(self, key: str) -> None:
        self._check_writable()
        await asyncio.to_thread(self.io.delete, key)

    async def delete_dir(self, prefix: str) -> None:
        self._check_writable()
        await asyncio.to_thread(self.io.delete_prefix, prefix)

    async def list(self) -> AsyncIterator[str]:
        for k in await asyncio.to_thread(self.io.list_prefix, ""):
            yield k

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for k in await asyncio.to_thread(self.io.list_prefix, prefix):
            yield k

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        for k in await asyncio.to_thread(self.io.list_dir, prefix.rstrip("/")):
            yield k
