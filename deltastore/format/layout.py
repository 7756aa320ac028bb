"""Array layout: codecs, inner chunks and shards of a (steps, k) rows array (FORMAT.md §4)."""

from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidArgumentError

CODECS = ("blosc-zstd", "blosc-lz4", "zstd", "none")
DEFAULT_CODEC = "blosc-zstd"  # for float values; int8 values default to blosc-lz4 (see default_codec)
DEFAULT_CODEC_LEVEL = {"blosc-zstd": 3, "blosc-lz4": 5, "zstd": 3, "none": 0}
# Inner chunks: one step of one group is read alone (a one-sample request reads
# one row per epoch, not a block of neighbours), except rows under 4 KiB (biases),
# which pack several steps so per-chunk headers stay negligible. Measured on the
# digits MLP: 2 KiB to 64 KiB targets change int8 store size by < 1 %.
INNER_CHUNK_TARGET_BYTES = 4 * 1024
MAX_INNER_CHUNK_COLS = 1 << 22


def parse_codec(codec: str) -> str:
    if codec not in CODECS:
        raise InvalidArgumentError(f"codec: expected one of {CODECS}, got {codec!r}")
    return codec


def default_codec(value_dtype: str) -> str:
    """The codec a store gets when none is named.

    int8 codes of Adam/SGD updates hold ~7.2 bits of entropy per value, so no
    codec saves much: on ResNet-18 deltas (bit shuffle, 4 KiB chunks) Blosc-lz4
    keeps 0.862 of the bytes against 0.857 for Blosc-zstd level 3, at a fifth of the
    encoding CPU (9.6 vs 50.8 ms per 4.6 M values) and 0.6x the decoding time: the
    recorder's writer cost and the forgetting read path both shrink. Float values
    compress better with zstd. int4 codes (packed bytes) likewise: see
    benchmarks.values.entropy_sweep and RESULTS.md for what entropy coders would add.
    """
    from .values import parse_value_dtype

    return "blosc-lz4" if parse_value_dtype(value_dtype) in ("int8", "int4") else DEFAULT_CODEC


def compressors_for(codec: str, level: int, itemsize: int, key_id: str | None = None) -> list:
    """Zarr's bytes-to-bytes codecs of an inner chunk; ``key_id``: an encrypted store's (FORMAT.md §12.2)."""
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    shuffle = "shuffle" if itemsize > 1 else "bitshuffle"
    if codec == "blosc-zstd":
        comp = [BloscCodec(cname="zstd", clevel=level, shuffle=shuffle, typesize=itemsize)]
    elif codec == "blosc-lz4":
        comp = [BloscCodec(cname="lz4", clevel=level, shuffle=shuffle, typesize=itemsize)]
    elif codec == "zstd":
        comp = [ZstdCodec(level=level)]
    else:
        comp = []
    if key_id is not None:  # the marker of per-chunk AES-GCM: plain Zarr refuses the array
        from ..crypto.chunks import marker_codec

        comp.append(marker_codec(key_id))
    # Every inner chunk carries a crc32c: a flipped bit is an error, never a wrong subtraction.
    return comp + [Crc32cCodec()]


def chunk_layout(k: int, itemsize: int, steps_per_shard: int, *, one_step: bool = False) -> tuple[tuple[int, int], tuple[int, int]]:
    """(inner chunk shape, shard shape) for a (steps, k) array.

    ``one_step`` (encrypted stores): one step per inner chunk, so each chunk is under
    exactly one step's data key and shredding a step touches no other step.
    """
    cols = max(1, min(k, MAX_INNER_CHUNK_COLS))
    # Rows per inner chunk: the largest divisor of the shard's rows that stays under the target
    # (Zarr requires inner chunks to tile the shard exactly).
    rows = 1
    for r in range(1, steps_per_shard + 1):
        if steps_per_shard % r == 0 and r * cols * itemsize <= INNER_CHUNK_TARGET_BYTES and not one_step:
            rows = r
    shard_cols = math.ceil(max(k, 1) / cols) * cols
    return (rows, cols), (steps_per_shard, shard_cols)


def create_rows_array(parent, name: str, cols: int, dtype: np.dtype, codec: str, level: int, steps_per_shard: int, attrs: dict,
                      key_id: str | None = None):
    """Create an empty (0, cols) rows array under the Zarr group ``parent``, laid out as above (``key_id``: encrypted)."""
    chunks, shards = chunk_layout(cols, dtype.itemsize, steps_per_shard, one_step=key_id is not None)
    return parent.create_array(
        name,
        shape=(0, cols),
        dtype=dtype,
        chunks=chunks,
        shards=shards,
        compressors=compressors_for(codec, level, dtype.itemsize, key_id),
        fill_value=0,
        attributes=attrs,
        dimension_names=["step", "position"],
    )


def numcodecs_compressor(codec: str, level: int, itemsize: int):
    """The numcodecs object that does what :func:`compressors_for`'s compressor does (None for "none")."""
    import numcodecs

    shuffle = numcodecs.Blosc.SHUFFLE if itemsize > 1 else numcodecs.Blosc.BITSHUFFLE
    if codec in ("blosc-zstd", "blosc-lz4"):
        return numcodecs.Blosc(cname=codec.split("-")[1], clevel=level, shuffle=shuffle, blocksize=0, typesize=itemsize)
    if codec == "zstd":
        return numcodecs.Zstd(level=level, checksum=False)
    return None


def _codec_json(codec: str, level: int, itemsize: int, key_id: str | None = None) -> list[dict]:
    out = [{"name": "bytes"} if itemsize == 1 else {"name": "bytes", "configuration": {"endian": "little"}}]
    shuffle = "shuffle" if itemsize > 1 else "bitshuffle"
    if codec in ("blosc-zstd", "blosc-lz4"):
        out.append({"name": "blosc", "configuration": {"typesize": itemsize, "cname": codec.split("-")[1], "clevel": level,
                                                        "shuffle": shuffle, "blocksize": 0}})
    elif codec == "zstd":
        out.append({"name": "zstd", "configuration": {"level": level, "checksum": False}})
    if key_id is not None:
        from ..crypto.chunks import codec_json

        out.append(codec_json(key_id))
    return out + [{"name": "crc32c"}]


def array_metadata(rows: int, cols: int, dtype: np.dtype, codec: str, level: int, steps_per_shard: int, attrs: dict,
                   key_id: str | None = None) -> dict:
    """The exact ``zarr.json`` of a rows array as :func:`create_rows_array` writes it (FORMAT.md §3).

    Everything in it but the row count follows from the manifest, so a reader compares
    the stored metadata with this dict instead of trusting it: a flipped byte, an
    unknown codec or a crafted chunk shape never reaches a decoder.
    """
    dtype = np.dtype(dtype)
    (rc, cc), (sr, sc) = chunk_layout(cols, dtype.itemsize, steps_per_shard, one_step=key_id is not None)
    fill = 0.0 if dtype.kind == "f" else 0
    return {
        "shape": [rows, cols], "data_type": dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [sr, sc]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": [rc, cc], "codecs": _codec_json(codec, level, dtype.itemsize, key_id),
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
            "index_location": "end"}}],
        "attributes": attrs, "dimension_names": ["step", "position"],
        "zarr_format": 3, "node_type": "array", "storage_transformers": [],
    }


def group_metadata(attrs: dict) -> dict:
    """The exact ``zarr.json`` of a Zarr v3 group with ``attrs``."""
    return {"attributes": attrs, "zarr_format": 3, "node_type": "group"}
