"""Array layout (deltastore.format.layout): inner chunks tile the shard and stay small."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deltastore.errors import InvalidArgumentError
from deltastore.format import CODECS, chunk_layout, compressors_for, default_codec, parse_codec
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
