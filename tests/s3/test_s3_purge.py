"""purge on object storage (FORMAT.md §5.2, §11): the same bits as locally, and a scan of every
object afterwards finds neither the purged ids nor the erased rows' bytes."""

from __future__ import annotations

import boto3
import numpy as np

from deltastore.format import model_fingerprint, read_commit
from deltastore.format.trained import read_trained
from deltastore.read import StoreReader
from deltastore.verify import verify_store
from tests.helpers import record
from unlearning.forget import forget, purge, restore


def _fp(state) -> str:
    return model_fingerprint({k: v for k, v in state.items() if v.is_floating_point()})


def _objects(endpoint: str, bucket: str):
    s3 = boto3.client("s3", endpoint_url=endpoint)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            yield obj["Key"], s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()


def test_purge_on_s3_matches_local_and_leaves_no_trace(s3_endpoint, bucket, tmp_path):
    url = f"s3://{bucket}/p"
    kw = dict(steps=8, steps_per_shard=4, codec="none")
    model, _, _ = record(url, **kw)
    local_model, _, _ = record(tmp_path / "s", **kw)
    states = []
    for where, m in ((url, model), (tmp_path / "s", local_model)):
        state = {k: v.detach().clone() for k, v in m.state_dict().items()}
        forget(state, where, [3, 60], request_id="P")  # steps 0 and 7
        forget(state, where, [4], request_id="Q")  # step 0, shared
        purge(where, "P", state, purge_id="T")
        states.append(state)
    assert _fp(states[0]) == _fp(states[1])
    r = StoreReader(url)
    steps = [0, 7]
    needles = {}
    for g in r.manifest.groups:
        for s, row in zip(steps, r.read_rows(g.id, steps)[0]):
            assert not row.any()
    assert verify_store(url).ok and verify_store(url).erased_steps == 2
    local = StoreReader(tmp_path / "s")
    assert _fp(read_trained(r.io, r.commit, r.manifest)) == _fp(read_trained(local.io, local.commit, local.manifest))
    # The erased rows' bytes as they were: from a fresh local recording of the same run.
    fresh, _, _ = record(tmp_path / "f", **kw)
    f = StoreReader(tmp_path / "f")
    for g in f.manifest.groups:
        rows = f._decoders[g.id]["values"].read(np.asarray(steps, dtype=np.int64))
        for s, row in zip(steps, rows):
            nz = np.flatnonzero(row)
            if nz.size >= 8:
                raw = row.tobytes()
                needles[raw[int(nz[0]) * 4 : int(nz[0]) * 4 + 32]] = f"row of step {s}, {g.label}"
    # Positive control on the fresh copy (every byte of every file), then the scan of every object.
    import os

    control = set()
    for root, _, files in os.walk(tmp_path / "f"):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                data = fh.read()
            control |= {w for n, w in needles.items() if n in data}
    assert control == set(needles.values())
    found = {(key, w) for key, data in _objects(s3_endpoint, bucket) for n, w in needles.items() if n in data}
    assert found == set()
    # The ids, decoded: every Parquet object (index parts, other requests' ids files) read back.
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = set()
    for key, data in _objects(s3_endpoint, bucket):
        if key.endswith(".parquet"):
            ids |= set(pq.read_table(pa.BufferReader(data)).column("sample_id").to_pylist())
    assert 4 in ids and 5 in ids and not {3, 60} & ids  # positive: Q's id and an untouched one are there
    assert read_commit(r.io)["erased"][0]["state"] == "done"
    restore(states[0], url, "Q")  # the other request still works on S3
