"""The writer's direct shard encoder writes the same bytes Zarr writes, and Zarr reads them back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from deltastore.plan import PruningPlan
from deltastore.reader import StoreReader
from deltastore.recorder import Recorder
from deltastore.shards import ShardWriter
from deltastore.writer import _create_rows_array

from .helpers import TinyNet


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
    assert ShardWriter(arrays[1]).write(data, 0), "the direct path should apply to the writer's own layout"
    assert _files(base / "direct" / "values") == _files(base / "by_zarr" / "values")
    np.testing.assert_array_equal(zarr.open_array(str(base / "direct" / "values"), mode="r")[:, :], data)


def test_direct_writer_declines_rows_that_do_not_start_a_shard(tmp_path):
    g = zarr.open_group(str(tmp_path / "g"), mode="w")
    arr = _create_rows_array(g, "values", 16, np.dtype("int8"), "blosc-zstd", 3, 4, {})
    arr.resize((8, 16))
    assert not ShardWriter(arr).write(np.ones((2, 16), dtype="int8"), 2)
    assert not any((tmp_path / "g" / "values").rglob("c/*/*"))


def _train(rec, model, opt, steps: int, first: int) -> None:
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(first))
    y = torch.arange(8) % 3
    for s in range(first, first + steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        rec.samples(torch.arange(8) + 8 * s)
        opt.step()


def test_shards_shrink_to_what_the_buffer_holds(tmp_path):
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step_bytes = sum(p.numel() for p in model.state_dict().values() if p.is_floating_point()) * 4
    rec = Recorder(tmp_path / "s", model, opt, plan=PruningPlan.dense(), value_dtype="float32", steps_per_shard=64,
                   buffer_bytes=2 * 3 * step_bytes + 100)
    assert rec.writer.manifest.steps_per_shard == 3 == rec.writer.capacity
    rec.close()


def test_flushes_realign_to_shard_ends_after_an_early_flush(tmp_path, monkeypatch):
    calls = []
    original = ShardWriter.write

    def spy(self, data, start):
        ok = original(self, data, start)
        calls.append((start, data.shape[0], ok))
        return ok

    monkeypatch.setattr(ShardWriter, "write", spy)
    for name, early_flush in (("early", True), ("plain", False)):
        model = TinyNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        rec = Recorder(tmp_path / name, model, opt, plan=PruningPlan.dense(), value_dtype="float32", steps_per_shard=4)
        _train(rec, model, opt, 1, 0)
        if early_flush:
            rec.flush()  # shard 0 now holds 1 of its 4 rows
        _train(rec, model, opt, 11, 1)
        rec.close()
        if early_flush:
            flushes, calls[:] = sorted({(start, rows, ok) for start, rows, ok in calls}), []
    # step 0 (direct, new shard), steps 1-3 (completes shard 0 through Zarr), then whole shards 4-7 and 8-11
    assert flushes == [(0, 1, True), (1, 3, False), (4, 4, True), (8, 4, True)]
    early, plain = StoreReader(tmp_path / "early"), StoreReader(tmp_path / "plain")
    assert early.committed_steps == plain.committed_steps == 12
    for step in range(12):
        for t in early.manifest.tensors:
            torch.testing.assert_close(early.read_step(step, t.name), plain.read_step(step, t.name), rtol=0, atol=0)
