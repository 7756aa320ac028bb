"""Index parts (deltastore.index.parts): names, liveness, the Parquet layout that plain tools read."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deltastore.errors import CorruptStoreError, FormatVersionError
from deltastore.index import ID_TYPES, IndexWriter, SampleIndex, index_schema, list_index, parse_part_name, part_name
from deltastore.storage import LocalStoreIO, open_io


@given(
    ranges=st.lists(
        st.tuples(st.integers(0, 12), st.integers(1, 6)).map(lambda t: (t[0], t[0] + t[1])),
        max_size=12,
    )
)
def test_list_index_live_and_dead(ranges):
    """Live parts never contain each other; every dead part lies inside a live one; other names are sorted out."""
    io = _MemoryNames()
    for first, end in ranges:
        io.names.append(part_name(first, end))
    io.names += [
        ".part-000000000000-000000000001-abcdef01.parquet.0123.partial",
        "notes.txt",
        "_part-000000000000-000000000001-abcdef01.ids",  # a sidecar whose part is gone
    ]
    if ranges:
        io.names.append("_" + io.names[0][: -len(".parquet")] + ".ids")
    listing = list_index(io, "index")
    assert len(listing.live) + len(listing.dead) == len(ranges)
    for a in listing.live:
        for b in listing.live:
            if a is not b:
                assert not a.contains(b)
    for x in listing.dead:
        assert any(a.contains(x) for a in listing.live)
    assert listing.partials == [".part-000000000000-000000000001-abcdef01.parquet.0123.partial"]
    assert listing.orphans == ["_part-000000000000-000000000001-abcdef01.ids"]
    assert listing.sidecars == ({io.names[0]} if ranges else set())
    assert all(r.key == f"index/{r.name}" for r in listing.live + listing.dead)


class _MemoryNames:
    """Just enough of a StoreIO for listing: names under one prefix."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def list_dir(self, prefix: str) -> list[str]:
        assert prefix == "index"
        return sorted(self.names)


def test_part_names():
    name = part_name(3, 70)
    assert parse_part_name(name) == (3, 70)
    assert name.startswith("part-000000000003-000000000070-") and name.endswith(".parquet")
    assert part_name(3, 70) != name  # a fresh uuid each time
    for other in ("part-000000000003-000000000003-abcdef01.parquet", "part-3-70-abcdef01.parquet",
                  "_part-000000000003-000000000070-abcdef01.ids", "part-000000000003-000000000070-ABCDEF01.parquet"):
        assert parse_part_name(other) is None


@pytest.mark.parametrize("id_type", ID_TYPES)
def test_pyarrow_dataset_opens_directory(tmp_path, id_type):
    """Sidecars (leading _) and crashed temporaries (leading .) are invisible to pyarrow.dataset."""
    w = IndexWriter(LocalStoreIO(tmp_path), id_type, row_group_size=4)
    ids = [[5, 3, 1], [2, 3]] if id_type == "int64" else [["e", "c", "a"], ["b", "c"]]
    for s, batch in enumerate(ids):
        w.add(s, 0, batch)
        w.flush()
    d = tmp_path / "index"
    (d / ".part-000000000002-000000000003-00000000.parquet.ff.partial").write_bytes(b"junk")
    assert len(list(d.glob("_part-*.ids"))) == 2
    dataset = ds.dataset(d, format="parquet")
    table = dataset.to_table()
    assert table.num_rows == 5
    assert table.schema.names == ["sample_id", "step", "epoch"]
    assert table.schema.field("sample_id").type == (pa.int64() if id_type == "int64" else pa.string())
    assert dataset.schema.metadata[b"deltastore.index_version"] == b"1"
    assert dataset.schema.metadata[b"deltastore.id_type"] == id_type.encode()
    hit = dataset.to_table(filter=ds.field("sample_id") == ids[0][1])
    assert sorted(hit["step"].to_pylist()) == [0, 1]


def test_part_file_layout(tmp_path):
    w = IndexWriter(LocalStoreIO(tmp_path), "int64", row_group_size=3)
    w.add(0, 2, [9, 1, 5, 1])
    w.add(1, 2, [4])
    key = w.flush()
    assert parse_part_name(key.split("/")[-1]) == (0, 2)
    pf = pq.ParquetFile(tmp_path / key)
    md = pf.metadata
    assert md.num_rows == 4  # the repeated id 1 in step 0 is one row
    assert md.num_row_groups == 2
    rg = md.row_group(0)
    assert [(c.column_index, c.descending) for c in rg.sorting_columns] == [(0, False), (1, False)]
    assert rg.column(0).statistics.has_min_max
    assert rg.column(0).compression == "ZSTD"
    assert pf.read().to_pydict() == {"sample_id": [1, 4, 5, 9], "step": [0, 1, 0, 0], "epoch": [2, 2, 2, 2]}
    assert pf.schema_arrow.field("sample_id").nullable is False
    uncompressed = IndexWriter(LocalStoreIO(tmp_path / "u"), "int64", compression=None)
    uncompressed.add(0, 0, [1])
    assert pq.ParquetFile(tmp_path / "u" / uncompressed.flush()).metadata.row_group(0).column(0).compression == "UNCOMPRESSED"


def test_equal_ranges_keep_smaller_name(tmp_path):
    schema = index_schema("int64")
    (tmp_path / "index").mkdir()
    for suffix, ids in (("a", [1]), ("b", [2])):
        name = f"part-000000000000-000000000002-0000000{suffix}.parquet"
        table = pa.table({"sample_id": ids, "step": [0], "epoch": pa.array([0], pa.int32())}, schema=schema)
        pq.write_table(table, tmp_path / "index" / name)
    index = SampleIndex(open_io(tmp_path), "int64", 2)
    assert index.sample_ids().tolist() == [1]
    assert index.num_parts == 1


def _write_raw(tmp_path, name: str, table: pa.Table) -> None:
    (tmp_path / "index").mkdir(exist_ok=True)
    pq.write_table(table, tmp_path / "index" / name)


def test_part_of_the_other_id_type_is_corrupt(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "string")
    w.add(0, 0, ["a"])
    w.add(1, 0, ["b"])
    w.flush()
    with pytest.raises(CorruptStoreError, match="id type 'string'"):
        SampleIndex(io, "int64", 2).lookup([1])
    with pytest.raises(CorruptStoreError, match="id type 'string'"):
        IndexWriter(io, "int64")
    for p in (tmp_path / "index").glob("_part-*.ids"):
        p.unlink()  # the pyarrow route checks the Parquet footer the same way
    with pytest.raises(CorruptStoreError, match="id type 'string'"):
        SampleIndex(io, "int64", 2).lookup([1])


def test_newer_index_version_is_refused(tmp_path):
    schema = index_schema("int64").with_metadata({"deltastore.index_version": "2", "deltastore.id_type": "int64"})
    table = pa.table({"sample_id": [1], "step": [0], "epoch": pa.array([0], pa.int32())}, schema=schema)
    _write_raw(tmp_path, "part-000000000000-000000000001-00000000.parquet", table)
    with pytest.raises(FormatVersionError, match="'2'"):
        SampleIndex(open_io(tmp_path), "int64", 1).lookup([1])


def test_steps_outside_the_part_range_are_corrupt(tmp_path):
    table = pa.table({"sample_id": [1], "step": [5], "epoch": pa.array([0], pa.int32())}, schema=index_schema("int64"))
    _write_raw(tmp_path, "part-000000000000-000000000002-00000000.parquet", table)
    io = open_io(tmp_path)
    with pytest.raises(CorruptStoreError, match="outside its range"):
        SampleIndex(io, "int64", 2).lookup([1])
    with pytest.raises(CorruptStoreError, match="outside its range"):
        IndexWriter(io, "int64").truncate(1)  # must read the straddling part to rewrite it


@pytest.mark.parametrize("content", [b"", b"PAR1 not really"])
def test_unreadable_part_is_corrupt(tmp_path, content):
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "part-000000000000-000000000002-00000000.parquet").write_bytes(content)
    with pytest.raises(CorruptStoreError, match="part-000000000000"):
        SampleIndex(open_io(tmp_path), "int64", 2).lookup([1])


def test_foreign_multi_page_plain_part_reads(tmp_path):
    """A part another writer made (PLAIN, many small pages, no sidecar) is read through pyarrow."""
    n = 5000
    table = pa.table(
        {"sample_id": np.arange(n), "step": np.arange(n) % 7, "epoch": np.zeros(n, np.int32)},
        schema=index_schema("int64"),
    )
    (tmp_path / "index").mkdir()
    pq.write_table(
        table, tmp_path / "index" / "part-000000000000-000000000007-00000001.parquet", use_dictionary=False,
        compression="none", data_page_size=1024, sorting_columns=[pq.SortingColumn(0), pq.SortingColumn(1)],
    )
    index = SampleIndex(open_io(tmp_path), "int64", 7)
    assert index.num_sidecar_parts == 0
    assert index.steps_for([0, 9, 4999]).tolist() == [0, 1, 2]
    assert index.samples_for(3).tolist() == list(range(3, n, 7))
