"""Smoke tests of benchmarks/storage.py and benchmarks/overhead.py on tiny configurations.

They check the shape and the internal consistency of the figures (keys, ratios,
pruned < dense), never a speed.
"""

from __future__ import annotations

import math

import pytest

from benchmarks import overhead, storage

TINY_MLP = {"data": "digits", "epochs": 1, "batch": 256, "plans": ("layerwise", "uniform-50"), "codec_check": True,
            "codec_modes": ("random",), "codec_rows": 8}


def _check_rows(rows: list[dict]) -> None:
    assert rows
    for r in rows:
        assert set(storage.ROW_KEYS) <= set(r), set(storage.ROW_KEYS) - set(r)
        assert r["raw_bytes"] == r["steps"] * r["params"] * 4
        assert math.isclose(r["savings"], 1 - r["store_bytes"] / r["dense_bytes"])
        assert math.isclose(r["savings_raw"], 1 - r["store_bytes"] / r["raw_bytes"])
        assert r["index_bytes_per_row"] > 0
        assert r["naive_bytes"] > 0
        if r["plan"] == storage.PAPER_PLAN and r["value_dtype"] != "float32":
            assert r["store_bytes"] < r["dense_bytes"], r  # pruned and narrower than dense float32


def test_storage_full_grid_on_a_tiny_run(tmp_path):
    res = storage.run(quick=True, models={"mlp": TINY_MLP}, modes=("random", "magnitude"), dtypes=("float32", "int8", "int4"),
                      codec_models=("mlp",), workdir=str(tmp_path), plots=str(tmp_path / "plots"))
    rows = res["rows"]
    _check_rows(rows)
    assert {(r["mode"], r["plan"], r["value_dtype"]) for r in rows} == {
        (m, p, d) for m in ("random", "magnitude") for p in ("layerwise", "uniform-50") for d in ("float32", "int8", "int4")}
    for r in rows:  # one run: every store covers it, and quality is measured against float32 of the same plan
        assert r["full_run"] and r["quality_delta_points"] is not None
        assert 0.0 <= r["sample_target_acc"] <= 1.0 and r["sample_forgotten_steps"] > 0  # the 1 % sample request too
        if r["value_dtype"] == "float32":
            assert r["quality_delta_points"] == 0.0
    by_dtype = {r["value_dtype"]: r for r in rows if r["mode"] == "random" and r["plan"] == "layerwise"}
    assert by_dtype["int4"]["values_bytes"] < by_dtype["int8"]["values_bytes"]  # two codes per byte
    # Magnitude stores pay for their indices.
    by = {(r["mode"], r["plan"], r["value_dtype"]): r for r in rows}
    assert by[("magnitude", "layerwise", "int8")]["indices_bytes"] > 0 == by[("random", "layerwise", "int8")]["indices_bytes"]
    # Re-encoding a store's arrays with another codec gives what recording with that codec wrote.
    check = res["models"]["mlp"]["codec_check"]
    assert check["equal"], check
    assert {c["codec"] for c in res["codecs"]} >= {"blosc-zstd", "blosc-lz4", "zstd", "none"}
    assert "mlp" in res["summary"]["best"] and res["summary"]["lines"]
    assert (tmp_path / "plots" / "storage_savings.png").stat().st_size > 0


def test_storage_windows_give_each_row_its_own_dense_reference(tmp_path):
    spec = dict(TINY_MLP, full_grid=False, uniform_window=3, topk_window=2, naive_steps=2, codec_check=False)
    res = storage.run(quick=True, models={"mlp": spec}, dtypes=("float32", "int8"), codec_models=(), workdir=str(tmp_path))
    rows = res["rows"]
    _check_rows(rows)
    total = res["models"]["mlp"]["total_steps"]
    for r in rows:
        if r["mode"] == "random" and r["plan"] == storage.PAPER_PLAN:
            assert r["steps"] == total and r["quality_delta_points"] is not None
        elif r["mode"] == "random":
            assert r["steps"] == 3 and r["window"] == [total - 3, total] and r["quality_delta_points"] is None
        else:
            assert r["steps"] == 2 and r["quality_delta_points"] is None
        assert r["naive_measured_steps"] == 2


def test_overhead_rows_are_consistent(tmp_path):
    res = overhead.run(quick=True, models={"mlp": {"batch": 64, "shape": None, "steps": 3, "rounds": 2}})
    (row,) = res["rows"]
    for key in ("steps_per_s_plain", "steps_per_s_recorded", "steps_per_s_dense", "overhead", "overhead_dense"):
        assert key in row
    assert all(row[f"steps_per_s_{v}"] > 0 for v in overhead.VARIANTS)
    rounds = row["rounds_steps_per_s"]
    assert all(len(v) == 2 for v in rounds.values())
    # the headline is the median of the pair-by-pair ratios of the same rounds
    for v in ("recorded", "dense"):
        paired = [p / r - 1 for p, r in zip(rounds["plain"], rounds[v])]
        key = "overhead" if v == "recorded" else "overhead_dense"
        assert row[f"{key}_per_round"] == pytest.approx(paired)
        assert row[key] == pytest.approx(sum(paired) / 2)
    assert math.isclose(row["overhead_of_medians"], row["steps_per_s_plain"] / row["steps_per_s_recorded"] - 1)
    assert row["store_bytes_recorded"] < row["store_bytes_dense"]
