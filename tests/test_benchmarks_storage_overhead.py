"""Smoke tests of benchmarks/storage.py and benchmarks/overhead.py on tiny configurations.

They check the shape and the internal consistency of the figures (keys, ratios,
pruned < dense), never a speed. Also the writer's int8 fast path, which the
overhead work introduced: it must equal format.quantize_int8 bit for bit.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import overhead, storage
from deltastore.format import num_blocks, quantize_int8
from deltastore.writer import quantize_int8_into

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
    res = storage.run(quick=True, models={"mlp": TINY_MLP}, modes=("random", "magnitude"), dtypes=("float32", "int8"),
                      codec_models=("mlp",), workdir=str(tmp_path), plots=str(tmp_path / "plots"))
    rows = res["rows"]
    _check_rows(rows)
    assert {(r["mode"], r["plan"], r["value_dtype"]) for r in rows} == {
        (m, p, d) for m in ("random", "magnitude") for p in ("layerwise", "uniform-50") for d in ("float32", "int8")}
    for r in rows:  # one run: every store covers it, and quality is measured against float32 of the same plan
        assert r["full_run"] and r["quality_delta_points"] is not None
        if r["value_dtype"] == "float32":
            assert r["quality_delta_points"] == 0.0
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


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 2000),
    block=st.sampled_from([1, 3, 64, 256]),
    scale=st.sampled_from([1e-40, 1e-6, 1.0, 1e30]),
    seed=st.integers(0, 2**16),
)
def test_writer_int8_fast_path_equals_the_reference_quantiser(k, block, scale, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(k, generator=g) * scale
    v[:: 5] = 0.0
    q = torch.empty(k, dtype=torch.int8)
    s = torch.empty(num_blocks(k, block))
    quantize_int8_into(v, block, q, s)
    q0, s0 = quantize_int8(v, block)
    assert torch.equal(q, q0)
    assert torch.equal(s, s0)


@pytest.mark.parametrize("special", [float("nan"), float("inf"), -0.0])
def test_writer_int8_fast_path_handles_special_values_like_the_reference(special):
    v = torch.linspace(-1, 1, 600)
    v[300] = special
    v[:256] = 0.0
    q = torch.empty(600, dtype=torch.int8)
    s = torch.empty(num_blocks(600, 256))
    quantize_int8_into(v, 256, q, s)
    q0, s0 = quantize_int8(v, 256)
    assert torch.equal(q, q0)
    assert torch.equal(s.nan_to_num(-1.0), s0.nan_to_num(-1.0))
