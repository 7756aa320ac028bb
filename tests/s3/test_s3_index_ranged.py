"""A 1-id lookup on S3 reads a small part of the sidecar (version 2: header, block table, then
only the blocks the search touches, each checked), counted in requests and bytes."""

from __future__ import annotations

import numpy as np
import pytest

from deltastore.index import IndexWriter, SampleIndex
from deltastore.index import sidecar as sidecar_module
from deltastore.storage.object import ObjectStoreIO

N_IDS, EPOCHS, PER_STEP = 25_000, 8, 1_000  # 200,000 rows


def test_a_one_id_lookup_reads_a_small_fraction_of_a_200k_row_sidecar(s3_url, monkeypatch):
    io = ObjectStoreIO(s3_url)
    w = IndexWriter(io, "int64")
    rng = np.random.default_rng(0)
    truth: dict[int, list[int]] = {}
    step = 0
    for _ in range(EPOCHS):
        for batch in rng.permutation(N_IDS).reshape(-1, PER_STEP):
            w.add(step, 0, batch)
            for i in batch[:3].tolist():
                truth.setdefault(i, []).append(step)
            step += 1
    w.flush()
    digests = w.digests()
    (side_key,) = [k for k in digests if k.endswith(".ids")]
    size = digests[side_key].size
    assert size > 1_000_000

    sid = next(iter(truth))
    # By default a sidecar under RANGED_FROM (4 MiB) is one whole GET: fewer rounds on real S3.
    reader_io = ObjectStoreIO(s3_url)
    whole = SampleIndex(reader_io, "int64", step, digests=digests).lookup([sid])[0]
    assert reader_io.requests.by_kind == {"LIST": 1, "GET": 1} and reader_io.bytes_read == size
    # Read by ranges (what a sidecar over 4 MiB gets): the same answer from a small fraction.
    monkeypatch.setattr(sidecar_module, "RANGED_FROM", 0)
    reader_io = ObjectStoreIO(s3_url)
    index = SampleIndex(reader_io, "int64", step, digests=digests)
    steps, unknown = index.lookup([sid])
    assert unknown == [] and set(truth[sid]) <= set(steps.tolist()) and len(steps) == EPOCHS
    assert steps.tolist() == whole.tolist()
    sidecar_bytes = reader_io.bytes_read
    sidecar_gets = reader_io.requests.by_kind.get("GET range", 0)
    print(f"\n1-id lookup: {sidecar_bytes} of {size} sidecar bytes ({100 * sidecar_bytes / size:.1f} %), "
          f"{sidecar_gets} ranged GETs, {reader_io.requests.by_kind}")
    # Header and block table (2 concurrent GETs), then one key, one row-start and one step block (16 KiB each, or two
    # where an entry straddles a block boundary).
    assert sidecar_bytes < 0.10 * size
    assert reader_io.requests.by_kind.get("GET", 0) == 0  # never the whole object
    assert sidecar_gets <= 8
    # A second lookup of the same id reads nothing more; every block was checked once.
    before = reader_io.bytes_read
    assert index.lookup([sid])[0].tolist() == steps.tolist()
    assert reader_io.bytes_read == before
    # The whole index still checks (verify's path): every block read and checked.
    index.check()
    assert reader_io.bytes_read - before >= size


def test_the_same_lookup_counted_locally_and_on_s3(s3_url, tmp_path, monkeypatch):
    """LocalStoreIO counts its operations under the object-storage names: the sidecar is mapped
    locally (one 'map'), range-read on S3."""
    from deltastore.storage import LocalStoreIO

    monkeypatch.setattr(sidecar_module, "RANGED_FROM", 0)
    ids = np.arange(40_000)
    results = {}
    for name, io in (("local", LocalStoreIO(tmp_path / "s")), ("s3", ObjectStoreIO(s3_url))):
        w = IndexWriter(io, "int64")
        for s in range(40):
            w.add(s, 0, ids[s * 1000 : (s + 1) * 1000])
        w.flush()
        reader_io = type(io)(tmp_path / "s") if name == "local" else ObjectStoreIO(s3_url)
        steps, _ = SampleIndex(reader_io, "int64", 40, digests=w.digests()).lookup([12_345])
        results[name] = (steps.tolist(), dict(reader_io.requests.by_kind))
    assert results["local"][0] == results["s3"][0] == [12]
    assert results["local"][1] == {"LIST": 1, "map": 1}
    assert "map" not in results["s3"][1] and results["s3"][1]["GET range"] >= 3


def test_reader_open_fetches_metadata_concurrently(recorded, monkeypatch):
    """StoreReader's open on S3: the zarr.json objects are in flight together, not one after another."""
    import threading
    import time

    from deltastore.read import StoreReader

    url = recorded[0]
    lock, state = threading.Lock(), {"now": 0, "max": 0, "gets": 0}
    real = ObjectStoreIO._get

    def slow_get(self, key, options=None, kind="GET"):
        with lock:
            state["now"] += 1
            state["gets"] += 1
            state["max"] = max(state["max"], state["now"])
        try:
            time.sleep(0.05)  # a first-byte latency
            return real(self, key, options, kind)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(ObjectStoreIO, "_get", slow_get)
    StoreReader(url)
    assert state["gets"] >= 6 and state["max"] >= 4, state


def test_a_truncated_sidecar_on_s3_is_an_error_naming_it(s3_url, monkeypatch):
    """Shorter than the commit record's digest: the ranged reads come back short (or past the
    end), and the error names the sidecar."""
    from deltastore.errors import CorruptStoreError

    monkeypatch.setattr(sidecar_module, "RANGED_FROM", 0)
    io = ObjectStoreIO(s3_url)
    w = IndexWriter(io, "int64")
    for s in range(40):
        w.add(s, 0, np.arange(s * 1000, (s + 1) * 1000))
    w.flush()
    digests = w.digests()
    (key,) = [k for k in digests if k.endswith(".ids")]
    raw = io.read(key)
    for cut in (len(raw) - 1, len(raw) // 2, 100):
        io.write(key, raw[:cut])
        with pytest.raises(CorruptStoreError, match=key.split("/")[1]):
            SampleIndex(ObjectStoreIO(s3_url), "int64", 40, digests=digests).lookup([39_999])
