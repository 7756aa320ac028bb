"""IndexWriter (deltastore.index.writer): add, flush, truncate, compact, and their crash safety.

The property test compares the index with a plain model: a dict from step to
the set of ids of that step, seen through the commit counter.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deltastore.errors import InvalidArgumentError
from deltastore.index import ID_TYPES, IndexWriter, SampleIndex, index_schema, list_index, parse_part_name
from deltastore.storage import LocalStoreIO


@contextlib.contextmanager
def _store():
    d = tempfile.mkdtemp(prefix="deltastore-index-test-")
    try:
        yield LocalStoreIO(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _ids_list(ids) -> list:
    return ids.tolist() if isinstance(ids, np.ndarray) else list(ids)


class Model:
    """The index as a dict step -> set of ids, read through a commit counter."""

    def __init__(self) -> None:
        self.rows: dict[int, set] = {}

    def add(self, step: int, ids) -> None:
        if len(ids):
            self.rows.setdefault(step, set()).update(ids)

    def truncate(self, committed: int) -> None:
        self.rows = {s: v for s, v in self.rows.items() if s < committed}

    def visible(self, committed: int) -> dict[int, set]:
        return {s: v for s, v in self.rows.items() if s < committed}

    def check(self, index: SampleIndex, queries: list[list]) -> None:
        committed = index.committed_steps
        visible = self.visible(committed)
        seen = set().union(*visible.values()) if visible else set()
        assert _ids_list(index.sample_ids()) == sorted(seen)
        assert index.num_rows == sum(len(v) for v in visible.values())
        assert index.steps().tolist() == sorted(visible)
        assert {s: _ids_list(v) for s, v in index.step_table().items()} == {
            s: sorted(v) for s, v in visible.items()
        }
        top = max(self.rows, default=0) + 2
        for s in range(top):
            assert _ids_list(index.samples_for(s)) == sorted(visible.get(s, ())), s
        for q in queries:
            steps, unknown = index.lookup(q)
            assert steps.dtype == np.int64
            qs = set(q)
            assert steps.tolist() == sorted(s for s, v in visible.items() if v & qs)
            assert unknown == sorted(qs - seen)


INT_POOL = st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.integers(-5, 40)
STR_POOL = st.text(alphabet="ab\u00e9\U0001f600/", max_size=4) | st.sampled_from(["", "a", "b", "sample-0001"])


@st.composite
def recordings(draw, id_type: str):
    """(steps with their ids, flush points, commit counter, writer options, queries)."""
    pool = draw(st.lists(INT_POOL if id_type == "int64" else STR_POOL, min_size=1, max_size=30, unique=True))
    n_steps = draw(st.integers(1, 20))
    gaps = draw(st.lists(st.integers(1, 3), min_size=n_steps, max_size=n_steps))
    steps = [s - 1 for s in np.cumsum(gaps).tolist()]
    batches = [draw(st.lists(st.sampled_from(pool), max_size=6)) for _ in steps]
    flushes = draw(st.sets(st.integers(0, n_steps - 1)))
    committed = draw(st.integers(0, steps[-1] + 1))  # parts tile [0, steps[-1] + 1): more is a gap
    options = dict(
        row_group_size=draw(st.sampled_from([1, 2, 3, 5, 65536])),
        compression=draw(st.sampled_from([None, "zstd"])),
    )
    unknown = [-(2**63) + 7, 10**15] if id_type == "int64" else ["never-seen", "zz"]
    queries = [draw(st.lists(st.sampled_from(pool + unknown), max_size=8)) for _ in range(3)] + [pool]
    return list(zip(steps, batches)), flushes, committed, options, queries


def _record(io: LocalStoreIO, id_type: str, rec, model: Model) -> tuple[IndexWriter, int]:
    batches, flushes, committed, options, _ = rec
    writer = IndexWriter(io, id_type, **options)
    for i, (step, ids) in enumerate(batches):
        writer.add(step, step // 4, ids)
        model.add(step, ids)
        if i in flushes:
            writer.flush()
    writer.flush()
    return writer, committed


@pytest.mark.parametrize("id_type", ID_TYPES)
@given(data=st.data())
def test_round_trip_compact_truncate_readd(id_type, data):
    """lookup/samples_for match the model; compaction, truncation and re-adding keep them matching."""
    rec = data.draw(recordings(id_type))
    queries = rec[4]
    with _store() as io:
        model = Model()
        writer, committed = _record(io, id_type, rec, model)
        model.check(SampleIndex(io, id_type, committed), queries)

        writer.compact(committed)
        index = SampleIndex(io, id_type, committed)
        model.check(index, queries)
        listing = list_index(io, "index")
        assert not listing.dead
        assert sum(r.end <= committed for r in listing.live) <= 1
        assert listing.sidecars == {r.name for r in listing.live}  # every part the writer leaves has one

        writer.truncate(committed)
        model.truncate(committed)
        assert writer.end_step <= committed
        model.check(SampleIndex(io, id_type, committed), queries)

        # Resume recording at the commit point with other ids.
        fresh = [1, 2, 3] if id_type == "int64" else ["x", "y"]
        writer.add(committed, 0, fresh)
        writer.add(committed + 2, 0, fresh[:1])
        model.add(committed, fresh)
        model.add(committed + 2, fresh[:1])
        writer.flush()
        model.check(SampleIndex(io, id_type, committed + 3), queries + [fresh])


def _parts(io: LocalStoreIO) -> list[tuple[int, int]]:
    return [(r.first, r.end) for r in list_index(io, "index").live]


def test_truncate_then_readd(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "int64", row_group_size=2)
    for s in range(10):
        w.add(s, s // 5, [s, 100 + s])
        if s in (3, 7):
            w.flush()
    w.flush()
    assert _parts(io) == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(InvalidArgumentError, match="truncate"):
        w.add(6, 1, [1])
    w.truncate(6)
    assert w.end_step == 6
    assert _parts(io) == [(0, 4), (4, 6)]
    w.add(6, 1, [999])
    w.add(7, 1, [5])
    w.flush()
    index = SampleIndex(io, "int64", 8)
    assert index.steps_for([999]).tolist() == [6]
    assert index.steps_for([5]).tolist() == [5, 7]
    steps, unknown = index.lookup([106, 107])
    assert steps.tolist() == [] and unknown == [106, 107]
    assert index.samples_for(6).tolist() == [999]
    assert index.num_sidecar_parts == index.num_parts == 3


def test_truncate_drops_buffered_tail_and_reopened_writer_resumes(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "string")
    w.add(0, 0, ["a"])
    w.flush()
    w.add(1, 0, ["b"])
    w.add(2, 0, ["c"])
    w.truncate(2)  # step 2 was never committed; step 1 stays buffered
    assert w.buffered_rows == 1
    w.flush()
    w2 = IndexWriter(io, "string")
    assert w2.end_step == 2
    assert SampleIndex(io, "string", 2).sample_ids() == ["a", "b"]


def test_crash_leftovers_after_compaction_read_correctly(tmp_path):
    """A compacted part, the parts it replaced, an orphan sidecar and stray .partial files: no double counting."""
    io = LocalStoreIO(tmp_path)
    d = tmp_path / "index"
    w = IndexWriter(io, "int64", row_group_size=3)
    for s in range(12):
        w.add(s, 0, [s % 5, 10 + s])
        if s % 4 == 3:
            w.flush()
    before = SampleIndex(io, "int64", 12)
    expected = (before.lookup(range(30)), before.num_rows, before.step_table())
    saved = tmp_path / "saved"
    saved.mkdir()
    for p in d.iterdir():
        shutil.copy2(p, saved / p.name)
    compacted = w.compact(12)
    assert compacted is not None
    for p in saved.iterdir():  # the crash: old parts (and their sidecars) were never deleted
        shutil.copy2(p, d / p.name)
    name = compacted.split("/")[-1]
    (d / f".{name}.0123abcd.partial").write_bytes(b"half a parquet file")
    (d / f"._{name[:-8]}.ids.0123abcd.partial").write_bytes(b"half a sidecar")
    (d / "_part-000000000099-000000000100-deadbeef.ids").write_bytes(b"sidecar of a part never written")
    assert len(list_index(io, "index").dead) == 3

    after = SampleIndex(io, "int64", 12)
    assert after.num_parts == 1
    assert after.part_keys == [compacted]
    steps, unknown = after.lookup(range(30))
    assert steps.tolist() == expected[0][0].tolist() and unknown == expected[0][1]
    assert after.num_rows == expected[1]
    assert {k: v.tolist() for k, v in after.step_table().items()} == {k: v.tolist() for k, v in expected[2].items()}

    # Plain pyarrow skips the .partial and _ files but sees the duplicates until cleanup.
    assert ds.dataset(d, format="parquet").count_rows() == 2 * expected[1]
    IndexWriter(io, "int64").truncate(12)
    assert sorted(p.name for p in d.iterdir()) == sorted([name, f"_{name[:-8]}.ids"])
    assert ds.dataset(d, format="parquet").count_rows() == expected[1]


def test_crash_during_truncate_rewrite(tmp_path):
    """The rewritten part lies inside the old one: readers use the old one, filtered by the counter."""
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "int64")
    for s in range(8):
        w.add(s, 0, [s])
    old = w.flush()
    # What truncate(5) writes before it deletes the old part: the rows below 5 as a part [0, 5).
    table = pq.read_table(tmp_path / old)
    rewrite = LocalStoreIO(tmp_path / "other")  # the writer refuses steps below its end: write beside
    r = IndexWriter(rewrite, "int64")
    for s, sid in zip(*(table.filter(pc.less(table["step"], 5))[c].to_pylist() for c in ("step", "sample_id"))):
        r.add(s, 0, [sid])
    new = r.flush(first_step=0, end_step=5)
    for p in (tmp_path / "other" / "index").iterdir():
        shutil.copy2(p, tmp_path / "index" / p.name)
    index = SampleIndex(io, "int64", 5)
    assert index.part_keys == [old]
    assert index.num_rows == 5
    assert index.sample_ids().tolist() == [0, 1, 2, 3, 4]
    IndexWriter(io, "int64").truncate(5)
    listing = list_index(io, "index")
    assert not listing.dead and len(listing.live) == 1 and listing.live[0].end == 5
    # The dead rewrite is deleted and the old part rewritten again: neither file is left.
    assert not (tmp_path / old).exists() and not (tmp_path / new).exists()
    assert SampleIndex(io, "int64", 5).num_rows == 5


def test_compact_leaves_uncommitted_parts(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "int64")
    for s in range(6):
        w.add(s, 0, [s])
        w.flush()
    assert w.compact(4) is not None
    assert _parts(io) == [(0, 4), (4, 5), (5, 6)]
    assert w.compact(4) is None  # one committed part: nothing to merge
    assert SampleIndex(io, "int64", 6).steps().tolist() == list(range(6))


def test_compaction_writes_a_smaller_sorted_part_and_keeps_lookups(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "int64", compression=None)
    for step in range(6):
        w.add(step, 0, np.arange(step * 10, step * 10 + 10))
        w.flush()
    d = tmp_path / "index"
    before = sum(p.stat().st_size for p in d.iterdir())
    key = w.compact(6, compression="zstd")
    (part,) = list(d.glob("part-*.parquet"))
    assert key == f"index/{part.name}"
    assert pq.ParquetFile(part).metadata.row_group(0).column(0).compression == "ZSTD"
    assert sum(p.stat().st_size for p in d.iterdir()) < before
    index = SampleIndex(io, "int64", 6)
    assert index.steps_for([15, 59]).tolist() == [1, 5]
    assert index.num_sidecar_parts == 1
    with pytest.raises(InvalidArgumentError, match="compression"):
        w.compact(6, compression="lzma")


def test_compaction_gives_a_lone_old_part_its_sidecar(tmp_path):
    """A store written before sidecars: the next compaction adds one, and lookups stay the same."""
    table = pa.table(
        {"sample_id": [3, 1, 2, 1], "step": [0, 0, 1, 1], "epoch": pa.array([0] * 4, pa.int32())},
        schema=index_schema("int64"),
    )
    (tmp_path / "index").mkdir()
    pq.write_table(table, tmp_path / "index" / "part-000000000000-000000000002-0000abcd.parquet")  # unsorted
    io = LocalStoreIO(tmp_path)
    before = SampleIndex(io, "int64", 2)
    assert before.num_sidecar_parts == 0
    expected = before.lookup([1, 2, 3, 4])
    assert IndexWriter(io, "int64").compact(2) is None
    after = SampleIndex(io, "int64", 2)
    assert after.num_sidecar_parts == 1
    steps, unknown = after.lookup([1, 2, 3, 4])
    assert steps.tolist() == expected[0].tolist() == [0, 1] and unknown == expected[1] == [4]
    assert after.samples_for(1).tolist() == [1, 2]


class _FailingIO(LocalStoreIO):
    """Fails every write of a key ending in ``fail_suffix`` after some bytes, like a full disk."""

    fail_suffix = ".parquet"

    @contextlib.contextmanager
    def writer(self, key, *, fsync=False):
        with super().writer(key, fsync=fsync) as f:
            yield f
            if key.endswith(self.fail_suffix):
                f.write(b"partial")
                raise OSError("disk full")


@pytest.mark.parametrize("suffix", [".parquet", ".ids"])
def test_failed_write_leaves_no_file(tmp_path, suffix):
    io = _FailingIO(tmp_path)
    io.fail_suffix = suffix
    w = IndexWriter(io, "int64")
    w.add(0, 0, [1])
    with pytest.raises(OSError, match="disk full"):
        w.flush()
    assert io.list_prefix("index") == []  # neither the part nor its sidecar, nor a temporary
    io.fail_suffix = "never"
    assert w.flush(fsync=True) is not None  # the rows were kept
    assert SampleIndex(io, "int64", 1).sample_ids().tolist() == [1]


def test_explicit_part_range(tmp_path):
    w = IndexWriter(LocalStoreIO(tmp_path), "int64")
    w.add(3, 0, [7])
    key = w.flush(first_step=0, end_step=64)
    assert parse_part_name(key.split("/")[-1]) == (0, 64)
    assert w.end_step == 64
    w.add(64, 1, [8])
    with pytest.raises(InvalidArgumentError, match="range"):
        w.flush(first_step=65)
    with pytest.raises(InvalidArgumentError, match="range"):
        w.flush(end_step=64)
    assert w.flush() is not None
    assert w.flush() is None


def test_add_copies_the_callers_array(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "int64")
    buf = np.array([1, 2])
    w.add(0, 0, buf)
    buf[:] = 7
    w.flush()
    assert SampleIndex(io, "int64", 1).sample_ids().tolist() == [1, 2]


def test_custom_prefix(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "int64", prefix="runs/a/index")
    w.add(0, 0, [4])
    assert w.flush().startswith("runs/a/index/part-")
    assert w.io is io and w.prefix == "runs/a/index" and w.id_type == "int64"
    assert SampleIndex(io, "int64", 1, prefix="runs/a/index").steps_for([4]).tolist() == [0]


@pytest.mark.parametrize(
    "call",
    [
        lambda w: w.add(-1, 0, [1]),
        lambda w: w.add(True, 0, [1]),
        lambda w: w.add(1.0, 0, [1]),
        lambda w: w.add(0, -1, [1]),
        lambda w: w.add(0, 2**31, [1]),
        lambda w: w.add(10**12, 0, [1]),
        lambda w: w.truncate(-3),
        lambda w: w.compact(-1),
    ],
)
def test_bad_steps(tmp_path, call):
    with pytest.raises(InvalidArgumentError, match="Expected"):
        call(IndexWriter(LocalStoreIO(tmp_path), "int64"))


def test_bad_writer_arguments(tmp_path):
    io = LocalStoreIO(tmp_path)
    with pytest.raises(InvalidArgumentError, match="id type"):
        IndexWriter(io, "uuid")
    with pytest.raises(InvalidArgumentError, match="row_group_size"):
        IndexWriter(io, "int64", row_group_size=0)
    with pytest.raises(InvalidArgumentError, match="compression"):
        IndexWriter(io, "int64", compression="lzma")
    with pytest.raises(InvalidArgumentError, match="StoreIO"):
        IndexWriter(tmp_path / "index", "int64")  # the old signature took the index folder


def test_fsync_paths(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "int64")
    for s in range(3):
        w.add(s, 0, [s])
        assert w.flush(fsync=True) is not None
    assert w.compact(3, fsync=True) is not None
    w.truncate(2, fsync=True)
    assert SampleIndex(io, "int64", 2).steps().tolist() == [0, 1]
    names = sorted(p.name for p in (tmp_path / "index").iterdir())
    assert len(names) == 2 and names[0].startswith("_part-") and names[1].startswith("part-")


def test_sidecars_only_for_parts_of_at_least_sidecar_min_rows(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "int64", sidecar_min_rows=10)
    w.add(0, 0, list(range(4)))
    w.flush()
    w.add(1, 0, list(range(100, 112)))
    w.flush()
    names = io.list_dir("index")
    assert sum(n.endswith(".ids") for n in names) == 1  # the 12-row part only
    index = SampleIndex(io, "int64", 2)
    assert index.num_sidecar_parts == 1
    assert index.steps_for([2, 105]).tolist() == [0, 1]  # both routes answer
    w.compact(2)
    assert sum(n.endswith(".ids") for n in io.list_dir("index")) == 1  # the merged 16-row part
    with pytest.raises(InvalidArgumentError, match="sidecar_min_rows"):
        IndexWriter(io, "int64", sidecar_min_rows=-1)
