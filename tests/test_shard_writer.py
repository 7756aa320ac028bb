"""The writer's direct shard encoder writes the same bytes Zarr writes, and Zarr reads them back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from deltastore.writer import _create_rows_array, _ShardWriter


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != "zarr.json"}


@settings(max_examples=30, deadline=None)
@given(
    dtype=st.sampled_from(["int8", "float16", "uint16", "float32"]),
    codec=st.sampled_from(["blosc-zstd", "blosc-lz4", "zstd", "none"]),
    cols=st.integers(1, 5000),
    steps_per_shard=st.sampled_from([1, 3, 8]),
    shards=st.integers(1, 3),
    tail=st.integers(0, 7),
    zero_rows=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_direct_shards_equal_zarr_shards(tmp_path_factory, dtype, codec, cols, steps_per_shard, shards, tail, zero_rows, seed):
    rng = np.random.default_rng(seed)
    rows = shards * steps_per_shard + tail % steps_per_shard if steps_per_shard > 1 else shards
    data = (rng.standard_normal((rows, cols)) * 50).astype(dtype)
    if zero_rows:
        data[::2] = 0  # all-fill inner chunks are left out, as Zarr does
    base = tmp_path_factory.mktemp("shards")
    arrays = []
    for name in ("by_zarr", "direct"):
        g = zarr.open_group(str(base / name), mode="w")
        arr = _create_rows_array(g, "values", cols, np.dtype(dtype), codec, 3, steps_per_shard, {})
        arr.resize((rows, cols))
        arrays.append(arr)
    arrays[0][:, :] = data
    assert _ShardWriter(arrays[1]).write(data, 0), "the direct path should apply to the writer's own layout"
    assert _files(base / "direct" / "values") == _files(base / "by_zarr" / "values")
    np.testing.assert_array_equal(zarr.open_array(str(base / "direct" / "values"), mode="r")[:, :], data)


def test_direct_writer_declines_rows_that_do_not_start_a_shard(tmp_path):
    g = zarr.open_group(str(tmp_path / "g"), mode="w")
    arr = _create_rows_array(g, "values", 16, np.dtype("int8"), "blosc-zstd", 3, 4, {})
    arr.resize((8, 16))
    assert not _ShardWriter(arr).write(np.ones((2, 16), dtype="int8"), 2)
    assert not any((tmp_path / "g" / "values").rglob("c/*/*"))
