"""Bad inputs to the CLI: every one is exit status 1, one paragraph on stderr, no traceback,
and the store, the input model and --out are as they were (issue 9, "sound under faults").

Each bad file is built by hand (one test per variant), then hypothesis throws random id
files and model files at ``deltastore forget``. No pickle: the .pt files with code are
raw opcode bytes that ``torch.load(weights_only=True)`` must refuse.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import tempfile
import uuid
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

import unlearning.cli_commands as cli_commands
import unlearning.cli_files as cli_files
from deltastore.cli import main
from tests.helpers import record
from unlearning.forget import audit


# ---- helpers ---------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of a tree, by relative path: 'unchanged' means byte for byte."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def assert_one_paragraph(err: str, command: str) -> None:
    assert "Traceback" not in err, err
    assert err.startswith(f"deltastore {command}: error: "), err
    assert err.count("\n") == 1 and err.endswith("\n"), err


@dataclass
class Env:
    root: Path
    store: Path
    model: Path
    weights: dict
    pristine: dict

    def out(self, suffix: str = ".safetensors") -> Path:
        return self.root / f"out-{uuid.uuid4().hex}{suffix}"

    def forget(self, *, model=None, samples=None, out=None, store=None, extra=()) -> list:
        return ["forget", store or self.store, "--model", model or self.model, "--samples", samples or self.root / "ids.txt",
                "--out", out or self.out(), *extra]

    def fails(self, argv, *expected: str, model: Path | None = None) -> str:
        """Run ``argv``: exit 1, one paragraph naming ``expected``, nothing changed, no --out."""
        model = model or self.model
        model_bytes = model.read_bytes() if model.is_file() else None
        out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
        out_before = out.read_bytes() if out is not None and out.is_file() else None
        rc, _, err = run(argv)
        assert rc == 1, err
        assert_one_paragraph(err, argv[0])
        for e in expected:
            assert e in err, (e, err)
        assert snapshot(self.store) == self.pristine
        if model_bytes is not None:
            assert model.read_bytes() == model_bytes
        if out is not None:
            assert (out.read_bytes() if out.is_file() else None) == out_before
            if out.parent.is_dir():
                assert not list(out.parent.glob(f".{out.name}.*.partial"))
        return err


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("cli_inputs")
    model, _, _ = record(root / "store", steps=4)
    weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(root / "model.safetensors"))
    (root / "ids.txt").write_text("0\n9\n")
    return Env(root, root / "store", root / "model.safetensors", weights, snapshot(root / "store"))


def npy_bytes(descr: str, shape: tuple, body: bytes, version: bytes = b"\x01\x00") -> bytes:
    """A .npy file built by hand (its header is a Python dict literal; nothing is pickled)."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin1")
    pad = (64 - (10 + len(header) + 1) % 64) % 64
    header += b" " * pad + b"\n"
    return b"\x93NUMPY" + version + struct.pack("<H", len(header)) + header + body


def npy_of(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def safetensors_bytes(header: dict, data: bytes, declared: int | None = None) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h) if declared is None else declared) + h + data


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def torch_zip(pkl: bytes) -> bytes:
    """A torch zip archive whose data.pkl is the given raw opcode bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


# A call to os.getcwd in raw pickle opcodes (GLOBAL, EMPTY_TUPLE, REDUCE, STOP): harmless even if
# something did run it, and weights_only=True must refuse it.
CODE_PICKLE = b"cos\ngetcwd\n)R."


# ---- id files -----------------------------------------------------------------------------------
ID_FILES = {
    "text-not-utf8": ("ids.txt", b"0\n\xff\xfe1\n", ["UTF-8", "line 2"]),
    "text-not-integer": ("ids.txt", b"0\nabc\n", ["line 2", "'abc'"]),
    "text-float": ("ids.txt", b"1.5\n", ["line 1", "'1.5'"]),
    "text-unicode-digits": ("ids.txt", "\u0661\u0662\n".encode(), ["line 1"]),
    "text-outside-int64": ("ids.txt", b"9223372036854775808\n", ["int64", "line 1"]),
    "text-5000-digits": ("ids.txt", b"9" * 5000 + b"\n", ["int64", "(5000 digits)"]),
    "text-empty": ("ids.txt", b"", ["holds none"]),
    "text-blank-lines": ("ids.txt", b"\n \n\t\n", ["holds none"]),
    "json-not-json": ("ids.json", b"{not json", ["not JSON", "line 1"]),
    "json-not-utf8": ("ids.json", b"[1, \xc3\x28]", ["UTF-8"]),
    "json-object": ("ids.json", b'{"ids": [1]}', ["JSON list", "object"]),
    "json-scalar": ("ids.json", b"7", ["JSON list", "integer"]),
    "json-float": ("ids.json", b"[1, 2.5]", ["element 1", "number"]),
    "json-bool": ("ids.json", b"[true]", ["element 0", "true"]),
    "json-null": ("ids.json", b"[0, null]", ["element 1", "null"]),
    "json-string-in-int-store": ("ids.json", b'["0"]', ["element 0", "string"]),
    "json-nested-list": ("ids.json", b"[[0]]", ["element 0", "list"]),
    "json-huge-int": ("ids.json", b"[100000000000000000000000000000]", ["element 0", "int64"]),
    "json-5000-digits": ("ids.json", b"[" + b"9" * 5000 + b"]", ["int64", "thousands of digits"]),
    "json-nan": ("ids.json", b"[NaN]", ["element 0", "number"]),
    "json-deeply-nested": ("ids.json", b"[" * 100_000, ["ids.json"]),
    "json-empty-list": ("ids.json", b"[]", ["holds none"]),
    "npy-object-dtype": ("ids.npy", npy_bytes("|O", (2,), b"\x00" * 16), ["dtype object"]),
    "npy-float64": ("ids.npy", npy_of(np.array([0.0, 9.0])), ["dtype float64"]),
    "npy-bool": ("ids.npy", npy_of(np.array([True, False])), ["dtype bool"]),
    "npy-unicode-in-int-store": ("ids.npy", npy_of(np.array(["0", "9"])), ["dtype <U1"]),
    "npy-2d": ("ids.npy", npy_of(np.zeros((2, 2), dtype=np.int64)), ["shape (2, 2)"]),
    "npy-truncated-data": ("ids.npy", npy_bytes("<i8", (10,), b"\x00" * 24), ["80 bytes", "got 24"]),
    "npy-lying-shape": ("ids.npy", npy_bytes("<i8", (10**12,), b"\x00" * 8), ["got 8"]),
    "npy-bad-magic": ("ids.npy", b"not an npy file at all", ["not a readable .npy"]),
    "npy-bad-header": ("ids.npy", b"\x93NUMPY\x01\x00\x0a\x00{'descr':\n", ["not a readable .npy"]),
    "npy-version-3": ("ids.npy", npy_bytes("<i8", (1,), b"\x00" * 8, version=b"\x03\x00"), ["version 3.0"]),
    "npy-uint64-outside-int64": ("ids.npy", npy_of(np.array([2**63], dtype=np.uint64)), ["int64"]),
    "npy-empty": ("ids.npy", npy_of(np.array([], dtype=np.int64)), ["holds none"]),
    "npy-zip-archive": ("ids.npy", b"PK\x03\x04" + b"\x00" * 30, ["not a readable .npy"]),
}


@pytest.mark.parametrize("case", sorted(ID_FILES))
def test_bad_id_file(env, tmp_path, case):
    name, data, expected = ID_FILES[case]
    path = tmp_path / name
    path.write_bytes(data)
    env.fails(env.forget(samples=path), "--samples", *expected)


def test_id_file_that_is_a_directory(env, tmp_path):
    env.fails(env.forget(samples=tmp_path), "--samples", "is a directory")


def test_id_file_that_does_not_exist(env, tmp_path):
    env.fails(env.forget(samples=tmp_path / "none.txt"), "--samples", "does not exist")


def test_id_file_that_is_a_device(env):
    env.fails(env.forget(samples="/dev/zero"), "--samples", "not a regular file")


def test_id_file_over_one_gib_is_refused_unread(env, tmp_path):
    path = tmp_path / "big.txt"
    with open(path, "wb") as f:
        f.truncate(cli_commands.MAX_ID_FILE_BYTES + 1)  # sparse: nothing is written or read
    env.fails(env.forget(samples=path), "--samples", "at most 1,073,741,824 bytes")


def test_unknown_ids_are_an_error_naming_them(env, tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("0\n123456\n")
    env.fails(env.forget(samples=path), "123456")


# ---- model files -------------------------------------------------------------------------------
def _valid_safetensors(env) -> bytes:
    return env.model.read_bytes()


MODEL_FILES = {
    "safetensors-empty": ("m.safetensors", lambda e: b"", ["is empty"]),
    "safetensors-truncated": ("m.safetensors", lambda e: _valid_safetensors(e)[: len(_valid_safetensors(e)) // 2], ["safetensors"]),
    "safetensors-header-only-length": ("m.safetensors", lambda e: b"\x10\x00\x00", ["safetensors"]),
    "safetensors-header-too-large": ("m.safetensors", lambda e: safetensors_bytes({}, b"", declared=2**40), ["safetensors"]),
    "safetensors-header-not-json": ("m.safetensors", lambda e: struct.pack("<Q", 5) + b"{abc}", ["safetensors"]),
    "safetensors-lying-offsets": ("m.safetensors", lambda e: safetensors_bytes(
        {"fc2.bias": {"dtype": "F32", "shape": [3], "data_offsets": [0, 400]}}, b"\x00" * 12), ["safetensors"]),
    "safetensors-lying-shape": ("m.safetensors", lambda e: safetensors_bytes(
        {"fc2.bias": {"dtype": "F32", "shape": [30], "data_offsets": [0, 12]}}, b"\x00" * 12), ["safetensors"]),
    "safetensors-hole": ("m.safetensors", lambda e: safetensors_bytes(
        {"fc2.bias": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\x00" * 12), ["safetensors"]),
    "safetensors-unknown-dtype": ("m.safetensors", lambda e: safetensors_bytes(
        {"fc2.bias": {"dtype": "Q7", "shape": [3], "data_offsets": [0, 12]}}, b"\x00" * 12), ["safetensors"]),
    "safetensors-no-tensors": ("m.safetensors", lambda e: safetensors_bytes({}, b""), ["holds no tensors"]),
    "safetensors-junk": ("m.safetensors", lambda e: b"\x00" * 64, ["safetensors"]),
    "pt-empty": ("m.pt", lambda e: b"", ["is empty"]),
    "pt-junk": ("m.pt", lambda e: b"junkjunkjunk", ["could not be read", "damaged"]),
    "pt-code-raw-pickle": ("m.pt", lambda e: CODE_PICKLE, ["weights_only=True", "getcwd"]),
    "pt-code-in-zip": ("m.pt", lambda e: torch_zip(CODE_PICKLE), ["weights_only=True", "getcwd"]),
    "pt-zip-without-pickle": ("m.pt", lambda e: torch_zip(b""), ["could not be read", "ends too early"]),
    "pt-truncated": ("m.pt", lambda e: torch_bytes(e.weights)[:300], ["could not be read", "RuntimeError"]),
    "pt-list-value": ("m.pt", lambda e: torch_bytes({"w": [1, 2]}), ["key 'w' holds a list"]),
    "pt-a-tensor": ("m.pt", lambda e: torch_bytes(torch.ones(3)), ["got a Tensor"]),
    "pt-a-list": ("m.pt", lambda e: torch_bytes([torch.ones(3)]), ["got a list"]),
    "pt-nested-checkpoint": ("m.pt", lambda e: torch_bytes({"state_dict": e.weights}), ["key 'state_dict' holds a dict", "nested"]),
    "pt-int-keys": ("m.pt", lambda e: torch_bytes({0: torch.ones(2)}), ["int key 0"]),
    "pt-sparse-tensor": ("m.pt", lambda e: torch_bytes({**e.weights, "fc2.bias": torch.eye(3)[0].to_sparse()}), ["'fc2.bias'", "dense"]),
    "wrong-dtype": ("m.safetensors", None, ["fc1.weight", "floating-point", "torch.int32"]),
    "wrong-shape": ("m.safetensors", None, ["fc1.weight", "expected shape [24, 96], got [96, 24]"]),
    "missing-tensor": ("m.safetensors", None, ["fc2.bias is missing", "expected float32 of shape [3]"]),
    "unknown-suffix": ("m.txt", lambda e: _valid_safetensors(e), ["ending .safetensors"]),
}


def _model_variant(env, case: str) -> bytes:
    name, build, _ = MODEL_FILES[case]
    if build is not None:
        return build(env)
    w = dict(env.weights)
    if case == "wrong-dtype":
        w["fc1.weight"] = w["fc1.weight"].to(torch.int32)
    elif case == "wrong-shape":
        w["fc1.weight"] = w["fc1.weight"].t().contiguous()
    else:
        del w["fc2.bias"]
    buf = tempfile.NamedTemporaryFile(suffix=".safetensors", delete=False)
    buf.close()
    try:
        save_file(w, buf.name)
        return Path(buf.name).read_bytes()
    finally:
        os.unlink(buf.name)


@pytest.mark.parametrize("case", sorted(MODEL_FILES))
def test_bad_model_file(env, tmp_path, case):
    name, _, expected = MODEL_FILES[case]
    path = tmp_path / name
    path.write_bytes(_model_variant(env, case))
    env.fails(env.forget(model=path), "--model", *expected, model=path)


def test_model_that_is_a_directory(env, tmp_path):
    env.fails(env.forget(model=tmp_path), "--model", "is a directory")


def test_model_that_does_not_exist(env, tmp_path):
    env.fails(env.forget(model=tmp_path / "none.safetensors"), "--model", "does not exist")


def test_model_that_is_a_device(env):
    env.fails(env.forget(model="/dev/null"), "--model", "not a regular file")


# ---- output paths and flags --------------------------------------------------------------------
def test_out_that_exists_is_left_alone(env, tmp_path):
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"precious")
    env.fails(env.forget(out=out), "--out", "already exists")
    assert out.read_bytes() == b"precious"


def test_out_in_a_missing_directory(env, tmp_path):
    env.fails(env.forget(out=tmp_path / "no" / "o.safetensors"), "--out", "does not exist")


def test_out_under_a_file(env, tmp_path):
    (tmp_path / "f").write_text("x")
    env.fails(env.forget(out=tmp_path / "f" / "o.safetensors"), "--out", "not a directory")


def test_out_that_is_a_directory(env, tmp_path):
    (tmp_path / "d.safetensors").mkdir()
    env.fails(env.forget(out=tmp_path / "d.safetensors"), "--out", "is a directory")


def test_out_with_an_unknown_suffix(env, tmp_path):
    env.fails(env.forget(out=tmp_path / "o.txt"), "--out", "ending .safetensors")


def test_receipt_that_exists(env, tmp_path):
    (tmp_path / "r.json").write_text("{}")
    env.fails(env.forget(extra=["--receipt", tmp_path / "r.json"]), "--receipt", "already exists")
    assert (tmp_path / "r.json").read_text() == "{}"


def test_receipt_in_a_missing_directory(env, tmp_path):
    env.fails(env.forget(extra=["--receipt", tmp_path / "no" / "r.json"]), "--receipt", "does not exist")


def test_receipt_same_as_out(env, tmp_path):
    out = tmp_path / "o.safetensors"
    env.fails(env.forget(out=out, extra=["--receipt", out]), "--receipt", "other than --out")


def test_bad_request_id(env):
    env.fails(env.forget(extra=["--request-id", "a/b"]), "request id", "'a/b'")


def test_bad_device(env):
    env.fails(env.forget(extra=["--device", "tpu"]), "device", "'tpu'")


def test_restore_of_an_unknown_request(env, tmp_path):
    env.fails(["restore", env.store, "--model", env.model, "--request", "nope", "--out", tmp_path / "o.safetensors"], "'nope'")


# ---- store states --------------------------------------------------------------------------------
def test_store_missing(env, tmp_path):
    env.fails(env.forget(store=tmp_path / "none"), "expected a deltastore store")


def test_store_is_a_file(env, tmp_path):
    (tmp_path / "f").write_text("x")
    for argv in (env.forget(store=tmp_path / "f"), ["info", tmp_path / "f"], ["verify", tmp_path / "f", "--quiet"]):
        env.fails(argv, "is a file")


def test_store_is_an_empty_directory(env, tmp_path):
    env.fails(env.forget(store=tmp_path), "expected a deltastore store")


def test_store_with_junk_metadata(env, tmp_path):
    (tmp_path / "zarr.json").write_text("{bad")
    for argv in (env.forget(store=tmp_path), ["info", tmp_path]):
        env.fails(argv, "zarr.json")


def _copy_store(env, dest: Path) -> Path:
    shutil.copytree(env.store, dest)
    return dest


def test_read_only_store(env, tmp_path, monkeypatch):
    # Tests run as root, where chmod stops nothing: the store's lock refuses as a read-only ledger/ would.
    from deltastore.storage.local import LocalStoreIO

    def refuse(self, key, timeout):
        raise PermissionError(13, "Permission denied", str(self.path(key)))

    monkeypatch.setattr(LocalStoreIO, "lock", refuse)
    store = _copy_store(env, tmp_path / "s")
    out = tmp_path / "o.safetensors"
    rc, _, err = run(env.forget(store=store, out=out))
    assert rc == 1
    assert_one_paragraph(err, "forget")
    assert "Permission denied" in err and "ledger" in err
    assert not out.exists() and snapshot(store) == env.pristine


def test_failing_out_write_leaves_no_ledger_entry_and_no_file(env, tmp_path, monkeypatch):
    def full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli_files.os, "replace", full)
    store = _copy_store(env, tmp_path / "s")
    out = tmp_path / "o.safetensors"
    rc, _, err = run(env.forget(store=store, out=out))
    monkeypatch.undo()
    assert rc == 1
    assert_one_paragraph(err, "forget")
    assert "--out" in err and "No space left on device" in err
    assert audit(store) == []
    assert not out.exists() and not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".o.safetensors.*"))
    assert run(["verify", store, "--quiet"])[0] == 0


def test_failing_ledger_entry_takes_out_back(env, tmp_path, monkeypatch):
    from unlearning.ledger import Ledger

    def broken(self, receipt):
        raise OSError(5, "Input/output error", self.dir)

    monkeypatch.setattr(Ledger, "append", broken)
    store = _copy_store(env, tmp_path / "s")
    out = tmp_path / "o.safetensors"
    rc, _, err = run(env.forget(store=store, out=out))
    monkeypatch.undo()
    assert rc == 1
    assert_one_paragraph(err, "forget")
    assert "Input/output error" in err
    assert audit(store) == [] and not out.exists()


def test_failing_restore_out_write_changes_nothing(env, tmp_path, monkeypatch):
    store = _copy_store(env, tmp_path / "s")
    forgotten = tmp_path / "f.safetensors"
    assert run(env.forget(store=store, out=forgotten, extra=["--request-id", "r1"]))[0] == 0
    before = snapshot(store)
    monkeypatch.setattr(cli_files.os, "replace", lambda s, d: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    out = tmp_path / "back.safetensors"
    rc, _, err = run(["restore", store, "--model", forgotten, "--request", "r1", "--out", out])
    monkeypatch.undo()
    assert rc == 1
    assert_one_paragraph(err, "restore")
    assert [e.kind for e in audit(store)] == ["forget"] and not out.exists()
    assert {k: v for k, v in snapshot(store).items() if not k.endswith(".lock")} == {k: v for k, v in before.items() if not k.endswith(".lock")}


def test_request_id_already_used_is_refused_before_any_work(env, tmp_path):
    store = _copy_store(env, tmp_path / "s")
    assert run(env.forget(store=store, out=tmp_path / "f1.safetensors", extra=["--request-id", "r1"]))[0] == 0
    before = snapshot(store)
    out = tmp_path / "f2.safetensors"
    rc, _, err = run(env.forget(store=store, out=out, extra=["--request-id", "r1", "--force", "testing a reused id"]))
    assert rc == 1
    assert_one_paragraph(err, "forget")
    assert "'r1'" in err and "already in the ledger" in err
    assert snapshot(store) == before and not out.exists()


# ---- hypothesis: random id files and model files ----------------------------------------------
def _random_id_case(env, name: str, data: bytes) -> None:
    """Random ids may be valid: exit 0 with a file at --out and one ledger entry, or exit 1 with
    nothing changed; never anything else."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = _copy_store(env, tmp / "s")
        ids = tmp / name
        ids.write_bytes(data)
        out = tmp / "o.safetensors"
        model_bytes = env.model.read_bytes()
        rc, _, err = run(env.forget(store=store, samples=ids, out=out))
        assert env.model.read_bytes() == model_bytes
        if rc == 0:
            assert out.is_file() and len(audit(store)) == 1
            return
        assert rc == 1, err
        assert_one_paragraph(err, "forget")
        assert not out.exists() and snapshot(store) == env.pristine


@given(data=st.binary(max_size=200), suffix=st.sampled_from([".txt", ".json", ".npy", ""]))
def test_random_bytes_as_id_file(env, data, suffix):
    _random_id_case(env, f"ids{suffix}", data)


@given(data=st.one_of(st.binary(max_size=120), st.builds(lambda b: b"\x93NUMPY" + b, st.binary(max_size=120)),
                      st.builds(lambda d, s, b: npy_bytes(d, s, b), st.sampled_from(["<i8", "<u2", "|b1", "<f4", "|O", "<U3", ">i4", "V8"]),
                                st.tuples(st.integers(-3, 2**40)) | st.tuples() | st.tuples(st.integers(0, 3), st.integers(0, 3)),
                                st.binary(max_size=64))))
def test_random_npy_files(env, data):
    _random_id_case(env, "ids.npy", data)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=3), c, max_size=3), max_leaves=12)


@given(value=_json)
def test_random_json_id_files(env, value):
    _random_id_case(env, "ids.json", json.dumps(value).encode())


@given(text=st.text(max_size=60))
def test_random_text_id_files(env, text):
    _random_id_case(env, "ids.txt", text.encode("utf-8", "surrogatepass"))


def _model_case(env, name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        env.fails(env.forget(model=path, out=Path(tmp) / "o.safetensors"), "--model", model=path)


@given(data=st.binary(max_size=300), suffix=st.sampled_from([".safetensors", ".pt"]))
def test_random_bytes_as_model(env, data, suffix):
    _model_case(env, f"m{suffix}", data)


@st.composite
def lying_safetensors(draw) -> bytes:
    header = {}
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(["fc2.bias", "fc1.weight", "bn.num_batches_tracked", "x", ""]))
        header[name] = {
            "dtype": draw(st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "Z9"])),
            "shape": draw(st.lists(st.integers(-1, 2**33), max_size=3)),
            "data_offsets": [draw(st.integers(-1, 80)), draw(st.integers(-1, 2**33))],
        }
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=3), st.text(max_size=3) | st.integers(), max_size=2))
    h = json.dumps(header).encode()
    declared = draw(st.one_of(st.just(len(h)), st.integers(0, 2**64 - 1)))
    return struct.pack("<Q", declared) + h + draw(st.binary(max_size=80))


@given(data=lying_safetensors())
def test_safetensors_headers_that_lie(env, data):
    _model_case(env, "m.safetensors", data)


@given(cut=st.integers(0, 10_000), flip=st.integers(0, 10_000))
def test_damaged_torch_files(env, cut, flip):
    raw = bytearray(torch_bytes({"fc2.bias": env.weights["fc2.bias"]}))
    raw[flip % len(raw)] ^= 0xA5
    _model_case(env, "m.pt", bytes(raw[: max(1, cut % len(raw))]))
