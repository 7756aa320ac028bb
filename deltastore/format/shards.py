"""Whole shards of a (steps, k) rows array in Zarr v3's sharding format: encoder and decoder side by side.

Layout (Zarr v3 sharding codec, index at the end): the encoded inner chunks in
Morton order, then an index of (offset, length) uint64 little-endian pairs per
chunk slot ((2**64 - 1, 2**64 - 1) for an absent chunk) followed by its crc32c.
An inner chunk is its C-order bytes (padded with the fill value to the chunk
shape), compressed, then crc32c (little-endian) appended. Chunks equal to the
fill value everywhere are not stored (Zarr's write_empty_chunks=False).

Why not Zarr's own code for these arrays: Zarr runs every inner chunk through
its asyncio codec pipeline, ~2 ms of Python per chunk (measured with py-spy on
the 2-core dev CPU); a ResNet-18-sized int8 step has ~40 inner chunks. Reading,
Zarr's event loop costs ~1.3 ms per call holding the GIL, which for ~100 small
groups outweighs the data. Both directions here are byte-equal to Zarr
(property-tested) and run their codecs with the GIL released.
"""

from __future__ import annotations

from dataclasses import dataclass

import google_crc32c  # Zarr's own crc32c dependency
import numpy as np

EMPTY = (1 << 64) - 1  # shard index entry of a chunk that was never written (all fill value)


@dataclass(frozen=True)
class ShardLayout:
    """What the direct shard paths need of a 2-D array."""

    path: str  # the array's key prefix in the store
    shape: tuple[int, int]
    dtype: np.dtype
    chunk: tuple[int, int]  # inner chunk shape
    shard: tuple[int, int]  # shard shape
    chain: list  # numcodecs_chain of the inner chunks: [compressor,] "crc32c"
    fill_value: object
    encrypted: bool = False  # chunks AES-GCM encrypted between compressor and crc32c (deltastore.crypto.chunks)

    @classmethod
    def of(cls, path: str, cols: int, dtype, codec: str, level: int, steps_per_shard: int, *, encrypted: bool = False) -> "ShardLayout":
        """The layout the writer gives a rows array, derived from the manifest alone (FORMAT.md §3)."""
        from .layout import chunk_layout, numcodecs_compressor

        dtype = np.dtype(dtype)
        chunk, shard = chunk_layout(cols, dtype.itemsize, steps_per_shard, one_step=encrypted)
        comp = numcodecs_compressor(codec, level, dtype.itemsize)
        return cls(path, (0, cols), dtype, chunk, shard, ([comp] if comp is not None else []) + ["crc32c"], 0, encrypted)

    @property
    def per_shard(self) -> tuple[int, int]:
        return self.shard[0] // self.chunk[0], self.shard[1] // self.chunk[1]

    def key(self, shard_row: int, shard_col: int) -> str:
        return f"{self.path}/c/{shard_row}/{shard_col}"


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
    if not ok:
        return None
    return ShardLayout(arr.path, tuple(arr.shape), np.dtype(arr.dtype), chunk, shard, chain, meta.fill_value)


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
            raise ValueError(f"codec {type(c).__name__} is not handled by the direct shard paths")
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


class ShardEncoder:
    """Writes whole shards of one rows array through the seam, byte for byte as Zarr would."""

    def __init__(self, io, layout: ShardLayout | None):
        self.io = io
        self.layout = layout if layout is not None and layout.fill_value == 0 else None
        self.cipher = _cipher(io, self.layout)  # encrypted stores: per-step AES-GCM of each chunk
        if self.layout is not None:
            from zarr.core.indexing import morton_order_iter

            self.order = list(morton_order_iter(self.layout.per_shard))

    def write(self, data: np.ndarray, start: int, *, fsync: bool = False) -> bool:
        """Write rows ``start..`` of ``data`` as whole new shards; False if this path does not apply."""
        lay = self.layout
        if lay is not None and self.cipher is not None and start % lay.shard[0]:
            return self.cipher_write_tail(data, start, fsync=fsync)  # Zarr cannot write encrypted chunks
        if lay is None or start % lay.shard[0] or data.dtype.byteorder == ">":
            return False
        rows, cols = data.shape
        sr, sc = lay.shard
        for s0 in range(0, rows, sr):
            for t0 in range(0, cols, sc):
                blob = self.encode_shard(data[s0 : s0 + sr, t0 : t0 + sc], (start + s0) // sr, t0 // sc)
                self.io.write(lay.key((start + s0) // sr, t0 // sc), blob, fsync=fsync)
        return True

    def cipher_write_tail(self, data: np.ndarray, start: int, *, fsync: bool) -> bool:
        """Encrypted stores, rows that start inside a shard (a resume, an early flush): the shard is
        rewritten whole, its earlier rows' encrypted chunks copied byte for byte (never decrypted,
        so a shredded step's chunk stays as it was) and the new rows encrypted."""
        lay = self.layout
        sr, sc = lay.shard
        rows, cols = data.shape
        first = start - start % sr
        end = start + rows
        for shard in range(first // sr, (end - 1) // sr + 1):
            lo, hi = max(start, shard * sr), min(end, (shard + 1) * sr)
            block = np.zeros((hi - shard * sr, cols), dtype=data.dtype)
            block[lo - shard * sr :] = data[lo - start : hi - start]
            for t0 in range(0, cols, sc):
                key = lay.key(shard, t0 // sc)
                kept = self._existing_chunks(key, lo - shard * sr) if lo > shard * sr else {}
                blob = self.encode_shard(block[:, t0 : t0 + sc], shard, t0 // sc, kept=kept)
                self.io.write(key, blob, fsync=fsync)
        return True

    def _existing_chunks(self, key: str, rows: int) -> dict:
        """The stored chunks (crc32c checked) of inner rows ``< rows`` of shard ``key``."""
        from ..errors import CorruptStoreError

        try:
            blob = self.io.read(key)
        except FileNotFoundError:
            return {}
        per = self.layout.per_shard
        n_index = 16 * per[0] * per[1] + 4
        raw = blob[-n_index:]
        if len(blob) < n_index or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            raise CorruptStoreError(f"{self.io.where(key)}: shard index is truncated or fails its checksum")
        index = np.frombuffer(raw, dtype="<u8", count=2 * per[0] * per[1]).reshape(per[0], per[1], 2)
        out = {}
        for i in range(min(rows, per[0])):
            for j in range(per[1]):
                off, n = (int(x) for x in index[i, j])
                if off == EMPTY:
                    continue
                chunk = blob[off : off + n]
                if len(chunk) != n or n < 4 or off + n > len(blob) - n_index or \
                        google_crc32c.value(chunk[:-4]) != int.from_bytes(chunk[-4:], "little"):
                    raise CorruptStoreError(f"{self.io.where(key)}: inner chunk {i},{j} is truncated or fails its checksum")
                out[(i, j)] = chunk
        return out

    def empty_shard(self) -> bytes:
        """A shard whose chunks are all the fill value: only its index (every entry "absent")."""
        return self.encode_shard(np.zeros((0, 0), dtype=self.layout.dtype), 0, 0)  # no chunk: no position needed

    def encode_shard(self, block: np.ndarray, shard_row: int | None = None, shard_col: int | None = None, *,
                     kept: dict | None = None) -> bytes:
        """One shard's bytes. A shard whose chunks all equal the fill value is its index alone
        (Zarr would write no file; a store writes it, so a missing shard is always damage).

        ``shard_row``, ``shard_col``: where the shard lies (encrypted chunks are bound to their
        step and column); ``kept``: stored chunks to copy as they are, by inner position."""
        if self.cipher is not None and (shard_row is None or shard_col is None):
            from ..errors import InvalidArgumentError

            raise InvalidArgumentError(f"{self.layout.path}: an encrypted shard needs its position (shard_row, shard_col): "
                                       "its chunks are bound to their steps")
        r, c = self.layout.chunk
        index = np.full(self.layout.per_shard + (2,), EMPTY, dtype="<u8")
        parts, offset = [], 0
        for i, j in self.order:
            if kept and (i, j) in kept:
                enc = kept[(i, j)]
                index[i, j] = (offset, len(enc))
                parts.append(enc)
                offset += len(enc)
                continue
            chunk = block[i * r : (i + 1) * r, j * c : (j + 1) * c]
            if chunk.size == 0 or not chunk.any():
                continue
            if chunk.shape != (r, c):
                chunk = np.pad(chunk, ((0, r - chunk.shape[0]), (0, c - chunk.shape[1])))
            if self.cipher is None:
                enc = encode_chunk(np.ascontiguousarray(chunk), self.layout.chain)
            else:  # compress, encrypt (bound to step and column chunk), then crc32c
                sealed = self.cipher.encrypt(encode_chunk(np.ascontiguousarray(chunk), self.layout.chain[:-1]),
                                             shard_row * self.layout.shard[0] + i, shard_col * self.layout.per_shard[1] + j)
                enc = sealed + crc32c_bytes(sealed)
            index[i, j] = (offset, len(enc))
            parts.append(enc)
            offset += len(enc)
        raw = index.tobytes()
        parts.append(raw + crc32c_bytes(raw))
        return b"".join(parts)


class ShardDecoder:
    """Rows of one (steps, k) array read straight from its shards through the seam (ranged reads).

    Reads the shard index and only the inner chunks needed, decodes them with
    numcodecs (GIL released) and checks every crc32c as Zarr does.
    """

    def __init__(self, io, layout: ShardLayout, *, rows: int | None = None, require_shards: bool = False):
        self.io, self.lay = io, layout
        self.rows = rows  # rows that may be read (committed steps); None: unchecked
        self.require_shards = require_shards  # a missing shard is damage, not zeros
        self.k = layout.shape[1]
        self.rc, self.cc = layout.chunk
        self.sps, self.scols = layout.shard
        self.per_row = self.scols // self.cc  # inner chunks across one shard row
        self.nchunks = (self.sps // self.rc) * self.per_row
        self.decoder = layout.chain[0] if len(layout.chain) == 2 else None  # chain: [compressor,] "crc32c"
        self.cipher = _cipher(io, layout)  # encrypted stores: each chunk decrypted after its crc32c

    def read(self, sel: np.ndarray) -> np.ndarray:
        """``arr[sel, :]`` for committed rows ``sel`` (any order, repeats allowed)."""
        if self.rows is not None and sel.size and (int(sel.min()) < 0 or int(sel.max()) >= self.rows):
            raise ValueError(f"{self.lay.path}: expected rows in [0, {self.rows}), got {sel.min()}..{sel.max()}")
        order = np.argsort(sel, kind="stable")
        out = np.empty((sel.size, self.k), dtype=self.lay.dtype)
        j = 0
        while j < order.size:  # one shard (row of shards) at a time
            shard = int(sel[order[j]]) // self.sps
            e = j
            while e < order.size and int(sel[order[e]]) // self.sps == shard:
                e += 1
            for cs in range(-(-self.k // self.scols)):
                self._read_shard(out, sel, order[j:e], shard, cs)
            j = e
        return out

    def _read_shard(self, out: np.ndarray, sel: np.ndarray, positions: np.ndarray, shard: int, cs: int) -> None:
        lo_col = cs * self.scols
        hi_col = min(self.k, lo_col + self.scols)
        key = self.lay.key(shard, cs)
        try:
            f = self.io.open_range(key)
        except FileNotFoundError:
            if self.require_shards:
                from ..errors import CorruptStoreError

                steps = sorted({int(sel[p]) for p in positions})
                raise CorruptStoreError(f"{self.io.where(key)}: expected the shard of steps {steps[:5]}..., it is missing",
                                        step=steps[0], tensor=self.lay.path) from None
            out[positions, lo_col:hi_col] = self.lay.fill_value  # stores before commit version 2 left all-zero shards out
            return
        with f:
            n_index = 16 * self.nchunks + 4
            raw_index = f.tail(n_index)  # object storage: one suffix GET that also tells the size
            if len(raw_index) != n_index or google_crc32c.value(raw_index[:-4]) != int.from_bytes(raw_index[-4:], "little"):
                raise ValueError(f"{self.io.where(key)}: shard index is truncated or fails its checksum")
            index = np.frombuffer(raw_index, dtype="<u8", count=2 * self.nchunks).reshape(self.nchunks, 2)
            self._check_index(index, f.size - n_index, key)
            # First every inner chunk the rows need, then one preadv: object storage fetches
            # them with concurrent ranged GETs; locally it is the same preads as before.
            wanted = []  # (rows_out, rows_in, lo, hi, inner_row, c, offset, nbytes)
            p = 0
            while p < positions.size:  # one inner row of chunks at a time
                inner_row = (int(sel[positions[p]]) % self.sps) // self.rc
                e = p
                while e < positions.size and (int(sel[positions[e]]) % self.sps) // self.rc == inner_row:
                    e += 1
                rows_out = positions[p:e]
                rows_in = sel[rows_out] % self.sps - inner_row * self.rc
                for c in range(self.per_row):
                    lo = lo_col + c * self.cc
                    if lo >= hi_col:
                        break
                    hi = min(hi_col, lo + self.cc)
                    off, nbytes = (int(x) for x in index[inner_row * self.per_row + c])
                    if off == EMPTY and nbytes == EMPTY:
                        if self.cipher is not None:  # a shredded step is an error, never zeros
                            self.cipher.check_step(shard * self.sps + inner_row)
                        out[rows_out, lo:hi] = self.lay.fill_value
                        continue
                    wanted.append((rows_out, rows_in, lo, hi, inner_row, c, off, nbytes))
                p = e
            bufs = f.preadv([(w[6], w[7]) for w in wanted])
            for (rows_out, rows_in, lo, hi, inner_row, c, _, nbytes), buf in zip(wanted, bufs):
                payload = np.frombuffer(buf, dtype=np.uint8)[:-4]  # a view: no copy of the chunk
                if len(buf) != nbytes or nbytes < 4 or google_crc32c.value(payload) != int.from_bytes(buf[-4:], "little"):
                    raise ValueError(f"{self.io.where(key)}: inner chunk {inner_row},{c} is truncated or fails its checksum")
                if self.cipher is not None:
                    payload = self.cipher.decrypt(payload, shard * self.sps + inner_row, cs * self.per_row + c, key)
                if self.rc == 1 and hi - lo == self.cc and rows_out.size == 1:
                    self._decode_into(payload, out[int(rows_out[0]), lo:hi])  # straight into the output row
                else:
                    chunk = np.empty((self.rc, self.cc), dtype=self.lay.dtype)
                    self._decode_into(payload, chunk.reshape(-1))
                    out[rows_out, lo:hi] = chunk[rows_in, : hi - lo]

    def _check_index(self, index: np.ndarray, data_end: int, key: str) -> None:
        """Every present chunk lies inside the shard's data and is no larger than a chunk can
        encode to (zstd's bound: raw + raw/128 + 1 KiB): bounded reads for any index bytes."""
        present = index[:, 0] != EMPTY
        if not present.any():
            return
        raw = self.rc * self.cc * self.lay.dtype.itemsize + (self.cipher.overhead if self.cipher is not None else 0)
        offsets, sizes = index[present, 0], index[present, 1]
        if np.any(sizes > raw + raw // 128 + 1024) or np.any(sizes > data_end) or np.any(offsets > data_end - sizes):
            raise ValueError(f"{self.io.where(key)}: shard index points outside the shard or claims oversized chunks")

    def _decode_into(self, payload, dest: np.ndarray) -> None:
        if self.decoder is None:
            if len(payload) != dest.nbytes:
                raise ValueError(f"inner chunk: expected {dest.nbytes} bytes, got {len(payload)}")
            dest[...] = np.frombuffer(payload, dtype=self.lay.dtype)
        else:
            got = self.decoder.decode(payload, out=dest)
            if got is not dest and np.asarray(got).nbytes != dest.nbytes:
                raise ValueError(f"inner chunk: expected {dest.nbytes} bytes decoded, got {np.asarray(got).nbytes}")


def _cipher(io, layout):
    """The chunk cipher of an encrypted array (None for a plain one); EncryptionKeyError without the key."""
    if layout is None or not layout.encrypted:
        return None
    make = getattr(io, "chunk_cipher", None)
    if make is None:
        from ..errors import EncryptionKeyError

        raise EncryptionKeyError(f"{io.where(layout.path)}: the array is encrypted; open the store with its key")
    return make(layout)
