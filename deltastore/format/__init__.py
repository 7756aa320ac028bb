"""The on-disk format in code: one module per part of docs/FORMAT.md.

Layout of one store (one training run), keys relative to its root::

    zarr.json            Zarr v3 group; attributes["deltastore"] = manifest   (manifest.py)
                         + consolidated metadata after close, for plain Zarr (consolidated.py)
    commit.json          {"committed_steps": N, "model_fingerprint": ...}     (commit.py)
    gNNNN/values         (steps, k) pruned update values, one row per step    (values.py, layout.py)
    gNNNN/scales         (steps, ceil(k / block)) float32, int8 and int4 values only
    gNNNN/indices        (steps, k) int32/int64 kept positions, magnitude/global only
    gNNNN/*/c/<i>/<j>    shards in Zarr's sharding format                      (shards.py)
    index/part-*.parquet the sample index, index/_part-*.ids its sorted-id sidecars (deltastore.index)
    ledger/*.json        forget/restore receipts                                (unlearning.ledger)

Every byte goes through :mod:`deltastore.storage`, the one I/O seam.
"""

from __future__ import annotations

from .commit import COMMIT_FILE, COMMIT_VERSION, INDEX_DIR, check_checksum, check_manifest_digest, read_commit, sha256_of, with_checksum, write_commit, write_json
from .layout import (
    CODECS,
    DEFAULT_CODEC,
    DEFAULT_CODEC_LEVEL,
    chunk_layout,
    compressors_for,
    array_metadata,
    create_rows_array,
    default_codec,
    group_metadata,
    parse_codec,
)
from .manifest import FORMAT_NAME, FORMAT_VERSION, MANIFEST_KEY, Group, Manifest, RootDigests, build_groups, group_arrays, load_manifest, model_fingerprint, read_manifest, read_root
from .consolidated import consolidated_problems, remove_consolidated, write_consolidated
from .shards import ShardDecoder, ShardEncoder, ShardLayout, encode_chunk, numcodecs_chain, shard_layout
from .int4 import Int4Codec
from .values import (
    DEFAULT_BLOCK,
    DEFAULT_INT4_BLOCK,
    DEFAULT_INT8_BLOCK,
    DEFAULT_VALUE_DTYPE,
    VALUE_DTYPES,
    FloatCodec,
    Int8Codec,
    ValueCodec,
    parse_value_dtype,
    value_codec,
)

__all__ = [
    "CODECS", "COMMIT_FILE", "COMMIT_VERSION", "DEFAULT_CODEC", "DEFAULT_CODEC_LEVEL", "DEFAULT_BLOCK", "DEFAULT_INT4_BLOCK", "DEFAULT_INT8_BLOCK", "DEFAULT_VALUE_DTYPE",
    "FORMAT_NAME", "FORMAT_VERSION", "INDEX_DIR", "MANIFEST_KEY", "VALUE_DTYPES",
    "FloatCodec", "Group", "Int4Codec", "Int8Codec", "Manifest", "ShardDecoder", "ShardEncoder", "ShardLayout", "ValueCodec",
    "array_metadata", "build_groups", "check_checksum", "check_manifest_digest", "group_arrays", "group_metadata", "read_manifest", "read_root", "RootDigests", "consolidated_problems", "remove_consolidated", "write_consolidated", "sha256_of", "with_checksum", "chunk_layout", "compressors_for", "create_rows_array", "default_codec", "encode_chunk",
    "load_manifest", "model_fingerprint", "numcodecs_chain", "parse_codec", "parse_value_dtype", "read_commit",
    "shard_layout", "value_codec", "write_commit", "write_json",
]
