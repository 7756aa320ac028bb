"""Smoke test of benchmarks/purge.py on a small model: the figures' shape and consistency, never a speed."""

from __future__ import annotations

from benchmarks import purge


def test_purge_benchmark_quick_on_a_small_model():
    rows = purge.run(quick=True, model="lenet")["rows"]
    assert [r["request"] for r in rows] == ["one-sample", "class-0"]
    for r in rows:
        assert r["erased_steps"] >= 1 and r["purge_seconds"] > 0
        assert r["bytes_written"] == r["shard_bytes_rewritten"] + r["base_bytes"] + r["index_bytes_written"]
        assert 0 < r["base_bytes"] < r["store_bytes"] and r["index_bytes_written"] > 0
        assert r["max_param_change"] < 1e-5  # parameters: float rounding only
    one, cls = rows
    assert one["erased_steps"] == 1 and cls["erased_steps"] >= one["erased_steps"]
