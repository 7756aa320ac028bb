"""Smoke tests of the latency and index benchmarks (tiny sizes, same code paths), and of
the reader's fast read paths that the latency benchmark drives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import index as index_bench
from benchmarks import latency
from deltastore import format as format_module
from deltastore.format import decode_values, quantize_int8
from deltastore.plan import PruningPlan
from deltastore.reader import StoreReader, _decode, _read_rows
from .helpers import record

REQUESTS = ("one sample", "1% of samples", "one class")


def test_index_benchmark_small(tmp_path, capsys):
    res = index_bench.run(quick=True, rows=20_000, repeats=1, plots=str(tmp_path / "plots"))
    s = res["summary"]
    assert s["rows"] == 20_000 and s["samples"] == 2_500  # 8 epochs of 2,500 samples
    assert set(s["lookup_seconds"]) == {"1", "1000", "100000"}
    assert s["lookup_seconds"] == s["lookup_seconds_cold"]
    assert all(v > 0 for v in s["lookup_seconds_warm"].values())
    assert s["meets_target"] == (s["lookup_seconds"]["1000"] <= index_bench.TARGET_SECONDS)
    assert s["bytes_per_row"] > 0 and s["build_seconds"] >= 0
    rows = res["rows"]
    assert {r["layout"] for r in rows} == {"compacted", "many_parts"}
    for r in rows:
        assert r["ids"] == min(r["ids_requested"], 2_500)
        if r["ids_requested"] == 1:
            assert r["steps_found"] == 8  # one sample: once per epoch
        assert r["cold_min_ms"] <= r["cold_ms"] and r["warm_min_ms"] <= r["warm_ms"]
    assert (tmp_path / "plots" / "index_lookup.png").exists()
    assert "1,000-id lookup" in capsys.readouterr().out


def test_latency_benchmark_tiny(tmp_path, capsys):
    cfg = latency.Config("tiny", "mlp", "digits", epochs=1, batch=256)
    work = tmp_path / "work"
    work.mkdir()
    res = latency.run(quick=True, configs=(cfg,), repeats=1, workdir=str(work), plots=str(tmp_path / "plots"), log=lambda *_: None)
    rows, s = res["rows"], res["summary"]
    assert [(r["request"], r["cache"]) for r in rows] == [(q, c) for q in REQUESTS for c in ("warm", "cold")]
    (run,) = s["runs"]
    assert run["steps"] == math.ceil(run["samples"] / 256)
    assert run["dense_bytes"] > run["store_bytes"]
    by = {(r["request"], r["cache"]): r for r in rows}
    for r in rows:
        assert r["speedup"] == pytest.approx(r["dense_seconds"] / r["store_seconds"])
        assert r["store_seconds"] == r["store_forget_seconds"] and r["dense_seconds"] == r["dense_forget_seconds"]
        assert r["byte_ratio"] == pytest.approx(r["dense_bytes_read"] / r["store_bytes_read"])
        assert r["pipeline_efficiency"] == pytest.approx(r["read_decode_seconds"] / r["store_sum_seconds"])
        assert r["speedup_target_met"] == (r["speedup"] >= latency.SPEEDUP_FACTOR * r["byte_ratio"])
        assert r["efficiency_target_met"] == (r["pipeline_efficiency"] >= latency.EFFICIENCY_TARGET)
        assert r["dense_bytes_read"] > r["store_bytes_read"] > 0
        assert 1 <= r["steps"] <= run["steps"]
    assert by[("one sample", "warm")]["steps"] == 1  # one epoch: a sample is in one step
    assert by[("one sample", "warm")]["steps"] <= by[("1% of samples", "warm")]["steps"] <= by[("one class", "warm")]["steps"]
    for q in REQUESTS:  # same request, same steps and bytes whatever the cache state
        assert by[(q, "warm")]["steps"] == by[(q, "cold")]["steps"]
        assert by[(q, "warm")]["store_bytes_read"] == by[(q, "cold")]["store_bytes_read"]
    assert by[("one sample", "cold")]["cold_method"] in ("posix_fadvise(DONTNEED)", "fresh copy")
    assert list(work.iterdir()) == []  # temporary stores removed
    assert (tmp_path / "plots" / "latency_tiny.png").exists()
    assert "forget latency" in capsys.readouterr().out


# ---- the reader's fast paths equal the reference ones -------------------------------------
@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """An int8 store, and a magnitude-mode float16 one whose rows span several inner chunks."""
    root = tmp_path_factory.mktemp("fast")
    record(root / "int8", steps=9, steps_per_shard=4, plan=PruningPlan.layerwise(), value_dtype="int8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(format_module, "MAX_INNER_CHUNK_COLS", 50)
        record(root / "f16", steps=9, steps_per_shard=4, plan=PruningPlan.layerwise(mode="magnitude"), value_dtype="float16")
    readers = [StoreReader(root / "int8"), StoreReader(root / "f16")]
    # Every array with its whole content read through Zarr once: the reference.
    return [(r, [(arr, arr[:]) for arrs in (r._values, r._scales, r._indices) for arr in arrs if arr is not None]) for r in readers]


@settings(max_examples=25, deadline=None)
@given(rows=st.lists(st.integers(0, 8), min_size=1, max_size=12))
def test_fast_row_reads_equal_zarr(stores, rows):
    sel = np.asarray(rows, dtype=np.int64)
    for r, arrays in stores:
        for arr, full in arrays:
            assert r._fast[id(arr)] is not None  # the writer's layout takes the fast path
            assert np.array_equal(r._fast[id(arr)].read(sel), full[sel])
            assert np.array_equal(_read_rows(arr, sel), full[sel])
    wide = [a for a, _ in stores[1][1] if a.metadata.to_dict()["codecs"][0]["configuration"]["chunk_shape"][1] < a.shape[1]]
    assert wide  # some rows really are split across inner chunks


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 3), k=st.integers(1, 700), block=st.sampled_from([1, 7, 256]), seed=st.integers(0, 2**16))
def test_int8_decode_is_bit_identical(rows, k, block, seed):
    g = torch.Generator().manual_seed(seed)
    qs, ss = zip(*(quantize_int8(torch.randn(k, generator=g) * 3, block) for _ in range(rows)))
    raw, scales = torch.stack(qs).numpy(), torch.stack(ss).numpy()
    assert torch.equal(_decode(raw, "int8", scales, block), decode_values(raw, "int8", scales, block))


def test_the_entry_point_stamps_every_row_with_machine_and_versions(tmp_path):
    import json

    from benchmarks.__main__ import main

    out = tmp_path / "index.json"
    assert main(["index", "--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["rows"]
    for row in result["rows"]:
        assert row["quick"] is True and row["device"] == "cpu"
        assert row["machine"]["cores"] >= 1 and "torch" in row["machine"]["versions"]
