"""Shards (deltastore.format.shards): the encoder writes the bytes Zarr writes; the decoder reads what Zarr reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from deltastore.plan import PruningPlan
from deltastore.format import ShardDecoder, ShardEncoder, create_rows_array, shard_layout
from deltastore.format import layout as layout_module
from deltastore.storage import LocalStoreIO

from .helpers import record


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
        data[::2] = 0  # all-fill inner chunks are left out, as Zarr does (whole shards too, when a shard is one row)
    base = tmp_path_factory.mktemp("shards")
    arrays = []
    for name in ("by_zarr", "direct"):
        g = zarr.open_group(str(base / name), mode="w")
        arr = create_rows_array(g, "values", cols, np.dtype(dtype), codec, 3, steps_per_shard, {})
        arr.resize((rows, cols))
        arrays.append(arr)
    arrays[0][:, :] = data
    encoder = ShardEncoder(LocalStoreIO(base / "direct"), shard_layout(arrays[1]))
    assert encoder.write(data, 0), "the direct path should apply to the writer's own layout"
    direct, by_zarr = _files(base / "direct" / "values"), _files(base / "by_zarr" / "values")
    assert {k: direct[k] for k in by_zarr} == by_zarr  # every shard Zarr writes, byte for byte
    # Zarr writes no file for an all-zero shard; the encoder writes its index alone (absence is damage).
    assert all(direct[k] == encoder.empty_shard() for k in set(direct) - set(by_zarr))
    np.testing.assert_array_equal(zarr.open_array(str(base / "direct" / "values"), mode="r")[:, :], data)


def test_direct_writer_declines_rows_that_do_not_start_a_shard(tmp_path):
    g = zarr.open_group(str(tmp_path / "g"), mode="w")
    arr = create_rows_array(g, "values", 16, np.dtype("int8"), "blosc-zstd", 3, 4, {})
    arr.resize((8, 16))
    assert not ShardEncoder(LocalStoreIO(tmp_path / "g"), shard_layout(arr)).write(np.ones((2, 16), dtype="int8"), 2)
    assert not any((tmp_path / "g" / "values").rglob("c/*/*"))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """An int8 store, and a magnitude-mode float16 one whose rows span several inner chunks."""
    root = tmp_path_factory.mktemp("fast")
    record(root / "int8", steps=9, steps_per_shard=4, plan=PruningPlan.layerwise(), value_dtype="int8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(layout_module, "MAX_INNER_CHUNK_COLS", 50)
        record(root / "f16", steps=9, steps_per_shard=4, plan=PruningPlan.layerwise(mode="magnitude"), value_dtype="float16")
    out = []
    for name in ("int8", "f16"):
        group = zarr.open_group(str(root / name), mode="r")
        io = LocalStoreIO(root / name)
        # Every rows array with its whole content read through Zarr once: the reference.
        arrays = [a for _, sub in group.groups() for _, a in sub.arrays()]
        out.append([(ShardDecoder(io, shard_layout(a)), a, a[:]) for a in arrays])
    return out


@settings(max_examples=25, deadline=None)
@given(rows=st.lists(st.integers(0, 8), min_size=1, max_size=12))
def test_decoder_reads_equal_zarr(stores, rows):
    sel = np.asarray(rows, dtype=np.int64)
    for arrays in stores:
        for decoder, arr, full in arrays:
            assert np.array_equal(decoder.read(sel), full[sel])
    wide = [a for _, a, _ in stores[1] if a.metadata.to_dict()["codecs"][0]["configuration"]["chunk_shape"][1] < a.shape[1]]
    assert wide  # some rows really are split across inner chunks


def test_the_writers_layout_takes_the_direct_paths(stores):
    for arrays in stores:
        assert all(shard_layout(a) is not None for _, a, _ in arrays)
