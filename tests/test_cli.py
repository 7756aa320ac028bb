"""The deltastore command: info, verify, forget, restore, demo."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file, save_file

from deltastore.cli import main
from deltastore.plan import PruningPlan

from .helpers import record


def test_info_text_and_json(tmp_path, capsys):
    record(tmp_path / "s", steps=3, plan=PruningPlan.layerwise())
    assert main(["info", str(tmp_path / "s")]) == 0
    text = capsys.readouterr().out
    assert "3 committed" in text and "fc1.weight" in text
    assert main(["info", str(tmp_path / "s"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["committed_steps"] == 3 and info["bytes"]["total"] > 0
    assert {t["name"] for t in info["tensors"]} >= {"conv.weight", "bn.running_mean"}


def test_verify_ok_and_corrupt(tmp_path, capsys):
    record(tmp_path / "s", steps=4, steps_per_shard=2, plan=PruningPlan.layerwise())
    assert main(["verify", str(tmp_path / "s"), "--quiet"]) == 0
    chunk = tmp_path / "s" / "g0000" / "values" / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[5] ^= 0x55
    chunk.write_bytes(bytes(raw))
    assert main(["verify", str(tmp_path / "s"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "tensor conv.weight" in err and ("step 2" in err or "step 3" in err)


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "expected a deltastore store" in capsys.readouterr().err


def test_forget_and_restore_commands(tmp_path, capsys):
    model, _, _ = record(tmp_path / "s", steps=6)
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp_path / "m.safetensors"))
    (tmp_path / "ids.txt").write_text("0\n9\n")
    args = ["forget", str(tmp_path / "s"), "--model", str(tmp_path / "m.safetensors"), "--samples", str(tmp_path / "ids.txt"),
            "--out", str(tmp_path / "f.safetensors"), "--request-id", "r1", "--receipt", str(tmp_path / "r.json")]
    assert main(args) == 0
    receipt = json.loads((tmp_path / "r.json").read_text())
    assert receipt["steps"] == [0, 1] and receipt["request_id"] == "r1"
    assert main(args) == 2  # the output exists: never overwritten
    assert "already exists" in capsys.readouterr().err
    assert main(["restore", str(tmp_path / "s"), "--model", str(tmp_path / "f.safetensors"), "--request", "r1",
                 "--out", str(tmp_path / "back.safetensors")]) == 0
    back = load_file(str(tmp_path / "back.safetensors"))
    for k, v in weights.items():
        if v.is_floating_point():
            assert (back[k] - v).abs().max() < 1e-5, k


@pytest.mark.slow
def test_demo_writes_the_documented_json(tmp_path):
    out = tmp_path / "demo.json"
    assert main(["demo", "--store", str(tmp_path / "store"), "--json", str(out), "--epochs", "2"]) == 0
    d = json.loads(out.read_text())
    for key in ("steps", "samples", "index_rows", "store_bytes", "dense_bytes", "savings", "train_seconds"):
        assert key in d, key
    assert d["savings"] == pytest.approx(1 - d["store_bytes"] / d["dense_bytes"])
    assert d["index_rows"] == d["samples"] * 2  # every sample once per epoch
    for req in ("class", "samples"):
        r = d["forget"][req]
        assert {"steps", "seconds", "target_accuracy", "retained_accuracy"} <= set(r)
        assert len(r["target_accuracy"]) == 2 and len(r["retained_accuracy"]) == 2
    assert set(d["forget"]["samples"]["mia"]) == {"before", "after", "retrained"}
    assert d["restore"]["max_abs_diff_to_trained"] < 1e-4
    # A second run refuses to overwrite the stores unless asked.
    assert main(["demo", "--store", str(tmp_path / "store"), "--json", str(out), "--epochs", "1"]) == 2
