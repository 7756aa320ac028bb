"""SampleIndex (deltastore.index.lookup): visibility, errors, and the sidecar route against the pyarrow route."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import deltastore.index.lookup as lookup_module
import deltastore.index.sidecar as sidecar_module
import deltastore.index.writer as writer_module
from deltastore.errors import CorruptStoreError, InvalidArgumentError, UnknownSampleIdsError
from deltastore.index import IndexWriter, SampleIndex, parse_sample_ids
from deltastore.storage import LocalStoreIO


def test_rows_at_or_after_committed_are_invisible(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "int64")
    w.add(0, 0, [1, 2])
    w.add(1, 0, [2, 3])
    w.add(2, 0, [4])
    w.flush()
    w.add(3, 0, [5])
    w.flush()
    index = SampleIndex(io, "int64", 2)
    steps, unknown = index.lookup([1, 2, 3, 4, 5])
    assert steps.tolist() == [0, 1]
    assert unknown == [4, 5]
    assert index.samples_for(2).tolist() == []
    assert index.samples_for(3).tolist() == []
    assert index.sample_ids().tolist() == [1, 2, 3]
    assert index.num_rows == 4
    assert index.num_parts == 1  # the part holding only step 3 holds nothing committed
    steps, unknown = SampleIndex(io, "int64", 0).lookup([1])
    assert steps.tolist() == [] and unknown == [1]


def test_unknown_ids_raise_in_steps_for(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "string")
    w.add(0, 0, ["a"])
    w.add(1, 0, ["late"])
    w.flush()
    index = SampleIndex(io, "string", 1)
    with pytest.raises(UnknownSampleIdsError, match="never seen") as err:
        index.steps_for(["a", "b", "late"])
    assert err.value.ids == ["b", "late"]
    assert isinstance(err.value, KeyError)
    assert "2 never seen" in str(err.value)
    assert index.steps_for(["a"]).tolist() == [0]


def test_parsed_ids_are_taken_as_they_are(tmp_path, monkeypatch):
    """A SampleIds goes through add and lookup as the same object; raw input is parsed into a new one."""
    io = LocalStoreIO(tmp_path)
    handed_back = []
    for module in (lookup_module, writer_module):
        real = module.parse_sample_ids

        def spy(ids, id_type, real=real):
            out = real(ids, id_type)
            handed_back.append(out is ids)
            return out

        monkeypatch.setattr(module, "parse_sample_ids", spy)
    ids = parse_sample_ids([7, 3, 7], "int64")
    w = IndexWriter(io, "int64")
    w.add(0, 0, ids)
    w.flush()
    steps, unknown = SampleIndex(io, "int64", 1).lookup(ids)
    assert steps.tolist() == [0] and unknown == []
    assert handed_back == [True, True]
    SampleIndex(io, "int64", 1).lookup([7])
    assert handed_back[-1] is False


def test_bad_reader_arguments(tmp_path):
    io = LocalStoreIO(tmp_path)
    with pytest.raises(InvalidArgumentError, match="committed_steps"):
        SampleIndex(io, "int64", -1)
    with pytest.raises(InvalidArgumentError, match="id type"):
        SampleIndex(io, "uuid", 0)
    with pytest.raises(InvalidArgumentError, match="StoreIO"):
        SampleIndex(tmp_path / "index", "int64", 0)  # the old signature took the index folder
    w = IndexWriter(io, "int64")
    w.add(0, 0, [1])
    w.flush()
    with pytest.raises(InvalidArgumentError, match="step"):
        SampleIndex(io, "int64", 1).samples_for(-2)


def test_nothing_under_the_prefix_is_an_empty_index_only_at_zero_steps(tmp_path):
    """Keys have no folders: nothing under the prefix is an empty index at 0 committed steps, a gap above."""
    for prefix in ("index", "missing"):
        index = SampleIndex(LocalStoreIO(tmp_path), "string", 0, prefix=prefix)
        assert index.lookup(["a"])[1] == ["a"] and index.num_rows == 0 and index.num_parts == 0
        assert index.steps().tolist() == [] and index.samples_for(0) == [] and index.step_table() == {}
        with pytest.raises(CorruptStoreError, match=r"committed steps \[0, 3\) are in no index part"):
            SampleIndex(LocalStoreIO(tmp_path), "string", 3, prefix=prefix).lookup(["a"])


def test_reader_lists_again_after_a_concurrent_compaction(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "string")
    for s in range(4):
        w.add(s, 0, [f"s{s}", "all"])
        w.flush()
    index = SampleIndex(io, "string", 4)
    assert index.steps_for(["all"]).tolist() == [0, 1, 2, 3]  # parts opened (sidecars only)
    w.compact(4)  # deletes the parts the reader opened
    assert index.sample_ids() == ["all", "s0", "s1", "s2", "s3"]  # full scans find the merged part
    assert index.num_rows == 8 and index.num_parts == 1
    assert index.steps_for(["s2"]).tolist() == [2]


def test_check_sidecars_finds_a_flipped_byte(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "int64")
    w.add(0, 0, [1, 2, 3])
    w.flush()
    SampleIndex(io, "int64", 1).check_sidecars()
    (path,) = (tmp_path / "index").glob("_part-*.ids")
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptStoreError, match=path.name):
        SampleIndex(io, "int64", 1).check_sidecars()


# --------------------------------------------------------------------------- the two routes agree


@contextlib.contextmanager
def _twin_stores():
    """A store and, beside it, a copy of its index without sidecars (the pyarrow route)."""
    d = Path(tempfile.mkdtemp(prefix="deltastore-index-routes-"))
    try:
        yield LocalStoreIO(d / "fast"), LocalStoreIO(d / "plain")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _strip_sidecars(src: LocalStoreIO, dst: LocalStoreIO) -> None:
    shutil.rmtree(dst.root, ignore_errors=True)
    shutil.copytree(src.root, dst.root, ignore=shutil.ignore_patterns("_part-*.ids"))


def _weak_hash(strings):
    """A hash that collides all the time: lookups must still resolve ids by their bytes."""
    return np.fromiter((len(s.encode("utf-8")) % 3 for s in strings), dtype=np.uint64)


IDS = {
    "int64": st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.integers(-3, 30),
    "string": st.text(alphabet="ab\u00e9\U0001f600\x00", max_size=4),
}


@pytest.mark.parametrize("id_type, hashing", [("int64", "blake2b"), ("string", "blake2b"), ("string", "weak")])
@given(data=st.data())
def test_sidecar_and_pyarrow_routes_agree(id_type, hashing, data):
    """Random recordings, flushes, compactions, commit counters and queries: identical answers from both routes."""
    pool = data.draw(st.lists(IDS[id_type], min_size=1, max_size=25, unique=True), label="pool")
    n_steps = data.draw(st.integers(1, 16), label="steps")
    batches = [data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=5)) for _ in range(n_steps)]
    flushes = data.draw(st.sets(st.integers(0, n_steps - 1)), label="flushes")
    compact_at = data.draw(st.none() | st.integers(0, n_steps), label="compact_at")
    unseen = [2**62 + 1, -7777] if id_type == "int64" else ["never", "\U0001f600\U0001f600\U0001f600\U0001f600\U0001f600"]
    queries = [data.draw(st.lists(st.sampled_from(pool + unseen), max_size=10)) for _ in range(3)] + [pool + unseen]
    with _twin_stores() as (fast, plain), pytest.MonkeyPatch.context() as mp:
        if hashing == "weak":
            mp.setattr(sidecar_module, "hash_strings", _weak_hash)
        w = IndexWriter(fast, id_type, row_group_size=data.draw(st.sampled_from([2, 3, 65536])))
        for step, ids in enumerate(batches):
            w.add(step, 0, ids)
            if step in flushes:
                w.flush()
        w.flush()
        if compact_at is not None:
            w.compact(compact_at)
        _strip_sidecars(fast, plain)
        for committed in sorted({0, n_steps, data.draw(st.integers(0, n_steps), label="committed")}):
            a, b = SampleIndex(fast, id_type, committed), SampleIndex(plain, id_type, committed)
            assert a.num_sidecar_parts == a.num_parts and b.num_sidecar_parts == 0
            for q in queries:
                steps_a, unknown_a = a.lookup(q)
                steps_b, unknown_b = b.lookup(q)
                assert steps_a.tolist() == steps_b.tolist() and unknown_a == unknown_b
                # ... and both equal the plain meaning of the rows.
                expected = sorted({s for s, ids in enumerate(batches) if s < committed and set(ids) & set(q)})
                assert steps_a.tolist() == expected
            for step in range(n_steps + 1):
                sa, sb = a.samples_for(step), b.samples_for(step)
                assert list(sa) == list(sb) == (sorted(set(batches[step])) if step < min(committed, n_steps) else [])
            assert a.num_rows == b.num_rows
