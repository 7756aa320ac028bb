"""Smoke tests of the latency and index benchmarks (tiny sizes, same code paths)."""

from __future__ import annotations

import math

import pytest

from benchmarks import index as index_bench
from benchmarks import latency

REQUESTS = ("one sample", "1% of samples", "one class")


def test_index_benchmark_small(tmp_path, capsys):
    res = index_bench.run(quick=True, rows=20_000, repeats=1, plots=str(tmp_path / "plots"))
    s = res["summary"]
    for fig in (s, s["string"]):  # int64 ids at the top level, string ids beside them
        assert fig["rows"] == 20_000 and fig["samples"] == 2_500  # 8 epochs of 2,500 samples
        assert set(fig["lookup_seconds"]) == {"1", "1000", "100000"}
        assert fig["lookup_seconds"] == fig["lookup_seconds_cold"]
        assert all(v > 0 for v in fig["lookup_seconds_warm"].values())
        assert set(fig["lookup_seconds_no_sidecar_cold"]) == {"1", "1000", "100000"}
        assert fig["meets_target"] == (fig["lookup_seconds"]["1000"] <= index_bench.TARGET_SECONDS)
        assert fig["bytes_per_row"] == pytest.approx(fig["parquet_bytes_per_row"] + fig["sidecar_bytes_per_row"], abs=0.02)
        assert fig["sidecar_bytes_per_row"] > 0 and fig["build_seconds"] >= 0 and fig["compact_seconds"] >= 0
    rows = res["rows"]
    assert {(r["id_type"], r["layout"]) for r in rows} == {
        (t, layout) for t in ("int64", "string") for layout in ("compacted", "many_parts", "no_sidecar")
    }
    for r in rows:
        assert r["ids"] == min(r["ids_requested"], 2_500)
        if r["ids_requested"] == 1:
            assert r["steps_found"] == 8  # one sample: once per epoch
        assert r["cold_min_ms"] <= r["cold_ms"] and r["warm_min_ms"] <= r["warm_ms"]
        assert r["sidecar_parts"] == (0 if r["layout"] == "no_sidecar" else r["parts"])
    same = {(r["ids_requested"], r["steps_found"]) for r in rows if r["id_type"] == "int64"}
    assert same == {(r["ids_requested"], r["steps_found"]) for r in rows if r["id_type"] == "string"}  # same shuffles
    assert (tmp_path / "plots" / "index_lookup.png").exists()
    out = capsys.readouterr().out
    assert "1,000-id lookup, int64 ids" in out and "1,000-id lookup, string ids" in out


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
