"""Tests of the Parquet sample index (deltastore.index).

The property tests compare the index with a plain model: a dict from step to
the set of ids of that step, seen through the commit counter.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import deltastore.index as index_mod
from deltastore.errors import (
    CorruptStoreError,
    DeltaStoreError,
    FormatVersionError,
    InvalidArgumentError,
    SampleIdTypeError,
    StoreNotFoundError,
    UnknownSampleIdsError,
)
from deltastore.index import (
    ID_TYPES,
    IndexWriter,
    SampleIndex,
    index_schema,
    parse_part_name,
    parse_sample_ids,
    scan_parts,
)

# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _tempdir():
    d = tempfile.mkdtemp(prefix="deltastore-index-test-")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def _search_mode(mode: str):
    """Force the mapped reader onto one search strategy ("auto" leaves the heuristics)."""
    saved = (index_mod._COPY_ROWS, index_mod._COPY_RATIO)
    if mode == "bsearch":  # never copy: vectorised binary search over the mapped bytes
        index_mod._COPY_ROWS, index_mod._COPY_RATIO = -1, 0
    elif mode == "copy":  # always search an aligned copy
        index_mod._COPY_ROWS = 1 << 62
    try:
        yield
    finally:
        index_mod._COPY_ROWS, index_mod._COPY_RATIO = saved


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
    steps = np.cumsum(gaps).tolist()
    steps = [s - 1 for s in steps]
    batches = [draw(st.lists(st.sampled_from(pool), max_size=6)) for _ in steps]
    flushes = draw(st.sets(st.integers(0, n_steps - 1)))
    committed = draw(st.integers(0, steps[-1] + 2))
    options = dict(
        row_group_size=draw(st.sampled_from([1, 2, 3, 5, 65536])),
        compression=draw(st.sampled_from([None, None, "zstd"])) if id_type == "int64" else None,
    )
    unknown = [-(2**63) + 7, 10**15] if id_type == "int64" else ["never-seen", "zz"]
    queries = [
        draw(st.lists(st.sampled_from(pool + unknown), max_size=8)) for _ in range(3)
    ] + [pool]
    mode = draw(st.sampled_from(["auto", "bsearch", "copy"]))
    return list(zip(steps, batches)), flushes, committed, options, queries, mode


def _record(directory: Path, id_type: str, rec, model: Model) -> tuple[IndexWriter, int]:
    batches, flushes, committed, options, _, _ = rec
    writer = IndexWriter(directory, id_type, **options)
    for i, (step, ids) in enumerate(batches):
        writer.add(step, step // 4, ids)
        model.add(step, ids)
        if i in flushes:
            writer.flush()
    writer.flush()
    return writer, committed


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("id_type", ID_TYPES)
@given(data=st.data())
def test_round_trip_compact_truncate_readd(id_type, data):
    """lookup/samples_for match the model; compaction, truncation and re-adding keep them matching."""
    rec = data.draw(recordings(id_type))
    queries, mode = rec[4], rec[5]
    with _tempdir() as d, _search_mode(mode):
        model = Model()
        writer, committed = _record(d, id_type, rec, model)
        model.check(SampleIndex(d, id_type, committed), queries)

        writer.compact(committed)
        index = SampleIndex(d, id_type, committed)
        model.check(index, queries)
        live, dead = scan_parts(d)
        assert not dead
        assert sum(r.end <= committed for r in live) <= 1

        writer.truncate(committed)
        model.truncate(committed)
        assert writer.end_step <= committed
        model.check(SampleIndex(d, id_type, committed), queries)

        # Resume recording at the commit point with other ids.
        fresh = [1, 2, 3] if id_type == "int64" else ["x", "y"]
        writer.add(committed, 0, fresh)
        writer.add(committed + 2, 0, fresh[:1])
        model.add(committed, fresh)
        model.add(committed + 2, fresh[:1])
        writer.flush()
        model.check(SampleIndex(d, id_type, committed + 3), queries + [fresh])


@given(
    ranges=st.lists(
        st.tuples(st.integers(0, 12), st.integers(1, 6)).map(lambda t: (t[0], t[0] + t[1])),
        max_size=12,
    )
)
def test_scan_parts_live_and_dead(ranges):
    """Live parts never contain each other; every dead part lies inside a live one."""
    with _tempdir() as d:
        for first, end in ranges:
            (d / index_mod.part_name(first, end)).touch()
        (d / ".part-000000000000-000000000001-abcdef01.parquet.0123.partial").touch()
        (d / "notes.txt").touch()
        live, dead = scan_parts(d)
        assert len(live) + len(dead) == len(ranges)
        for a in live:
            for b in live:
                if a is not b:
                    assert not a.contains(b)
        for x in dead:
            assert any(a.contains(x) for a in live)


@given(st.binary(max_size=300))
def test_page_header_parser_never_crashes(data):
    """Garbage bytes only ever make the Thrift parser give up (then pyarrow reads the part)."""
    try:
        fields, length = index_mod._page_header(data)
    except index_mod._LayoutError:
        return
    assert isinstance(fields, dict)
    assert 0 < length <= len(data)


# --------------------------------------------------------------------------- visibility and recovery


def test_rows_at_or_after_committed_are_invisible(tmp_path):
    w = IndexWriter(tmp_path, "int64")
    w.add(0, 0, [1, 2])
    w.add(1, 0, [2, 3])
    w.add(2, 0, [4])
    w.flush()
    w.add(3, 0, [5])
    w.flush()
    index = SampleIndex(tmp_path, "int64", 2)
    steps, unknown = index.lookup([1, 2, 3, 4, 5])
    assert steps.tolist() == [0, 1]
    assert unknown == [4, 5]
    assert index.samples_for(2).tolist() == []
    assert index.samples_for(3).tolist() == []
    assert index.sample_ids().tolist() == [1, 2, 3]
    assert index.num_rows == 4
    assert index.num_parts == 1  # the part holding only step 3 holds nothing committed
    steps, unknown = SampleIndex(tmp_path, "int64", 0).lookup([1])
    assert steps.tolist() == [] and unknown == [1]


def test_truncate_then_readd(tmp_path):
    w = IndexWriter(tmp_path, "int64", row_group_size=2)
    for s in range(10):
        w.add(s, s // 5, [s, 100 + s])
        if s in (3, 7):
            w.flush()
    w.flush()
    assert [(r.first, r.end) for r in scan_parts(tmp_path)[0]] == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(InvalidArgumentError, match="truncate"):
        w.add(6, 1, [1])
    w.truncate(6)
    assert w.end_step == 6
    assert [(r.first, r.end) for r in scan_parts(tmp_path)[0]] == [(0, 4), (4, 6)]
    w.add(6, 1, [999])
    w.add(7, 1, [5])
    w.flush()
    index = SampleIndex(tmp_path, "int64", 8)
    assert index.steps_for([999]).tolist() == [6]
    assert index.steps_for([5]).tolist() == [5, 7]
    steps, unknown = index.lookup([106, 107])
    assert steps.tolist() == [] and unknown == [106, 107]
    assert index.samples_for(6).tolist() == [999]


def test_truncate_drops_buffered_tail_and_reopened_writer_resumes(tmp_path):
    w = IndexWriter(tmp_path, "string")
    w.add(0, 0, ["a"])
    w.flush()
    w.add(1, 0, ["b"])
    w.add(2, 0, ["c"])
    w.truncate(2)  # step 2 was never committed; step 1 stays buffered
    assert w.buffered_rows == 1
    w.flush()
    w2 = IndexWriter(tmp_path, "string")
    assert w2.end_step == 2
    assert SampleIndex(tmp_path, "string", 3).sample_ids() == ["a", "b"]


def test_crash_leftovers_after_compaction_read_correctly(tmp_path):
    """A compacted part, the parts it replaced and a stray .partial: no double counting."""
    d = tmp_path / "index"
    w = IndexWriter(d, "int64", row_group_size=3)
    for s in range(12):
        w.add(s, 0, [s % 5, 10 + s])
        if s % 4 == 3:
            w.flush()
    before = SampleIndex(d, "int64", 12)
    expected = (before.lookup(range(30)), before.num_rows, before.step_table())
    saved = tmp_path / "saved"
    saved.mkdir()
    for p in d.iterdir():
        shutil.copy2(p, saved / p.name)
    compacted = w.compact(12)
    assert compacted is not None
    for p in saved.iterdir():  # the crash: old parts were never deleted
        shutil.copy2(p, d / p.name)
    (d / f".{compacted.name}.0123abcd.partial").write_bytes(b"half a parquet file")
    assert len(scan_parts(d)[1]) == 3

    after = SampleIndex(d, "int64", 12)
    assert after.num_parts == 1
    assert after.part_paths == [compacted]
    steps, unknown = after.lookup(range(30))
    assert steps.tolist() == expected[0][0].tolist() and unknown == expected[0][1]
    assert after.num_rows == expected[1]
    assert {k: v.tolist() for k, v in after.step_table().items()} == {k: v.tolist() for k, v in expected[2].items()}

    # Plain pyarrow skips the .partial file (leading dot) but sees the duplicates until cleanup.
    assert ds.dataset(d, format="parquet").count_rows() == 2 * expected[1]
    IndexWriter(d, "int64").truncate(12)
    assert sorted(p.name for p in d.iterdir()) == [compacted.name]
    assert ds.dataset(d, format="parquet").count_rows() == expected[1]


def test_crash_during_truncate_rewrite(tmp_path):
    """The rewritten part lies inside the old one: readers use the old one, filtered by the counter."""
    w = IndexWriter(tmp_path, "int64")
    for s in range(8):
        w.add(s, 0, [s])
    old = w.flush()
    table = pq.read_table(old)
    rewritten = index_mod._write_part(
        tmp_path, table.filter(pa.compute.less(table["step"], 5)), 0, 5,
        id_type="int64", compression=None, row_group_size=65536, fsync=False,
    )
    index = SampleIndex(tmp_path, "int64", 5)
    assert index.part_paths == [old]
    assert index.num_rows == 5
    assert index.sample_ids().tolist() == [0, 1, 2, 3, 4]
    IndexWriter(tmp_path, "int64").truncate(5)
    live, dead = scan_parts(tmp_path)
    assert not dead and len(live) == 1 and live[0].end == 5
    # The dead rewrite is deleted and the old part rewritten again: neither file is left.
    assert not old.exists() and not rewritten.exists()
    assert SampleIndex(tmp_path, "int64", 5).num_rows == 5


def test_equal_ranges_keep_smaller_name(tmp_path):
    schema = index_schema("int64")
    for suffix, ids in (("a", [1]), ("b", [2])):
        name = f"part-000000000000-000000000002-0000000{suffix}.parquet"
        table = pa.table({"sample_id": ids, "step": [0], "epoch": pa.array([0], pa.int32())}, schema=schema)
        pq.write_table(table, tmp_path / name)
    index = SampleIndex(tmp_path, "int64", 2)
    assert index.sample_ids().tolist() == [1]
    assert index.num_parts == 1


def test_compact_leaves_uncommitted_parts(tmp_path):
    w = IndexWriter(tmp_path, "int64")
    for s in range(6):
        w.add(s, 0, [s])
        w.flush()
    assert w.compact(4) is not None
    assert [(r.first, r.end) for r in scan_parts(tmp_path)[0]] == [(0, 4), (4, 5), (5, 6)]
    assert w.compact(4) is None  # one committed part: nothing to merge
    assert SampleIndex(tmp_path, "int64", 6).steps().tolist() == list(range(6))


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    w = IndexWriter(tmp_path, "int64")
    w.add(0, 0, [1])

    def boom(*args, **kwargs):
        Path(args[1]).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(index_mod.pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        w.flush()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert w.flush(fsync=True) is not None  # the rows were kept
    assert SampleIndex(tmp_path, "int64", 1).sample_ids().tolist() == [1]


def test_explicit_part_range(tmp_path):
    w = IndexWriter(tmp_path, "int64")
    w.add(3, 0, [7])
    path = w.flush(first_step=0, end_step=64)
    assert parse_part_name(path.name) == (0, 64)
    assert w.end_step == 64
    w.add(64, 1, [8])
    with pytest.raises(InvalidArgumentError, match="range"):
        w.flush(first_step=65)
    with pytest.raises(InvalidArgumentError, match="range"):
        w.flush(end_step=64)
    assert w.flush() is not None
    assert w.flush() is None


# --------------------------------------------------------------------------- format


@pytest.mark.parametrize("id_type", ID_TYPES)
def test_pyarrow_dataset_opens_directory(tmp_path, id_type):
    w = IndexWriter(tmp_path, id_type, row_group_size=4)
    ids = [[5, 3, 1], [2, 3]] if id_type == "int64" else [["e", "c", "a"], ["b", "c"]]
    for s, batch in enumerate(ids):
        w.add(s, 0, batch)
        w.flush()
    (tmp_path / ".part-000000000002-000000000003-00000000.parquet.ff.partial").write_bytes(b"junk")
    dataset = ds.dataset(tmp_path, format="parquet")
    table = dataset.to_table()
    assert table.num_rows == 5
    assert table.schema.names == ["sample_id", "step", "epoch"]
    assert table.schema.field("sample_id").type == (pa.int64() if id_type == "int64" else pa.string())
    assert dataset.schema.metadata[b"deltastore.index_version"] == b"1"
    assert dataset.schema.metadata[b"deltastore.id_type"] == id_type.encode()
    hit = dataset.to_table(filter=ds.field("sample_id") == ids[0][1])
    assert sorted(hit["step"].to_pylist()) == [0, 1]


def test_part_file_layout(tmp_path):
    w = IndexWriter(tmp_path, "int64", row_group_size=3)
    w.add(0, 2, [9, 1, 5, 1])
    w.add(1, 2, [4])
    path = w.flush()
    assert parse_part_name(path.name) == (0, 2)
    pf = pq.ParquetFile(path)
    md = pf.metadata
    assert md.num_rows == 4  # the repeated id 1 in step 0 is one row
    assert md.num_row_groups == 2
    rg = md.row_group(0)
    assert [(c.column_index, c.descending) for c in rg.sorting_columns] == [(0, False), (1, False)]
    assert rg.column(0).statistics.has_min_max
    assert pf.read().to_pydict() == {"sample_id": [1, 4, 5, 9], "step": [0, 1, 0, 0], "epoch": [2, 2, 2, 2]}
    assert pf.schema_arrow.field("sample_id").nullable is False


def test_reader_layouts(tmp_path):
    """Default int64 parts are memory-mapped; compressed, string and foreign multi-page parts decode."""
    layouts = {}
    for name, id_type, compression in (("plain", "int64", None), ("zstd", "int64", "zstd"), ("str", "string", None)):
        w = IndexWriter(tmp_path / name, id_type, compression=compression)
        w.add(0, 0, [1, 2] if id_type == "int64" else ["1", "2"])
        w.flush()
        layouts[name] = SampleIndex(tmp_path / name, id_type, 1).num_mapped_parts
    assert layouts == {"plain": 1, "zstd": 0, "str": 0}

    # Same rows, written PLAIN but in many small pages: the header check must refuse the mapping.
    d = tmp_path / "paged"
    d.mkdir()
    n = 5000
    table = pa.table(
        {"sample_id": np.arange(n), "step": np.arange(n) % 7, "epoch": np.zeros(n, np.int32)},
        schema=index_schema("int64"),
    )
    pq.write_table(
        table, d / "part-000000000000-000000000007-00000001.parquet", use_dictionary=False, compression="none",
        data_page_size=1024, sorting_columns=[pq.SortingColumn(0), pq.SortingColumn(1)],
    )
    index = SampleIndex(d, "int64", 7)
    assert index.num_mapped_parts == 0
    assert index.steps_for([0, 9, 4999]).tolist() == [0, 1, 2]
    assert index.samples_for(3).tolist() == list(range(3, n, 7))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "ids, got",
    [
        ([1.0, 2.0], "float"),
        ([True, False], "bool"),
        ([1, "a"], "a mix of int and str"),
        (["a", "b"], "str"),
        (np.array([0.5]), "float64"),
        (np.array([True]), "bool"),
        (np.array(["x"]), "<U1"),
        (np.array([[1, 2]]), "shape"),
        (torch.tensor([1.0]), "torch.float32"),
        (torch.tensor([True]), "torch.bool"),
        (np.array([2**64 - 1], dtype=np.uint64), "uint64"),
        ([2**70], "int64 range"),
        (pa.array([1.5]), "double"),
        (pa.array([1, None]), "null"),
        (7, "single int"),
        ("abc", "single str"),
    ],
)
def test_bad_int_ids(ids, got):
    with pytest.raises(SampleIdTypeError, match="int64") as err:
        parse_sample_ids(ids, "int64")
    assert got in str(err.value)
    assert isinstance(err.value, TypeError) and isinstance(err.value, DeltaStoreError)


@pytest.mark.parametrize(
    "ids, got",
    [
        ([1, 2], "int"),
        (["a", 2], "a mix of int and str"),
        ([b"a"], "bytes"),
        (np.array([1, 2]), "int64"),
        (torch.tensor([1, 2]), "torch tensor"),
        (pa.array([1]), "int64"),
        (["\ud800"], "Unicode"),
        ("abc", "single str"),
    ],
)
def test_bad_string_ids(ids, got):
    with pytest.raises(SampleIdTypeError, match="str") as err:
        parse_sample_ids(ids, "string")
    assert got in str(err.value)


def test_accepted_id_forms():
    expected = [3, 1, 2]
    for ids in (
        [3, 1, 2],
        (3, 1, 2),
        np.array(expected, dtype=np.int32),
        np.array(expected, dtype=np.uint8),
        torch.tensor(expected),
        pa.array(expected),
        (x for x in expected),
        [np.int64(3), 1, np.int16(2)],
        np.array(expected, dtype=object),
    ):
        out = parse_sample_ids(ids, "int64")
        assert out.dtype == np.int64 and out.tolist() == expected
    assert parse_sample_ids(range(2, 5), "int64").tolist() == [2, 3, 4]
    assert parse_sample_ids([], "int64").tolist() == []
    assert parse_sample_ids([np.str_("a"), "b"], "string") == ["a", "b"]
    assert type(parse_sample_ids(np.array(["a"]), "string")[0]) is str
    assert parse_sample_ids(pa.array(["a", "b"]), "string") == ["a", "b"]
    assert parse_sample_ids((), "string") == []


def test_add_copies_the_callers_array(tmp_path):
    w = IndexWriter(tmp_path, "int64")
    buf = np.array([1, 2])
    w.add(0, 0, buf)
    buf[:] = 7
    w.flush()
    assert SampleIndex(tmp_path, "int64", 1).sample_ids().tolist() == [1, 2]


def test_unknown_ids_raise_in_steps_for(tmp_path):
    w = IndexWriter(tmp_path, "string")
    w.add(0, 0, ["a"])
    w.add(1, 0, ["late"])
    w.flush()
    index = SampleIndex(tmp_path, "string", 1)
    with pytest.raises(UnknownSampleIdsError, match="never seen") as err:
        index.steps_for(["a", "b", "late"])
    assert err.value.ids == ["b", "late"]
    assert isinstance(err.value, KeyError)
    assert "2 never seen" in str(err.value)
    assert index.steps_for(["a"]).tolist() == [0]


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
        call(IndexWriter(tmp_path, "int64"))


def test_bad_writer_and_reader_arguments(tmp_path):
    with pytest.raises(InvalidArgumentError, match="id type"):
        IndexWriter(tmp_path, "uuid")
    with pytest.raises(InvalidArgumentError, match="row_group_size"):
        IndexWriter(tmp_path, "int64", row_group_size=0)
    with pytest.raises(InvalidArgumentError, match="compression"):
        IndexWriter(tmp_path, "int64", compression="lzma")
    with pytest.raises(InvalidArgumentError, match="committed_steps"):
        SampleIndex(tmp_path, "int64", -1)
    with pytest.raises(InvalidArgumentError, match="step"):
        SampleIndex(tmp_path, "int64", 1).samples_for(-2)
    with pytest.raises(StoreNotFoundError):
        SampleIndex(tmp_path / "missing", "int64", 1)


def _write_raw(directory: Path, name: str, table: pa.Table) -> None:
    pq.write_table(table, directory / name)


def test_part_of_the_other_id_type_is_corrupt(tmp_path):
    w = IndexWriter(tmp_path, "string")
    w.add(0, 0, ["a"])
    w.add(1, 0, ["b"])
    w.flush()
    with pytest.raises(CorruptStoreError, match="id type 'string'"):
        SampleIndex(tmp_path, "int64", 2).lookup([1])
    with pytest.raises(CorruptStoreError, match="id type 'string'"):
        IndexWriter(tmp_path, "int64")


def test_newer_index_version_is_refused(tmp_path):
    schema = index_schema("int64").with_metadata({"deltastore.index_version": "2", "deltastore.id_type": "int64"})
    table = pa.table({"sample_id": [1], "step": [0], "epoch": pa.array([0], pa.int32())}, schema=schema)
    _write_raw(tmp_path, "part-000000000000-000000000001-00000000.parquet", table)
    with pytest.raises(FormatVersionError, match="'2'"):
        SampleIndex(tmp_path, "int64", 1).lookup([1])


def test_steps_outside_the_part_range_are_corrupt(tmp_path):
    table = pa.table({"sample_id": [1], "step": [5], "epoch": pa.array([0], pa.int32())}, schema=index_schema("int64"))
    _write_raw(tmp_path, "part-000000000000-000000000002-00000000.parquet", table)
    with pytest.raises(CorruptStoreError, match="outside its range"):
        SampleIndex(tmp_path, "int64", 9).lookup([1])
    with pytest.raises(CorruptStoreError, match="outside its range"):
        IndexWriter(tmp_path, "int64").truncate(1)  # must read the straddling part to rewrite it


@pytest.mark.parametrize("content", [b"", b"PAR1 not really"])
def test_unreadable_part_is_corrupt(tmp_path, content):
    (tmp_path / "part-000000000000-000000000002-00000000.parquet").write_bytes(content)
    with pytest.raises(CorruptStoreError, match="part-000000000000"):
        SampleIndex(tmp_path, "int64", 2).lookup([1])


def test_fsync_paths(tmp_path):
    w = IndexWriter(tmp_path, "int64")
    for s in range(3):
        w.add(s, 0, [s])
        assert w.flush(fsync=True) is not None
    assert w.compact(3, fsync=True) is not None
    w.truncate(2, fsync=True)
    assert SampleIndex(tmp_path, "int64", 3).steps().tolist() == [0, 1]
    assert os.listdir(tmp_path) and all(n.startswith("part-") for n in os.listdir(tmp_path))


def test_auto_compaction_compresses_small_indexes_and_keeps_lookups(tmp_path):
    import deltastore.index as index_module

    w = IndexWriter(tmp_path, "int64")
    for step in range(6):
        w.add(step, 0, np.arange(step * 10, step * 10 + 10))
        w.flush()
    plain = sum(p.stat().st_size for p in tmp_path.glob("part-*.parquet"))
    w.compact(6)
    (part,) = list(tmp_path.glob("part-*.parquet"))
    assert pq.ParquetFile(part).metadata.row_group(0).column(0).compression == "ZSTD"
    assert part.stat().st_size < plain
    assert SampleIndex(tmp_path, "int64", 6).steps_for([15, 59]).tolist() == [1, 5]
    # Above the threshold the mapped PLAIN layout is kept.
    index_module_max = index_module.AUTO_ZSTD_MAX_ROWS
    try:
        index_module.AUTO_ZSTD_MAX_ROWS = 5
        w.add(6, 0, np.arange(100, 110))
        w.flush()
        w.compact(7)
        (part,) = list(tmp_path.glob("part-*.parquet"))
        assert pq.ParquetFile(part).metadata.row_group(0).column(0).compression == "UNCOMPRESSED"
    finally:
        index_module.AUTO_ZSTD_MAX_ROWS = index_module_max
