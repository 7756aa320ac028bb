"""purge on an encrypted store: crypto-shredding instead of rewriting (FORMAT.md §5.2, §12.4).

Every step has its own data key, so a purge destroys the erased steps' keys and rewrites no
shard: their chunks can never be decrypted again, in the store or in any copy of its shards.
The model, the index and the ledger change exactly as on a plain store (same bits), and a
failed write at any point of the purge leaves the store before or after it, verifying.
"""

from __future__ import annotations

import os
import shutil

import pytest

from deltastore.crypto import open_encrypted
from deltastore.crypto.stepkeys import check_step_keys
from deltastore.errors import DeltaStoreError, LedgerError, StepErasedError
from deltastore.format import model_fingerprint, read_commit
from deltastore.read import StoreReader
from deltastore.verify import verify_store
from unlearning.forget import forget, purge, restore

from .helpers import FailingLocalWrites, record

KEY = bytes(range(32))
S = 5  # steps per shard: steps 0, 1 (P) share a shard with 2, 3, 4


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same training recorded plain and encrypted, with P (steps 0, 1) and Q (steps 1, 2) forgotten."""
    base = tmp_path_factory.mktemp("penc")
    out = {}
    for name, key in (("plain", None), ("enc", KEY)):
        path = base / name
        model, _, _ = record(path, steps=12, steps_per_shard=S, encryption_key=key)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        store = path if key is None else open_encrypted(path, KEY)
        forget(state, store, [0, 1, 9], request_id="P")
        forget(state, store, [10, 20], request_id="Q")
        out[name] = (path, state)
    return out


def _copy(src, dst, state):
    shutil.copytree(src, dst)
    return dst, {k: v.clone() for k, v in state.items()}


def _fp(state) -> str:
    return model_fingerprint({k: v for k, v in state.items() if v.is_floating_point()})


def _files(root):
    for dirpath, _, names in os.walk(root):
        for n in names:
            yield os.path.join(dirpath, n)


def test_an_encrypted_purge_shreds_the_keys_rewrites_no_shard_and_gives_the_plain_bits(stores, tmp_path):
    plain, pstate = _copy(*stores["plain"][:1], tmp_path / "plain", stores["plain"][1])
    enc, estate = _copy(*stores["enc"][:1], tmp_path / "enc", stores["enc"][1])
    io = open_encrypted(enc, KEY)
    keys = io.step_keys(S)
    deks = {s: keys.dek(s) for s in (0, 1, 2)}
    shards_before = {f: os.path.getmtime(f) for f in _files(enc) if "/c/" in f}
    p = purge(plain, "P", pstate, purge_id="T")
    e = purge(open_encrypted(enc, KEY), "P", estate, purge_id="T")
    # Same model, same base, same tombstone steps as the plain store.
    assert _fp(pstate) == _fp(estate) and e.receipt.erased_steps == p.receipt.erased_steps == [0, 1]
    assert e.receipt.fingerprint_after == p.receipt.fingerprint_after
    # No shard was rewritten: only the key object of shard 0 (a few hundred bytes).
    assert {f: os.path.getmtime(f) for f in _files(enc) if "/c/" in f} == shards_before
    assert 0 < e.bytes_rewritten < 1024 < p.bytes_rewritten
    reader = StoreReader(open_encrypted(enc, KEY))
    with pytest.raises(StepErasedError):
        reader.read_rows(0, [0])
    reader.read_rows(0, [2, 3])  # the shard's other steps still read
    assert check_step_keys(reader.io, reader.committed_steps, S) == [0, 1]
    for f in _files(enc):  # the erased steps' data keys are nowhere; a kept step's key is wrapped, never plain
        with open(f, "rb") as fh:
            data = fh.read()
        assert deks[0] not in data and deks[1] not in data and deks[2] not in data
    rep = verify_store(open_encrypted(enc, KEY))
    assert rep.ok and rep.erased_steps == 2 and rep.notes == [], rep.problems
    steps, unknown = reader.index.lookup([0, 1, 9])
    assert len(steps) == 0 and sorted(unknown) == [0, 1, 9]
    with pytest.raises(LedgerError, match="purged for good"):
        restore(estate, open_encrypted(enc, KEY), "P")
    # Q shared step 1: its restore gives back only step 2, as on the plain store.
    restore(pstate, plain, "Q")
    restore(estate, open_encrypted(enc, KEY), "Q")
    assert _fp(pstate) == _fp(estate)


def test_verify_names_a_purged_step_whose_key_came_back(stores, tmp_path):
    enc, state = _copy(*stores["enc"][:1], tmp_path / "enc", stores["enc"][1])
    saved = {p.name: p.read_bytes() for p in (enc / "keys").iterdir()}
    purge(open_encrypted(enc, KEY), "P", state)
    for name, data in saved.items():  # an old copy of the key objects restored (a backup)
        (enc / "keys" / name).write_bytes(data)
    rep = verify_store(open_encrypted(enc, KEY))
    assert not rep.ok and {p.step for p in rep.problems} == {0, 1}, rep.problems
    assert all("data key is still present" in p.message for p in rep.problems)


_FailingWrite = FailingLocalWrites


def test_a_failed_write_at_every_point_of_an_encrypted_purge_leaves_before_or_after(stores, tmp_path, monkeypatch):
    src, state0 = stores["enc"]
    ref, ref_state = _copy(src, tmp_path / "ref", state0)
    with monkeypatch.context() as m:
        seam = _FailingWrite(m, None)
        purge(open_encrypted(ref, KEY), "P", ref_state)
    ops = seam.ops
    assert any(o.startswith("writer keys/") for o in ops) and not any("/c/" in o for o in ops)
    seen = set()
    for i in range(len(ops)):
        path, state = _copy(src, tmp_path / f"c{i}", state0)
        with monkeypatch.context() as m:
            _FailingWrite(m, i)
            with pytest.raises((OSError, DeltaStoreError)):
                purge(open_encrypted(path, KEY), "P", state)
        rep = verify_store(open_encrypted(path, KEY))
        assert rep.ok, (ops[i], rep.problems)
        after = any(e["request"] == "P" for e in read_commit(open_encrypted(path, KEY)).get("erased") or [])
        seen.add(after)
        purge(open_encrypted(path, KEY), "P", state)  # completes it (after) or runs it whole (before)
        assert _fp(state) == _fp(ref_state), ops[i]
        r = StoreReader(open_encrypted(path, KEY))
        assert check_step_keys(r.io, r.committed_steps, S) == [0, 1], ops[i]
        assert verify_store(open_encrypted(path, KEY)).ok
        shutil.rmtree(path)
    assert seen == {False, True}
