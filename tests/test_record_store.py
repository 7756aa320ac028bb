"""Store creation and reopening (deltastore.record.store)."""

from __future__ import annotations

import json

import pytest
import zarr

from deltastore.errors import StoreExistsError
from deltastore.format import read_commit, sha256_of
from deltastore.format.commit import canonical
from deltastore.read import StoreReader
from deltastore.record import RecordOptions
from deltastore.record.store import create_store, open_for_append
from deltastore.storage import LocalStoreIO

from .helpers import TinyNet, record
from deltastore.record.recorder import specs_of


def _specs():
    m = TinyNet()
    return specs_of(dict(m.named_parameters()), dict(m.named_buffers()))


def test_a_new_store_opens_with_plain_zarr_and_commits_nothing(tmp_path):
    io = LocalStoreIO(tmp_path / "s")
    manifest, digest = create_store(io, _specs(), RecordOptions.from_kwargs(steps_per_shard=4))
    commit = read_commit(io)
    assert (commit["committed_steps"], commit["model_fingerprint"], commit["manifest_sha256"]) == (0, None, digest)
    # Commit version 3 pins the manifest's canonical JSON, not the file's bytes (FORMAT.md §5).
    assert commit["commit_version"] == 3
    assert digest == sha256_of(canonical(json.loads((tmp_path / "s" / "zarr.json").read_bytes())["attributes"]["deltastore"]))
    group = zarr.open_group(str(tmp_path / "s"), mode="r")
    assert group.attrs["deltastore"] == json.loads(json.dumps(manifest.to_json()))
    for g in manifest.groups:
        assert sorted(group[g.path].array_keys()) == sorted(manifest.arrays(g))
        assert group[f"{g.path}/values"].shape == (0, g.k)


def test_creation_never_overwrites(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    with pytest.raises(StoreExistsError, match="never overwrites"):
        create_store(LocalStoreIO(tmp_path / "s"), _specs(), RecordOptions.from_kwargs())
    assert (tmp_path / "s" / "notes.txt").read_text() == "mine"


def test_reopening_drops_the_uncommitted_tail_and_voids_the_fingerprint(tmp_path):
    record(tmp_path / "s", steps=6, steps_per_shard=4)
    io = LocalStoreIO(tmp_path / "s")
    assert read_commit(io)["model_fingerprint"] is not None
    # A crash after growing the arrays but before the commit record: rows past the commit.
    group = zarr.open_group(str(tmp_path / "s"), mode="r+")
    for _, sub in group.groups():
        for _, arr in sub.arrays():
            arr.resize((9, arr.shape[1]))
    manifest, digest, committed, _ = open_for_append(io, RecordOptions.from_kwargs())
    assert committed == 6
    assert read_commit(io)["model_fingerprint"] is None
    for _, sub in zarr.open_group(str(tmp_path / "s"), mode="r").groups():
        assert all(arr.shape[0] == 6 for _, arr in sub.arrays())
    assert StoreReader(tmp_path / "s").committed_steps == 6
