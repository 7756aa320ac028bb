"""Version 2 sidecars read by blocks (docs/FORMAT.md §6.1): the ranged reader used on object
storage answers as the mapped one, reads a small part of the file, and checks every block it
uses. Here the ranged route runs over local files (``ranged=True``), counting bytes read."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deltastore.index.lookup as lookup_module
from deltastore.errors import CorruptStoreError
from deltastore.index import IndexWriter, SampleIndex, list_index
from deltastore.index import sidecar as sidecar_module
from deltastore.index.sidecar import HEADER, Query, open_sidecar
from deltastore.storage import LocalStoreIO


def _ids(raw, id_type):
    return raw if id_type == "int64" else [f"s-{int(i)}" for i in raw]


def _build(root, id_type, n_ids=6000, steps=24, per_step=1500, seed=0):
    """One compacted part of many 4 KiB blocks."""
    io = LocalStoreIO(root)
    w = IndexWriter(io, id_type)
    rng = np.random.default_rng(seed)
    truth: dict = {}
    for s in range(steps):
        batch = rng.choice(n_ids, per_step, replace=False)
        w.add(s, 0, _ids(batch, id_type))
        for i in batch.tolist():
            truth.setdefault(i, []).append(s)
    w.flush()
    w.compact(steps)
    return io, w.digests(), truth


@pytest.fixture(scope="module", params=["int64", "string"])
def built(request, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setattr(sidecar_module, "BLOCK_LOG2", 12)  # small blocks: many of them in a small file
    try:
        io, digests, truth = _build(tmp_path_factory.mktemp("blocks"), request.param)
    finally:
        mp.undo()
    return request.param, io, digests, truth


@pytest.fixture(autouse=True)
def _always_ranged(monkeypatch):
    monkeypatch.setattr(sidecar_module, "RANGED_FROM", 0)  # these files are small: read them by ranges anyway


def _ranged_index(monkeypatch, io, id_type, digests):
    """A SampleIndex that takes the object-storage route over a local store."""
    monkeypatch.setattr(lookup_module, "LocalStoreIO", type("NotLocal", (), {}))
    return SampleIndex(io, id_type, 24, digests=digests)


def _sidecar_key(io):
    (ref,) = list_index(io, "index").live
    return f"index/{ref.sidecar_name}", ref


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_ranged_and_mapped_lookups_agree_with_the_truth(built, data):
    id_type, io, digests, truth = built
    q = data.draw(st.lists(st.integers(-5, 6100), min_size=1, max_size=60, unique=True))
    key, ref = _sidecar_key(io)
    query = Query.of(np.array(sorted(q), dtype=np.int64) if id_type == "int64" else tuple(sorted(_ids(q, id_type))))
    expected = sorted({s for i in q for s in truth.get(i, [])})
    for ranged in (False, True):
        side = open_sidecar(io, key, ref.sidecar_name, id_type, ref.first, ref.end, digests[key], ranged=ranged)
        steps, seen = side.lookup(query, 24)
        assert sorted(set(steps.tolist())) == expected
        assert len(seen) == sum(i in truth for i in q)


def test_a_one_id_lookup_reads_a_small_part_of_the_sidecar(built, monkeypatch):
    id_type, io, digests, truth = built
    key, ref = _sidecar_key(io)
    size = digests[key].size
    assert size > 40 * 4096
    index = _ranged_index(monkeypatch, io, id_type, digests)
    some = next(iter(truth))
    before = io.bytes_read
    steps, unknown = index.lookup(_ids([some], id_type))
    read = io.bytes_read - before
    assert steps.tolist() == truth[some] and unknown == []
    # Header, the table (one 16 KiB suffix read), then a key block, a starts block, a steps block
    # (string ids: also the id bytes' blocks): far less than the file.
    assert read < 0.35 * size, (read, size)
    assert read <= 64 + 16384 + 6 * 2 * 4096


def test_damage_is_caught_where_it_is_read(built, monkeypatch, tmp_path):
    id_type, io, digests, truth = built
    key, ref = _sidecar_key(io)
    raw = bytearray((io.root / key).read_bytes())
    k = int.from_bytes(raw[16:24], "little")
    # Flip a byte of a middle key block: a lookup of the smallest id never reads it.
    at = HEADER.size + 8 * (k // 2)
    raw[at] ^= 0x10
    copy = LocalStoreIO(tmp_path / "copy")
    copy.write(key, bytes(raw))
    copy.write(ref.key, io.read(ref.key))
    smallest = min(truth)
    for ranged in (False, True):
        monkeypatch.setattr(lookup_module, "LocalStoreIO", LocalStoreIO if not ranged else type("NotLocal", (), {}))
        index = SampleIndex(copy, id_type, 24, digests=digests)
        assert index.lookup(_ids([smallest], id_type))[0].tolist() == truth[smallest]  # untouched block: same answer
        with pytest.raises(CorruptStoreError, match=f"{ref.sidecar_name} fails its checksum"):
            index.lookup(_ids(sorted(truth), id_type))  # every block
        with pytest.raises(CorruptStoreError, match=f"{ref.sidecar_name} fails its checksum"):
            SampleIndex(copy, id_type, 24, digests=digests).check()


@pytest.mark.parametrize("where", ["table", "header"])
def test_a_damaged_table_or_header_is_refused_at_open(built, monkeypatch, tmp_path, where):
    id_type, io, digests, truth = built
    key, ref = _sidecar_key(io)
    raw = bytearray((io.root / key).read_bytes())
    raw[len(raw) - 100 if where == "table" else 30] ^= 1
    copy = LocalStoreIO(tmp_path / "copy")
    copy.write(key, bytes(raw))
    copy.write(ref.key, io.read(ref.key))
    for ranged in (False, True):
        monkeypatch.setattr(lookup_module, "LocalStoreIO", LocalStoreIO if not ranged else type("NotLocal", (), {}))
        for d in (digests, None):
            with pytest.raises(CorruptStoreError, match=ref.sidecar_name):
                SampleIndex(copy, id_type, 24, digests=d).lookup(_ids([min(truth)], id_type))


def test_version_1_sidecars_are_read_whole_as_before(tmp_path, monkeypatch):
    """An old store's sidecar (version 1): same answers, mapped or ranged, checked whole."""
    monkeypatch.setattr(sidecar_module.write_sidecar, "__kwdefaults__", {"version": 1, "block_log2": None})
    io, digests, truth = _build(tmp_path / "v1", "int64", n_ids=3000, per_step=900)
    key, ref = _sidecar_key(io)
    assert io.read(key)[6] == 1
    some = min(truth)
    for ranged in (False, True):
        monkeypatch.setattr(lookup_module, "LocalStoreIO", LocalStoreIO if not ranged else type("NotLocal", (), {}))
        for d in (digests, None):
            before = io.bytes_read
            assert SampleIndex(io, "int64", 24, digests=d).lookup([some])[0].tolist() == truth[some]
            if ranged and d is not None:
                assert io.bytes_read - before >= digests[key].size  # read whole
