"""Encrypted stores (deltastore.crypto, FORMAT.md §12): round trip, keys, binding, no plaintext, shredding, CLI."""

from __future__ import annotations

import json
import os
import shutil
import struct

import google_crc32c
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deltastore.cli import main as cli_main
from deltastore.crypto import EncryptedStoreIO, StoreKey, open_encrypted, shred_steps
from deltastore.crypto import envelope
from deltastore.crypto.stepkeys import ENTRY, HEADER, SHREDDED, key_object
from deltastore.errors import CorruptStoreError, EncryptionKeyError, StepErasedError
from deltastore.format import model_fingerprint
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader
from deltastore.record import Recorder
from deltastore.storage import LocalStoreIO
from deltastore.verify import verify_store
from unlearning.forget import forget, restore

from .helpers import TinyNet, data, make_optimizer

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
STEPS, S = 10, 4  # shards of 4 steps: two whole, one of 2


def _record(path, key=None, *, value_dtype="float32", flush_at=None, ids=None, **kw):
    """helpers.record's loop, with an optional early flush (a shard then written in two parts)."""
    torch.manual_seed(0)
    model = TinyNet(0)
    opt = make_optimizer("adam", model.parameters())
    x, y = data()
    rec = Recorder(path, model, opt, plan=PruningPlan.layerwise(), value_dtype=value_dtype, steps_per_shard=S,
                   encryption_key=key, **kw)
    for s in range(STEPS):
        idx = torch.arange(s * 8, (s + 1) * 8) % x.shape[0]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        rec.samples(idx if ids is None else [ids(int(i)) for i in idx], epoch=0)
        opt.step()
        if flush_at is not None and s + 1 == flush_at:
            rec.flush()
    rec.close()
    return model


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("crypto")
    out = {}
    for vd in ("float32", "int8"):
        model = _record(base / f"plain-{vd}", value_dtype=vd)
        _record(base / f"enc-{vd}", KEY, value_dtype=vd, flush_at=6)  # a shard written in two flushes
        out[vd] = (base / f"plain-{vd}", base / f"enc-{vd}", {k: v.detach().clone() for k, v in model.state_dict().items()})
    return out


def _raw(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _files(root):
    for dirpath, _, names in os.walk(root):
        for n in names:
            yield os.path.join(dirpath, n)


@pytest.mark.parametrize("vd", ["float32", "int8"])
def test_an_encrypted_store_reads_bit_equal_to_the_plain_one(stores, vd):
    plain, enc, _ = stores[vd]
    a, b = StoreReader(plain), StoreReader(open_encrypted(enc, KEY))
    assert b.manifest.encryption["key_id"] == StoreKey(KEY).key_id and b.manifest.format_version == 2
    steps = list(range(STEPS))
    for g in a.manifest.groups:
        va, ia = a.read_rows(g.id, steps)
        vb, ib = b.read_rows(g.id, steps)
        assert torch.equal(va, vb) and (ia is None) == (ib is None)
    assert a.index.lookup([3, 50])[0].tolist() == b.index.lookup([3, 50])[0].tolist()
    # Every chunk holds one step (r = 1); plain Zarr cannot open the arrays.
    meta = json.loads((enc / "g0000" / "values" / "zarr.json").read_text())
    inner = meta["codecs"][0]["configuration"]
    assert inner["chunk_shape"][0] == 1 and inner["codecs"][-2]["name"] == "deltastore.aes-256-gcm"
    import zarr

    arr = zarr.open_array(str(enc / "g0000" / "values"), mode="r")  # this process knows the marker codec
    with pytest.raises(Exception, match="only by deltastore"):
        arr[0]


def test_forget_restore_verify_on_an_encrypted_store_equal_the_plain_store(stores):
    plain, enc, trained = stores["float32"]
    io = open_encrypted(enc, KEY)
    models = {}
    for name, store in (("plain", plain), ("enc", io)):
        m = TinyNet(0)
        m.load_state_dict(trained)
        forget(m, store, [3, 17, 40], request_id="r1")
        models[name] = model_fingerprint({k: v for k, v in m.state_dict().items() if v.is_floating_point()})
        restore(m, store, "r1")
        assert model_fingerprint({k: v for k, v in m.state_dict().items() if v.is_floating_point()}) == \
            model_fingerprint({k: v for k, v in trained.items() if v.is_floating_point()})
    assert models["plain"] == models["enc"]
    rep = verify_store(io)
    assert rep.ok, rep.problems
    # The ledger's ids file is sealed; its JSON entry (no sample data) is not.
    ids_file = next(p for p in _files(enc / "ledger" / "ids"))
    assert _raw(ids_file)[:6] == envelope.MAGIC


@pytest.mark.parametrize("how", ["missing", "wrong"])
def test_a_missing_or_wrong_key_is_refused_at_open_before_anything_is_decoded(stores, how):
    _, enc, trained = stores["float32"]
    inner = LocalStoreIO(enc)
    store = inner if how == "missing" else EncryptedStoreIO(inner, OTHER)
    with pytest.raises(EncryptionKeyError) as err:
        StoreReader(store)
    need = StoreKey(KEY).key_id
    assert err.value.key_id == need and need in str(err.value)
    # Only the manifest (and at most the commit record) was read.
    assert inner.bytes_read <= inner.size("zarr.json") + inner.size("commit.json")
    m = TinyNet(0)
    m.load_state_dict(trained)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(EncryptionKeyError):
        forget(m, EncryptedStoreIO(LocalStoreIO(enc), OTHER) if how == "wrong" else enc, [3], request_id="x")
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert not verify_store(store).ok
    with pytest.raises(EncryptionKeyError, match="not encrypted"):
        StoreReader(EncryptedStoreIO(LocalStoreIO(stores["float32"][0]), KEY))


def _shard_parts(blob: bytes, nchunks: int):
    index = np.frombuffer(blob[-(16 * nchunks + 4):-4], dtype="<u8").reshape(nchunks, 2).copy()
    return index


def test_a_chunk_moved_to_another_step_or_shard_fails_authentication(stores, tmp_path):
    _, enc, _ = stores["float32"]
    dst = tmp_path / "s"
    shutil.copytree(enc, dst)
    key = dst / "g0003" / "values" / "c" / "0" / "0"  # fc1.weight: one column chunk per step
    blob = bytearray(key.read_bytes())
    reader = StoreReader(open_encrypted(dst, KEY))
    nchunks = reader._decoders[3]["values"].nchunks
    index = _shard_parts(bytes(blob), nchunks)
    index[[0, 1]] = index[[1, 0]]  # step 0's slot points at step 1's chunk and back; crc32c of the index fixed
    raw = index.tobytes()
    blob[-(16 * nchunks + 4):] = raw + struct.pack("<I", google_crc32c.value(raw))
    key.write_bytes(bytes(blob))
    with pytest.raises(CorruptStoreError, match="fails authentication"):
        StoreReader(open_encrypted(dst, KEY)).read_rows(3, [0])
    # A whole shard of steps 0-3 copied over the shard of steps 4-7: every crc32c passes, authentication does not.
    shutil.copy(enc / "g0003" / "values" / "c" / "0" / "0", dst / "g0003" / "values" / "c" / "1" / "0")
    with pytest.raises(CorruptStoreError, match="fails authentication"):
        StoreReader(open_encrypted(dst, KEY)).read_rows(3, [5])
    # The same shard from another store under the same key (replay across stores): another store id.
    other = tmp_path / "other"
    _record(other, KEY)
    shutil.copy(other / "g0003" / "values" / "c" / "0" / "0", dst / "g0003" / "values" / "c" / "0" / "0")
    shutil.copy(other / key_object(0), dst / key_object(0))
    with pytest.raises(CorruptStoreError, match="fails authentication"):
        StoreReader(open_encrypted(dst, KEY)).read_rows(3, [0])


def test_the_key_id_never_reveals_the_key(stores):
    _, enc, _ = stores["float32"]
    kid = StoreKey(KEY).key_id
    assert kid != KEY.hex() and kid not in KEY.hex() and len(kid) == 32
    assert repr(StoreKey(KEY)) == f"StoreKey(key_id={kid!r})"
    for f in _files(enc):
        raw = _raw(f)
        assert KEY not in raw and KEY.hex().encode() not in raw and KEY.hex().upper().encode() not in raw, f


def test_no_value_weight_or_sample_id_is_stored_in_the_clear(tmp_path, monkeypatch):
    """codec "none", float32: the plain store holds the values, trained weights and ids as bytes
    (positive control); the encrypted store holds none of them. Every index part gets a sidecar
    (raw UTF-8 ids) here, so sealed sidecars are read too."""
    import deltastore.record.store as store_mod

    monkeypatch.setattr(store_mod, "STORE_SIDECAR_MIN_ROWS", 1)
    ids = lambda i: f"patient-{i:05d}-secret"  # noqa: E731
    plain, enc = tmp_path / "plain", tmp_path / "enc"
    model = _record(plain, codec="none", ids=ids, sample_id_type="string")
    _record(enc, KEY, codec="none", ids=ids, sample_id_type="string")
    r = StoreReader(plain)
    g = max(r.manifest.groups, key=lambda g: g.k)
    vals, _ = r.read_rows(g.id, list(range(STEPS)))
    needles = [vals[s].numpy().tobytes()[64:96] for s in range(STEPS)]  # 8 values of each step
    needles.append(model.fc1.weight.detach().numpy().tobytes()[:32])  # the trained weights
    id_needles = [ids(i).encode() for i in (0, 17, 79)]  # steps 0-9 saw ids 0-79

    def found(root, needle):
        return any(needle in _raw(f) for f in _files(root))

    assert all(found(plain, n) for n in needles)
    assert all(found(plain, n) for n in id_needles)
    assert any(p.suffix == ".ids" for p in (enc / "index").iterdir())
    assert StoreReader(open_encrypted(enc, KEY)).index.lookup([ids(17)])[0].tolist() == r.index.lookup([ids(17)])[0].tolist()
    assert not any(found(enc, n) for n in needles + id_needles)
    assert not any(found(enc, n[:12]) for n in id_needles)
    # ...and it reads back to the same values.
    vb, _ = StoreReader(open_encrypted(enc, KEY)).read_rows(g.id, list(range(STEPS)))
    assert torch.equal(vals, vb)
    # A forget request leaves no id in the clear either: its ids file is sealed, its ledger entry
    # (plaintext JSON) holds counts, steps and a keyed digest, never ids or a plain hash of them.
    forget(model, open_encrypted(enc, KEY), [ids(17), ids(40)], request_id="req-1")
    assert not any(found(enc, n[:12]) for n in id_needles + [ids(40).encode()])
    entry = json.loads(next((enc / "ledger").glob("*-req-1.json")).read_text())
    assert entry["ids_sha256"].startswith("hmac-sha256:") and not entry.get("unknown_ids")


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=300), name=st.sampled_from(["index/part-x.parquet", "trained/m.safetensors"]),
       bit=st.integers(min_value=0))
def test_an_envelope_round_trips_and_any_flipped_bit_fails(payload, name, bit):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead, kid, sid = AESGCM(KEY), bytes(16), bytes(range(16))
    blob = envelope.seal(aead, kid, sid, name, payload)
    assert len(blob) == len(payload) + envelope.OVERHEAD
    assert envelope.open_sealed(aead, kid, sid, name, blob, name) == payload
    bad = bytearray(blob)
    bad[(bit // 8) % len(bad)] ^= 1 << (bit % 8)
    with pytest.raises((CorruptStoreError, EncryptionKeyError)):
        envelope.open_sealed(aead, kid, sid, name, bytes(bad), name)
    with pytest.raises(CorruptStoreError):  # another name or store: authentication fails
        envelope.open_sealed(aead, kid, sid, name + "2", blob, name)
    with pytest.raises(CorruptStoreError):
        envelope.open_sealed(aead, kid, bytes(16), name, blob, name)


def test_shredded_steps_are_unreadable_and_their_keys_are_gone(stores, tmp_path):
    _, enc, _ = stores["int8"]
    dst = tmp_path / "s"
    shutil.copytree(enc, dst)
    io = open_encrypted(dst, KEY)
    keys = io.step_keys(S)
    deks = {s: keys.dek(s) for s in (4, 5, 6)}
    old_table = io.read(key_object(1))
    assert shred_steps(io, [5]) == [key_object(1)]
    assert shred_steps(io, [5]) == [key_object(1)]  # idempotent
    r = StoreReader(open_encrypted(dst, KEY))
    with pytest.raises(StepErasedError) as err:
        r.read_rows(0, [4, 5])
    assert err.value.steps == [5]
    r.read_rows(0, [4, 6])  # the other steps of the shard still read
    table = io.read(key_object(1))
    assert len(table) == len(old_table) == HEADER.size + ENTRY * S
    entry = HEADER.size + ENTRY * (5 - 4)
    assert table[entry] == SHREDDED and table[entry + 1 : entry + ENTRY] == bytes(ENTRY - 1)
    assert old_table[entry + 1 : entry + ENTRY] != bytes(ENTRY - 1)
    assert table[:entry] == old_table[:entry] and table[entry + ENTRY:] == old_table[entry + ENTRY:]
    # The data key is nowhere in the store, as plaintext of the key object or as raw bytes.
    for f in _files(dst):
        assert deks[5] not in _raw(f)
    assert deks[5] not in table
    # verify reports the erased step instead of failing on it.
    from deltastore.crypto.stepkeys import check_step_keys

    assert check_step_keys(io, STEPS, S) == [5]
    # verify names a shredded step that no purge record covers (the purge's own records are its business).
    rep = verify_store(open_encrypted(dst, KEY))
    assert not rep.ok and {p.step for p in rep.problems} == {5} and all("no purge record" in p.message for p in rep.problems)


def test_the_cli_takes_the_key_from_a_file_or_the_environment(stores, tmp_path, capsys, monkeypatch):
    _, enc, trained = stores["float32"]
    kf = tmp_path / "store.key"
    kf.write_text(KEY.hex() + "\n")
    wrong = tmp_path / "wrong.key"
    assert cli_main(["keygen", str(wrong)]) == 0
    assert oct(wrong.stat().st_mode & 0o777) == "0o600" and len(wrong.read_text().strip()) == 64
    assert cli_main(["keygen", str(wrong)]) == 1  # never overwritten
    capsys.readouterr()
    assert cli_main(["info", str(enc)]) == 1
    assert StoreKey(KEY).key_id in capsys.readouterr().err
    assert cli_main(["info", str(enc), "--key-file", str(wrong)]) == 1
    assert "wrong key" in capsys.readouterr().err
    assert cli_main(["info", str(enc), "--key-file", str(kf)]) == 0
    assert cli_main(["--key-file", str(kf), "verify", str(enc), "--quiet"]) == 0
    monkeypatch.setenv("DELTASTORE_KEY_FILE", str(kf))
    assert cli_main(["audit", str(enc)]) == 0
    ids = tmp_path / "ids.txt"
    ids.write_text("3\n17\n")
    assert cli_main(["lookup", str(enc), "--samples", str(ids)]) == 0
    monkeypatch.delenv("DELTASTORE_KEY_FILE")
    monkeypatch.setenv("DELTASTORE_KEY", KEY.hex())
    from safetensors.torch import save_file

    model = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in trained.items() if v.is_floating_point()}, str(model))
    out, out2 = tmp_path / "out.safetensors", tmp_path / "out2.safetensors"
    capsys.readouterr()
    assert cli_main(["forget", str(enc), "--model", str(model), "--out", str(out), "--samples", str(ids),
                     "--request-id", "cli1", "--quiet"]) == 0, capsys.readouterr().err
    assert cli_main(["restore", str(enc), "--model", str(out), "--out", str(out2), "--request", "cli1", "--quiet"]) == 0, \
        capsys.readouterr().err
    # A key in the environment is not used for a plain store; one given with --key-file is an error there.
    assert cli_main(["info", str(stores["float32"][0])]) == 0
    capsys.readouterr()
    assert cli_main(["info", str(stores["float32"][0]), "--key-file", str(kf)]) == 1
    assert "not encrypted" in capsys.readouterr().err


def test_checkpoints_of_an_encrypted_store_are_sealed_and_a_plain_seam_is_refused(stores, tmp_path):
    from unlearning.methods.checkpoints import Checkpointer, load_checkpoint

    _, enc, _ = stores["float32"]
    dst = tmp_path / "s"
    shutil.copytree(enc, dst)
    model = TinyNet(0)
    opt = make_optimizer("adam", model.parameters())
    with pytest.raises(EncryptionKeyError):
        Checkpointer(dst, model, opt, every=1).save(0)
    assert not (dst / "checkpoints").exists()
    io = open_encrypted(dst, KEY)
    Checkpointer(io, model, opt, every=1).save(0)
    assert all(_raw(f)[:6] == envelope.MAGIC for f in _files(dst / "checkpoints"))
    ck = load_checkpoint(io, 0)
    assert torch.equal(ck.model["fc1.weight"], model.fc1.weight.detach())


def test_the_key_id_is_hkdf_sha256_as_the_format_says():
    """FORMAT.md §12.1, recomputed with hmac alone (RFC 5869, no salt = 32 zero bytes, one output block)."""
    import hashlib
    import hmac

    def key_id(key: bytes) -> str:
        prk = hmac.new(bytes(32), key, hashlib.sha256).digest()
        return hmac.new(prk, b"deltastore key id v1" + b"\x01", hashlib.sha256).digest()[:16].hex()

    assert StoreKey(bytes(range(32))).key_id == key_id(bytes(range(32))) == "8831a6440b49a3d0ed50d2a1645fec04"
    assert StoreKey(bytes(32)).key_id == "9fa9e139af5148abe8543d32b323232a"


def test_the_encryption_benchmarks_run_and_report_both_stores():
    """Smoke test of `python -m benchmarks overhead|latency --encrypt` on tiny sizes (the figures are RESULTS.md's)."""
    from benchmarks import crypto as bench_crypto
    from benchmarks import overhead
    from benchmarks.latency import Config

    row = overhead.run(quick=True, encrypt=True, models={"mlp": {"batch": 64, "shape": None, "steps": 3, "rounds": 1}})["rows"][0]
    assert row["store_bytes_encrypted"] > row["store_bytes_recorded"] > 0 and row["steps_per_s_encrypted"] > 0
    assert row["recording_ns_per_param_step_encrypted"] > 0
    res = bench_crypto.run(quick=True, repeats=1, configs=(Config("mlp-digits", "mlp", "digits", epochs=1, batch=256),))
    assert {r["request"] for r in res["rows"]} == {"one sample", "one class"}
    assert all(r["forget_s_encrypted"] > 0 and r["store_bytes_encrypted"] > 0 for r in res["rows"])
    assert {c["object"] for c in res["cipher"]} == {"chunk", "envelope"}
