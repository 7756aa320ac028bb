"""Consolidated metadata on object storage (FORMAT.md §2.1, §11): written by a plain PUT of the
root at close, after the final compare-and-swap of the commit record; removed on append before
any array grows; plain zarr (through the seam's Store adapter) lists the store without warnings."""

from __future__ import annotations

import json
import warnings

import zarr

from deltastore.format import read_commit
from deltastore.format.consolidated import CONSOLIDATED_KEY, consolidated_json
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader
from deltastore.record import Recorder
from deltastore.storage.object import ObjectStoreIO
from deltastore.verify import verify_store
from tests.helpers import TinyNet, make_optimizer, train_steps


def _listing(url) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = zarr.open_group(ObjectStoreIO(url).zarr_store(read_only=True), mode="r")
        return {p: a.shape for p, a in g.members(max_depth=None) if isinstance(a, zarr.Array)}


def test_close_consolidates_append_removes_on_s3(s3_url):
    model = TinyNet(0)
    opt = make_optimizer("adam", model.parameters())
    rec = Recorder(s3_url, model, opt, plan=PruningPlan.uniform(0.5, seed=1), steps_per_shard=2)
    train_steps(rec, model, opt, 0, 3)
    rec.close()
    io = ObjectStoreIO(s3_url)
    manifest = StoreReader(s3_url).manifest
    assert json.loads(io.read("zarr.json"))[CONSOLIDATED_KEY] == consolidated_json(manifest, 3)
    shapes = _listing(s3_url)
    assert shapes and all(s[0] == 3 for s in shapes.values())
    assert len(shapes) == sum(len(manifest.arrays(g)) for g in manifest.groups)

    rec = Recorder(s3_url, model, opt, mode="a")
    assert CONSOLIDATED_KEY not in json.loads(io.read("zarr.json"))  # gone before any array grows
    train_steps(rec, model, opt, 3, 2)
    rec.close()
    assert read_commit(ObjectStoreIO(s3_url))["commit_version"] == 3
    assert all(s[0] == 5 for s in _listing(s3_url).values())
    assert verify_store(s3_url).ok
