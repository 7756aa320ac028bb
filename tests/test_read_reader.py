"""StoreReader (deltastore.read.reader): steps, rows, one step, bytes counted through the seam."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from deltastore.errors import InvalidArgumentError, ModelMismatchError
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader

from .helpers import TinyNet, record


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("r") / "s"
    record(path, steps=7, steps_per_shard=3, plan=PruningPlan.layerwise(0.8, 0.4, mode="magnitude"), value_dtype="float32")
    return path


def test_parse_steps_sorts_dedupes_and_refuses_uncommitted(store):
    r = StoreReader(store)
    assert r.parse_steps([5, 1, 5, 0]) == [0, 1, 5]
    assert r.parse_steps(np.array([], dtype=np.int64)) == []
    with pytest.raises(InvalidArgumentError, match=r"expected committed steps in \[0, 7\), got \[7\]"):
        r.parse_steps([2, 7])
    with pytest.raises(InvalidArgumentError, match="expected integers"):
        r.parse_steps([1.5])


def test_shard_batches_never_cross_a_shard(store):
    r = StoreReader(store)
    assert r.shard_batches([0, 1, 2, 3, 5, 6]) == [[0, 1, 2], [3, 5], [6]]


def test_read_rows_matches_zarr_and_indices_are_in_range(store):
    r = StoreReader(store)
    group = zarr.open_group(str(store), mode="r")
    for g in r.manifest.groups:
        vals, idx = r.read_rows(g.id, [4, 0, 4])
        np.testing.assert_array_equal(vals.numpy(), group[f"{g.path}/values"][[4, 0, 4]])
        if g.selection.stores_indices:
            assert idx.shape == vals.shape and int(idx.max()) < g.n
        else:
            assert idx is None


def test_reads_are_counted_through_the_seam(store):
    r = StoreReader(store)
    before = r.bytes_read
    r.read_rows(0, [1, 2])
    assert r.bytes_read > before
    assert r.nbytes_stored()["total"] == sum(p.stat().st_size for p in store.rglob("*") if p.is_file())


def test_check_model_names_what_is_missing_or_misshapen(store):
    r = StoreReader(store)
    named = dict(TinyNet().named_parameters())
    named.pop("fc2.bias")
    named["fc1.weight"] = torch.zeros(2, 2)
    with pytest.raises(ModelMismatchError, match=r"fc1.weight: expected shape \[24, 96\], got \[2, 2\]; missing fc2.bias"):
        r.check_model(named)
