"""The prepared GPU check (benchmarks/gpu.py) run on its CPU fallback, and the value-format benchmark on a tiny run.

They check that the code paths run and that the correctness figures hold, never a speed.
"""

from __future__ import annotations

import torch

from benchmarks import gpu, values

TINY = {"mlp": {"data": "digits", "batch": 64, "steps": 3, "repeats": 1, "overhead": {"batch": 64, "shape": None, "steps": 2, "rounds": 1}}}


def test_gpu_check_runs_on_the_cpu_fallback(tmp_path):
    res = gpu.run(quick=True, device="cpu" if not torch.cuda.is_available() else None, models=TINY, workdir=str(tmp_path))
    (row,) = res["rows"]
    assert res["summary"]["correct"], row  # masks bit-identical, forget on the device == on the CPU
    assert row["masks_identical"] and row["mask_groups_checked"] > 0
    assert row["int8_forget_allclose"] and row["int4_forget_allclose"]
    assert row["int8_forget_changed_model"] and row["int4_forget_changed_model"]  # the comparison is not vacuous
    assert row["steps_read"] >= 1 and row["read_decode_seconds"] > 0 and row["forget_seconds"] > 0
    assert row["overhead_target"] == (0.05 if row["device"].startswith("cuda") else 0.10)
    assert res["summary"]["fallback"] == (not torch.cuda.is_available())


def test_value_formats_on_real_updates(tmp_path):
    res = values.run(quick=True, models={"mlp": {"data": "digits", "epochs": 1, "batch": 512, "entropy_steps": 2}}, workdir=str(tmp_path))
    errs = {r["format"]: r for r in res["sum_error"]}
    assert set(errs) == {"int8", "int4", "int4-nearest"}
    last = max(k for k in errs["int8"] if k.startswith("rel_err_T"))
    assert 0 < errs["int8"][last] < errs["int4"][last] < 0.2  # int4 is coarser, and still close
    blocks = {r["block"]: r for r in res["blocks"]}
    assert blocks[16]["scale_bits_per_value"] > blocks[256]["scale_bits_per_value"]
    coders = {(r["format"], r["coder"]): r for r in res["entropy"]}
    for fmt in ("int8", "int4"):
        bound = coders[(fmt, "order-0 entropy (bound)")]["code_bits_per_value"]
        raw = coders[(fmt, "none")]["code_bits_per_value"]
        assert 0 < bound <= (8 if fmt == "int8" else 4) <= raw + 0.5


def test_recorder_stages_add_up():
    from benchmarks import stages

    (row,) = stages.run(quick=True, models={"cnn": {"steps": 2, "rounds": 1}}, value_dtypes=("int4",))["rows"]
    assert row["params"] == 1_557_066 and row["value_dtype"] == "int4"
    parts = [row[f"{k}_ns_per_param"] for k in ("snapshot", "select", "quantize", "post_other", "compress", "write_rest")]
    assert all(p >= 0 for p in parts[:3]) and row["quantize_ns_per_param"] > 0 and row["compress_ns_per_param"] > 0
    assert abs(sum(parts) - row["recorder_ns_per_param"]) < 1e-6 * max(1.0, row["recorder_ns_per_param"])
