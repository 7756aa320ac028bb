"""The deltastore command: info, verify, forget, restore, demo.

Exit status: 0 ok, 1 for any failure at run time (one paragraph on stderr, no traceback),
2 for usage errors (argparse). Bad input files of every kind: tests/faults/test_fault_cli_inputs.py.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import unlearning.cli_commands as cli_commands
from deltastore.cli import main
from deltastore.errors import InvalidArgumentError
from deltastore.plan import PruningPlan
from unlearning.forget import audit

from .helpers import record


def _one_paragraph(err: str, command: str) -> None:
    assert "Traceback" not in err
    assert err.startswith(f"deltastore {command}: error: ") and err.count("\n") == 1, err


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


def test_runtime_errors_exit_1_with_one_paragraph(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    _one_paragraph(err, "info")
    assert "expected a deltastore store" in err


def test_usage_errors_exit_2_as_argparse_does(tmp_path, capsys):
    for argv in ([], ["info"], ["nonsense"], ["forget", str(tmp_path), "--model", "m.safetensors"],
                 ["forget", str(tmp_path), "--model", "m", "--samples", "s", "--out", "o", "--buffers", "bad"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv
        assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_exception(tmp_path, where):
    (tmp_path / "f").write_text("x")
    argv = ["--debug", "info", str(tmp_path / "f")] if where == "before" else ["info", str(tmp_path / "f"), "--debug"]
    with pytest.raises(InvalidArgumentError, match="is a file"):
        main(argv)


def test_a_bug_is_one_paragraph_pointing_at_debug(tmp_path, capsys, monkeypatch):
    model, _, _ = record(tmp_path / "s", steps=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    (tmp_path / "ids.txt").write_text("0\n")

    def bug(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli_commands, "check_model", bug)
    argv = ["forget", str(tmp_path / "s"), "--model", str(tmp_path / "m.safetensors"), "--samples", str(tmp_path / "ids.txt"),
            "--out", str(tmp_path / "o.safetensors")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    _one_paragraph(err, "forget")
    assert "unexpected ZeroDivisionError" in err and "--debug" in err
    with pytest.raises(ZeroDivisionError):
        main(["--debug", *argv])
    assert not (tmp_path / "o.safetensors").exists() and audit(tmp_path / "s") == []


def test_broken_pipe_is_quiet(tmp_path, capsys, monkeypatch):
    record(tmp_path / "s", steps=2)

    class Closed:
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["info", str(tmp_path / "s")]) == 1
    assert capsys.readouterr().err == ""


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
    assert main(args) == 1  # the output exists: never overwritten
    err = capsys.readouterr().err
    _one_paragraph(err, "forget")
    assert "already exists" in err
    assert main(["restore", str(tmp_path / "s"), "--model", str(tmp_path / "f.safetensors"), "--request", "r1",
                 "--out", str(tmp_path / "back.safetensors")]) == 0
    back = load_file(str(tmp_path / "back.safetensors"))
    for k, v in weights.items():
        if v.is_floating_point():
            assert (back[k] - v).abs().max() < 1e-5, k


def test_out_keeps_every_input_tensor_and_pt_round_trips(tmp_path):
    model, _, _ = record(tmp_path / "s", steps=6)
    weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    weights["extra.int_buffer"] = torch.arange(5, dtype=torch.int16)  # not recorded: passed through as it is
    weights["head.tied"] = weights["fc2.weight"]  # shares memory with a recorded tensor (a tied weight)
    torch.save(weights, str(tmp_path / "m.pt"))
    (tmp_path / "ids.txt").write_text("\ufeff0\r\n9\r\n")  # a byte-order mark and CRLF line ends are fine
    out = tmp_path / "f.pt"
    assert main(["forget", str(tmp_path / "s"), "--model", str(tmp_path / "m.pt"), "--samples", str(tmp_path / "ids.txt"),
                 "--out", str(out), "--request-id", "r1", "--receipt", str(tmp_path / "r.json")]) == 0
    new = torch.load(str(out), map_location="cpu", weights_only=True)
    assert list(new) == list(weights)
    assert new["bn.num_batches_tracked"].dtype == torch.int64
    assert torch.equal(new["bn.num_batches_tracked"], weights["bn.num_batches_tracked"])
    assert torch.equal(new["extra.int_buffer"], weights["extra.int_buffer"])
    assert torch.equal(new["head.tied"], weights["fc2.weight"])  # the input's value: only recorded names get new values
    assert not torch.equal(new["fc1.weight"], weights["fc1.weight"])
    assert json.loads((tmp_path / "r.json").read_text())["request_id"] == "r1"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
    assert main(["restore", str(tmp_path / "s"), "--model", str(out), "--request", "r1", "--out", str(tmp_path / "back.safetensors")]) == 0
    back = load_file(str(tmp_path / "back.safetensors"))
    assert torch.equal(back["extra.int_buffer"], weights["extra.int_buffer"])
    assert (back["fc1.weight"] - weights["fc1.weight"]).abs().max() < 1e-5


def test_restore_twice_is_refused_before_any_work(tmp_path, capsys):
    model, _, _ = record(tmp_path / "s", steps=4)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    (tmp_path / "ids.txt").write_text("0\n")
    s, m = str(tmp_path / "s"), str(tmp_path / "m.safetensors")
    assert main(["forget", s, "--model", m, "--samples", str(tmp_path / "ids.txt"), "--out", str(tmp_path / "f.safetensors"),
                 "--request-id", "r1"]) == 0
    f = str(tmp_path / "f.safetensors")
    assert main(["restore", s, "--model", f, "--request", "r1", "--out", str(tmp_path / "b1.safetensors")]) == 0
    capsys.readouterr()
    assert main(["restore", s, "--model", str(tmp_path / "b1.safetensors"), "--request", "r1", "--out", str(tmp_path / "b2.safetensors")]) == 1
    err = capsys.readouterr().err
    _one_paragraph(err, "restore")
    assert "already restored" in err and not (tmp_path / "b2.safetensors").exists()
    assert [e.kind for e in audit(s)] == ["forget", "restore"]


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
    assert main(["demo", "--store", str(tmp_path / "store"), "--json", str(out), "--epochs", "1"]) == 1
