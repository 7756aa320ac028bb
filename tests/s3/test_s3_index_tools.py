"""The sample index on S3 read by standard tools -- DuckDB through fsspec (s3fs) and pyarrow's
dataset API -- knowing only FORMAT.md §9.3: the live parts are the ``.parquet`` keys of
commit.json's ``index_digests``, and rows need ``step < committed_steps``."""

from __future__ import annotations

import json
import os

import pytest

from deltastore.read import StoreReader

duckdb = pytest.importorskip("duckdb")
s3fs = pytest.importorskip("s3fs")
pa_fs = pytest.importorskip("pyarrow.fs")


def live_parts(fs, url):
    """Plain JSON, no deltastore: the committed step count and the live part files."""
    root = url.removeprefix("s3://")
    commit = json.loads(fs.cat_file(f"{root}/commit.json"))
    parts = sorted(k for k in commit["index_digests"] if k.endswith(".parquet"))
    return commit["committed_steps"], [f"{root}/{k}" for k in parts]


def expected(reader, ids):
    """(sample_id, step) pairs lookup answers, from the library."""
    out = set()
    for i in ids:
        steps, _ = reader.index.lookup([i])
        out |= {(i, int(s)) for s in steps}
    return out


def test_duckdb_and_pyarrow_read_the_same_rows_as_lookup(recorded, s3_endpoint):
    url, _, _, _ = recorded
    reader = StoreReader(url)
    ids = [0, 5, 17, 42, 95]
    want = expected(reader, ids)
    assert want  # the ids were recorded

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    committed, files = live_parts(fs, url)
    assert committed == reader.committed_steps and files
    # A part no commit lists, rows past committed_steps: what a writer killed between its
    # index write and its commit leaves. A glob would read it; the live list does not.
    import pyarrow as pa
    import pyarrow.parquet as pq

    tail = pa.table({"sample_id": pa.array(ids, pa.int64()), "step": pa.array([committed] * len(ids), pa.int64()),
                     "epoch": pa.array([0] * len(ids), pa.int32())})
    root = url.removeprefix("s3://")
    with fs.open(f"{root}/index/part-{committed:012d}-{committed + 1:012d}-deadbeef.parquet", "wb") as f:
        pq.write_table(tail, f)

    con = duckdb.connect()
    con.register_filesystem(fs)
    got = con.execute(
        f"SELECT sample_id, step FROM read_parquet({['s3://' + f for f in files]!r}) "
        f"WHERE step < {committed} AND sample_id IN ({', '.join(map(str, ids))})"
    ).fetchall()
    assert set(got) == want and len(got) == len(want)

    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    s3 = pa_fs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", region=os.environ["AWS_REGION"],
                            access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ["AWS_SECRET_ACCESS_KEY"])
    table = ds.dataset(files, format="parquet", filesystem=s3).to_table(
        filter=(pc.field("step") < committed) & pc.field("sample_id").isin(ids), columns=["sample_id", "step"])
    rows = set(zip(table.column("sample_id").to_pylist(), table.column("step").to_pylist()))
    assert rows == want and table.num_rows == len(want)
    # Every committed row, both ways.
    n = con.execute(f"SELECT count(*) FROM read_parquet({['s3://' + f for f in files]!r}) WHERE step < {committed}").fetchone()[0]
    assert n == reader.index.num_rows
    globbed = con.execute(f"SELECT count(*) FROM read_parquet('s3://{root}/index/part-*.parquet')").fetchone()[0]
    assert globbed == n + len(ids)  # what the live list and the step filter keep out
    assert StoreReader(url).index.lookup(ids)[0].tolist() == reader.index.lookup(ids)[0].tolist()  # the library ignores it too


def test_lookup_reads_no_mmap_and_counts_requests(recorded):
    url, _, _, _ = recorded
    reader = StoreReader(url)
    before = reader.io.requests.total
    steps, unknown = reader.index.lookup(list(range(0, 96, 7)))
    assert len(steps) and not unknown
    parts = reader.index.num_parts
    # One GET per live object the lookup must check whole (sidecar, or Parquet without one), a LIST to find them.
    assert reader.io.requests.total - before <= 2 * parts + 2
    again = reader.io.requests.total
    reader.index.lookup([1, 2])
    assert reader.io.requests.total == again  # opened parts are kept: no new requests
