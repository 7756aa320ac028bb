"""Adding on the reader's worker threads gives the one-thread sum, bit for bit, and fails cleanly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import deltastore.read.summing as summing_module
from deltastore import errors
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader

from .helpers import record


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    out = {}
    for mode in ("random", "magnitude"):
        record(root / mode, steps=24, plan=PruningPlan.layerwise(0.8, 0.4, mode=mode), value_dtype="int8", steps_per_shard=8)
        out[mode] = root / mode
    return out


@settings(max_examples=15, deadline=None)
@given(mode=st.sampled_from(["random", "magnitude"]), steps=st.sets(st.integers(0, 23), min_size=1),
       threads=st.integers(2, 6), unit_bytes=st.sampled_from([64, 1024, 16 * 2**20]))
def test_worker_accumulation_equals_one_thread(stores, monkeypatch, mode, steps, threads, unit_bytes):
    monkeypatch.setattr(summing_module, "UNIT_BYTES", unit_bytes)  # small units: many per group, all interleaved
    one = StoreReader(stores[mode], threads=1).sum_updates(sorted(steps)).updates
    many = StoreReader(stores[mode], threads=threads).sum_updates(sorted(steps)).updates
    assert one.keys() == many.keys()
    for name in one:
        assert torch.equal(one[name], many[name]), name


def test_a_corrupt_chunk_stops_the_workers_with_the_step_named(stores, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(summing_module, "UNIT_BYTES", 64)
    path = tmp_path / "s"
    shutil.copytree(stores["random"], path)
    shard = sorted(path.glob("g*/values/c/1/0"))[0]  # steps 8-15 of the first group
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(errors.CorruptStoreError) as info:
        StoreReader(path, threads=4).sum_updates(range(24))
    assert info.value.step is not None and 8 <= info.value.step < 16
