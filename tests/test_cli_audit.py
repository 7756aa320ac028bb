"""The deletion officer's CLI (issue 10): audit, lookup, --version, help for every option,
errors naming CLI flags, --force with a reason, ids kept in the ledger, progress only on a TTY."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from deltastore.cli import build_parser, main
from deltastore.progress import progress_bar
from unlearning.forget import audit
from unlearning.ledger import Ledger

from .helpers import record


def _one_paragraph(err: str, command: str) -> None:
    assert "Traceback" not in err
    assert err.startswith(f"deltastore {command}: error: ") and err.count("\n") == 1, err


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model, _, _ = record(d / "s", steps=6)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "m.safetensors"))
    (d / "ids.txt").write_text("0\n9\n")
    return d


@pytest.fixture()
def store(recorded, tmp_path):
    """A fresh copy (its own ledger) of one recording."""
    for name in ("m.safetensors", "ids.txt"):
        shutil.copy(recorded / name, tmp_path / name)
    shutil.copytree(recorded / "s", tmp_path / "s")
    return tmp_path


def _forget(d, *extra, out="f.safetensors", model="m.safetensors", ids="ids.txt"):
    return main(["forget", str(d / "s"), "--model", str(d / model), "--samples", str(d / ids), "--out", str(d / out), *extra])


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("deltastore ")


def test_every_option_and_positional_has_help_text():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"info", "verify", "audit", "lookup", "demo", "forget", "restore", "purge"} <= set(sub.choices)
    missing = [f"{name} {a.dest}" for name, p in sub.choices.items() for a in p._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    missing += [a.dest for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not a.help]
    assert missing == []


def test_audit_lists_requests_ids_and_the_model_the_store_expects(store, capsys):
    d = store
    assert _forget(d, "--request-id", "req-1") == 0
    assert main(["restore", str(d / "s"), "--model", str(d / "f.safetensors"), "--request", "req-1", "--out", str(d / "r.safetensors")]) == 0
    assert _forget(d, "--request-id", "req-2", model="r.safetensors", out="g.safetensors") == 0
    capsys.readouterr()
    assert main(["audit", str(d / "s")]) == 0
    text = capsys.readouterr().out
    assert "3 ledger entries, 1 live" in text and "undoes req-1" in text
    assert "req-1" in text and "restored" in text and "req-2" in text and "live" in text
    assert main(["audit", str(d / "s"), "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["live"] == ["req-2"] and obj["entries"][0]["ids_file"] == "ledger/ids/req-1.parquet"
    assert obj["expected_fingerprint"] == obj["entries"][-1]["fingerprint_after"]
    assert main(["audit", str(d / "s"), "--ids", "req-2"]) == 0
    assert capsys.readouterr().out.split() == ["0", "9"]
    # The restored model is the trained model, bit for bit: what the store expected then.
    trained, restored = load_file(str(d / "m.safetensors")), load_file(str(d / "r.safetensors"))
    assert all(torch.equal(trained[k], restored[k]) for k in trained)


def test_lookup_shows_steps_per_id_and_which_are_subtracted(store, capsys):
    d = store
    (d / "q.txt").write_text("0\n9\n40\n999\n")
    assert _forget(d, "--request-id", "req-1") == 0
    capsys.readouterr()
    assert main(["lookup", str(d / "s"), "--samples", str(d / "q.txt")]) == 0
    text = capsys.readouterr().out
    assert "0: 1 steps [0]; 1 subtracted (by req-1)" in text and "40: 1 steps [5]; none subtracted" in text
    assert "999: never recorded" in text and "4 ids: 3 recorded, 2 with every step subtracted" in text
    assert main(["lookup", str(d / "s"), "--samples", str(d / "q.txt"), "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)["ids"]}
    assert rows[9]["steps"] == [1] and rows[9]["subtracted"] == {"1": "req-1"} and not rows[999]["recorded"]


def test_errors_name_cli_flags_not_python_keywords(store, capsys):
    d = store
    (d / "unknown.txt").write_text("0\n5000\n")
    assert _forget(d, ids="unknown.txt") == 1
    err = capsys.readouterr().err
    _one_paragraph(err, "forget")
    assert "--allow-unknown" in err and "--samples" in err and "allow_unknown" not in err
    m = load_file(str(d / "m.safetensors"))
    m["fc1.weight"] = m["fc1.weight"] + 1
    save_file(m, str(d / "edited.safetensors"))
    assert _forget(d, model="edited.safetensors") == 1
    err = capsys.readouterr().err
    _one_paragraph(err, "forget")
    assert "--force REASON" in err and "force=" not in err and "fc1.weight" in err


def test_force_needs_a_reason_and_the_ledger_keeps_it(store, capsys):
    d = store
    m = load_file(str(d / "m.safetensors"))
    m["fc1.weight"] = m["fc1.weight"] + 1
    save_file(m, str(d / "edited.safetensors"))
    with pytest.raises(SystemExit) as info:
        _forget(d, "--force", model="edited.safetensors")  # no reason: argparse refuses
    assert info.value.code == 2
    assert _forget(d, "--force", "ticket 42: fine-tuned copy", model="edited.safetensors") == 0
    (e,) = audit(d / "s")
    assert e.forced and e.force_reason == "ticket 42: fine-tuned copy"
    capsys.readouterr()
    assert main(["audit", str(d / "s")]) == 0
    assert "forced: ticket 42: fine-tuned copy" in capsys.readouterr().out
    # The unrelated model did not become the store's reference: the result was derived from the
    # trained weights, so restoring it (no force) gives the trained model back, bit for bit.
    assert main(["restore", str(d / "s"), "--model", str(d / "f.safetensors"), "--request", e.request_id, "--out", str(d / "r.safetensors")]) == 0
    trained, restored = load_file(str(d / "m.safetensors")), load_file(str(d / "r.safetensors"))
    assert all(torch.equal(trained[k], restored[k]) for k in trained)


def test_a_damaged_ids_file_is_an_error_naming_it(store, capsys):
    d = store
    assert _forget(d, "--request-id", "req-1") == 0
    path = d / "s" / "ledger" / "ids" / "req-1.parquet"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["audit", str(d / "s"), "--ids", "req-1"]) == 1
    err = capsys.readouterr().err
    _one_paragraph(err, "audit")
    assert "req-1.parquet" in err and "damaged or edited" in err
    path.unlink()
    assert main(["audit", str(d / "s"), "--ids", "req-1"]) == 1
    assert "missing" in capsys.readouterr().err
    assert Ledger(d / "s").entries()[0].ids_sha256.startswith("sha256:")


def test_progress_bar_only_when_stderr_is_a_terminal(monkeypatch):
    import sys

    assert type(progress_bar(3, True, "x")).__name__ == "_NoBar"  # pytest's captured stderr is no TTY
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress_bar(3, True, "x")
    assert type(bar).__name__ == "tqdm"
    bar.close()
    assert type(progress_bar(3, False, "x")).__name__ == "_NoBar"  # --quiet
