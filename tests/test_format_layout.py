"""Array layout (deltastore.format.layout): inner chunks tile the shard and stay small."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from zarr.storage import MemoryStore

from deltastore.errors import InvalidArgumentError
from deltastore.format import CODECS, ShardLayout, chunk_layout, compressors_for, create_rows_array, default_codec, parse_codec, shard_layout
from deltastore.format.layout import array_metadata, group_metadata
from deltastore.format.layout import INNER_CHUNK_TARGET_BYTES, MAX_INNER_CHUNK_COLS


@given(k=st.integers(0, 10**8), itemsize=st.sampled_from([1, 2, 4, 8]), sps=st.integers(1, 128))
def test_inner_chunks_tile_the_shard(k, itemsize, sps):
    (rows, cols), (shard_rows, shard_cols) = chunk_layout(k, itemsize, sps)
    assert shard_rows == sps and sps % rows == 0
    assert shard_cols % cols == 0 and shard_cols >= k
    assert 1 <= cols <= MAX_INNER_CHUNK_COLS
    assert rows == 1 or rows * cols * itemsize <= INNER_CHUNK_TARGET_BYTES  # small rows pack steps, large ones don't


def test_codecs_and_their_defaults():
    assert default_codec("int8") == "blosc-lz4" and default_codec("bfloat16") == "blosc-zstd"
    for codec in CODECS:
        chain = compressors_for(codec, 3, 2)
        assert type(chain[-1]).__name__ == "Crc32cCodec"  # every chunk is checksummed
        assert len(chain) == (1 if codec == "none" else 2)
    with pytest.raises(InvalidArgumentError, match="codec: expected one of"):
        parse_codec("pickle")


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from(["float32", "float16", "uint16", "int8", "int32", "int64"]), codec=st.sampled_from(list(CODECS)),
       level=st.integers(1, 9), cols=st.integers(1, 20000), sps=st.integers(1, 70), rows=st.integers(0, 200))
def test_expected_metadata_is_what_zarr_writes(dtype, codec, level, cols, sps, rows):
    store = MemoryStore()
    arr = create_rows_array(zarr.open_group(store, mode="w"), "v", cols, np.dtype(dtype), codec, level, sps, {"value_dtype": "x"})
    arr.resize((rows, cols))
    written = json.loads(store._store_dict["v/zarr.json"].to_bytes())
    assert written == array_metadata(rows, cols, np.dtype(dtype), codec, level, sps, {"value_dtype": "x"})
    lay, ref = ShardLayout.of("v", cols, dtype, codec, level, sps), shard_layout(arr)  # from the manifest / from Zarr
    assert (lay.path, lay.dtype, lay.chunk, lay.shard, lay.fill_value) == (ref.path, ref.dtype, ref.chunk, ref.shard, 0)
    config = [c if c == "crc32c" else c.get_config() for c in lay.chain]
    assert config == [c if c == "crc32c" else c.get_config() for c in ref.chain]
    assert json.loads(store._store_dict["zarr.json"].to_bytes()) == group_metadata({})
