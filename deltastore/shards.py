"""Whole shards of a (steps, k) rows array, encoded in Zarr v3's sharding format.

The writer's fast path (see :class:`ShardWriter`) and the storage benchmark's
size computation share these encoders, so both follow the same bytes Zarr writes.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import google_crc32c  # Zarr's own crc32c dependency
import numpy as np

__all__ = ["ShardLayout", "ShardWriter", "shard_layout", "encode_chunk", "numcodecs_chain", "crc32c_bytes"]


@dataclass(frozen=True)
class ShardLayout:
    """What the direct shard paths (this writer, the reader's ``_ShardRows``) need of a 2-D array."""

    chunk: tuple[int, int]  # inner chunk shape
    shard: tuple[int, int]  # shard shape
    chain: list  # numcodecs_chain of the inner chunks: [compressor,] "crc32c"
    fill_value: object


def shard_layout(arr) -> ShardLayout | None:
    """The layout our writer makes, or None: sharding_indexed with the index at the end
    (bytes + crc32c), inner chunks bytes -> [blosc|zstd] -> crc32c, default "/" chunk
    keys, little-endian, 2-D, inner chunks tiling the shard."""
    from zarr.codecs import ShardingCodec

    try:
        meta = arr.metadata
        (sharding,) = meta.codecs
        chunk = tuple(int(x) for x in sharding.chunk_shape)
        shard = tuple(int(x) for x in meta.chunk_grid.chunk_shape)
        chain = numcodecs_chain(sharding.codecs)
        ok = (
            isinstance(sharding, ShardingCodec)
            and sharding.index_location.value == "end"
            and numcodecs_chain(sharding.index_codecs) == ["crc32c"]
            and chain[-1:] == ["crc32c"] and len(chain) <= 2
            and meta.chunk_key_encoding.name == "default" and meta.chunk_key_encoding.separator == "/"
            and len(shard) == 2 and len(chunk) == 2 and all(s % c == 0 for s, c in zip(shard, chunk))
            and getattr(meta.data_type, "endianness", None) != "big" and np.little_endian
        )
    except (ValueError, TypeError, AttributeError, KeyError):
        return None
    return ShardLayout(chunk, shard, chain, meta.fill_value) if ok else None


class ShardWriter:
    """Writes whole shards of one rows array in Zarr v3's sharding format, byte for byte as Zarr would.

    Layout (Zarr v3 sharding codec, index at the end): the encoded inner chunks in
    Morton order, then an index of (offset, length) uint64 little-endian pairs per
    chunk slot ((2**64 - 1, 2**64 - 1) for an absent chunk) followed by its crc32c.
    An inner chunk is its C-order bytes (padded with the fill value to the chunk
    shape), compressed, then crc32c (little-endian) appended. Chunks equal to the
    fill value everywhere are not stored (Zarr's write_empty_chunks=False). Files are
    replaced atomically, as Zarr's LocalStore does. Tested against Zarr's own bytes.
    """

    def __init__(self, arr):
        store = arr.store_path.store
        self.path = Path(store.root) / arr.path if hasattr(store, "root") else None
        layout = shard_layout(arr) if self.path is not None else None
        self.ok = layout is not None and layout.fill_value == 0
        if self.ok:
            from zarr.core.indexing import morton_order_iter

            self.chunk, self.shard, self.chain = layout.chunk, layout.shard, layout.chain
            self.per_shard = (self.shard[0] // self.chunk[0], self.shard[1] // self.chunk[1])
            self.order = list(morton_order_iter(self.per_shard))

    def write(self, data: np.ndarray, start: int) -> bool:
        """Write rows ``start..`` of ``data`` as whole new shards; False if this path does not apply."""
        if not self.ok or start % self.shard[0] or data.dtype.byteorder == ">":
            return False
        rows, cols = data.shape
        sr, sc = self.shard
        for s0 in range(0, rows, sr):
            for t0 in range(0, cols, sc):
                blob = self._encode_shard(data[s0 : s0 + sr, t0 : t0 + sc])
                path = self.path / "c" / str((start + s0) // sr) / str(t0 // sc)
                if blob is None:
                    path.unlink(missing_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
                with open(tmp, "wb") as f:
                    f.write(blob)
                os.replace(tmp, path)
        return True

    def _encode_shard(self, block: np.ndarray) -> bytes | None:
        r, c = self.chunk
        index = np.full(self.per_shard + (2,), np.iinfo(np.uint64).max, dtype="<u8")
        parts, offset = [], 0
        for i, j in self.order:
            chunk = block[i * r : (i + 1) * r, j * c : (j + 1) * c]
            if chunk.size == 0 or not chunk.any():
                continue
            if chunk.shape != (r, c):
                chunk = np.pad(chunk, ((0, r - chunk.shape[0]), (0, c - chunk.shape[1])))
            enc = encode_chunk(np.ascontiguousarray(chunk), self.chain)
            index[i, j] = (offset, len(enc))
            parts.append(enc)
            offset += len(enc)
        if not parts:
            return None
        raw = index.tobytes()
        parts.append(raw + crc32c_bytes(raw))
        return b"".join(parts)


def crc32c_bytes(b) -> bytes:
    return int(google_crc32c.value(b)).to_bytes(4, "little")


def numcodecs_chain(codecs) -> list:
    """Zarr v3 codecs of a chunk -> a list of numcodecs codecs and the marker "crc32c"; ValueError if unknown."""
    import numcodecs
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec

    out: list = []
    for c in codecs:
        if isinstance(c, BytesCodec):
            if c.endian is not None and c.endian.value != "little":
                raise ValueError("big-endian chunks")
        elif isinstance(c, BloscCodec):
            shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[c.shuffle.value]
            out.append(numcodecs.Blosc.from_config({"cname": c.cname.value, "clevel": c.clevel, "shuffle": shuffle,
                                                    "blocksize": c.blocksize, "typesize": c.typesize}))
        elif isinstance(c, ZstdCodec):
            out.append(numcodecs.Zstd(level=c.level, checksum=c.checksum))
        elif isinstance(c, Crc32cCodec):
            out.append("crc32c")
        else:
            raise ValueError(f"codec {type(c).__name__} is not handled by the direct shard writer")
    return out


def encode_chunk(chunk: np.ndarray, chain: list) -> bytes:
    buf = chunk.view(np.uint8).reshape(-1)
    for codec in chain:
        if codec == "crc32c":
            b = bytes(buf)
            buf = np.frombuffer(b + crc32c_bytes(b), dtype=np.uint8)
        else:
            buf = np.frombuffer(codec.encode(buf), dtype=np.uint8)
    return bytes(buf)
