"""Faults during a purge (FORMAT.md §5.2): a failed write at every write point, a real SIGKILL,
damage to the tombstone and the new base, a second writer.

Every failure leaves the store before the purge (no purge record, restore of the request
still possible) or after its commit point (restore refused); the store verifies either
way; running purge again completes it, with the same bits as an uninterrupted purge.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from deltastore.errors import CorruptStoreError, DeltaStoreError, LedgerError, StoreLockedError
from deltastore.format import model_fingerprint, read_commit
from deltastore.format.trained import read_trained
from deltastore.read import StoreReader
from deltastore.record import Recorder
from deltastore.storage import open_io
from deltastore.verify import verify_store
from tests.helpers import FailingLocalWrites, make_optimizer, record
from unlearning.forget import forget, purge, restore



@pytest.fixture(scope="module")
def forgotten(tmp_path_factory):
    """A store with two live requests sharing a step: P (to purge) and Q."""
    path = tmp_path_factory.mktemp("fp") / "s"
    model, _, _ = record(path, steps=12, steps_per_shard=5)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    forget(state, path, [0, 1, 9, 41], request_id="P")  # steps 0, 1, 5
    forget(state, path, [10, 20], request_id="Q")  # steps 1, 2
    return path, state


def _copy(forgotten, dst):
    src, state = forgotten
    shutil.copytree(src, dst)
    return dst, {k: v.clone() for k, v in state.items()}


def _fp(state) -> str:
    return model_fingerprint({k: v for k, v in state.items() if v.is_floating_point()})


_Seam = FailingLocalWrites


@pytest.fixture(scope="module")
def reference(forgotten, tmp_path_factory):
    """An uninterrupted purge: its write points, new base and final model."""
    mp = pytest.MonkeyPatch()
    try:
        path, state = _copy(forgotten, tmp_path_factory.mktemp("ref") / "s")
        seam = _Seam(mp)
        purge(path, "P", state)
    finally:
        mp.undo()
    r = StoreReader(path)
    return seam.ops, _fp(state), _fp(read_trained(r.io, r.commit, r.manifest)), path


def _check_done(path, state, ref_fp, ref_base):
    assert _fp(state) == ref_fp
    r = StoreReader(path)
    assert _fp(read_trained(r.io, r.commit, r.manifest)) == ref_base
    for g in r.manifest.groups:
        assert not r.read_rows(g.id, [0, 1, 5])[0].any()
    rep = verify_store(path)
    assert rep.ok and rep.notes == [] and rep.erased_steps == 3, rep.problems
    assert not r.io.exists("ledger/ids/P.parquet")
    with pytest.raises(LedgerError, match="purged for good"):
        restore(dict(state), path, "P")


def test_a_failed_write_at_every_write_point_leaves_before_or_after_and_purge_completes(forgotten, reference, tmp_path, monkeypatch):
    ops, ref_fp, ref_base, _ = reference
    assert len(ops) >= 10 and any(o.startswith("writer commit.json") for o in ops)
    outcomes = {"before": 0, "after": 0}
    for i in range(len(ops)):
        path, state = _copy(forgotten, tmp_path / f"c{i}")
        with monkeypatch.context() as m:
            _Seam(m, fail_at=i)
            with pytest.raises((OSError, DeltaStoreError)):
                purge(path, "P", state)
        rep = verify_store(path)
        assert rep.ok, (ops[i], rep.problems)
        after = any(e["request"] == "P" for e in read_commit(open_io(path)).get("erased") or [])
        outcomes["after" if after else "before"] += 1
        assert bool(rep.notes) == after, ops[i]  # past the commit point, the purge is pending until its last write
        if after and i % 4:  # restore of the request probed on every before case and a quarter of the after ones
            purge(path, "P", state)
            _check_done(path, state, ref_fp, ref_base)
            continue
        probe, probe_state = _copy((path, state), tmp_path / f"p{i}")
        if after:  # past the commit point: the purge stands (restore finishes it, then refuses)
            with pytest.raises(LedgerError, match="purged for good"):
                restore(probe_state, probe, "P")
        else:  # before it: nothing happened, the request can still be restored
            assert restore(probe_state, probe, "P").kind == "restore"
        purge(path, "P", state)  # running it again completes it: the same bits as uninterrupted
        _check_done(path, state, ref_fp, ref_base)
    assert outcomes["before"] >= 3 and outcomes["after"] >= 3, outcomes
    print(f"{len(ops)} write points: {outcomes}")


def test_a_pending_purge_blocks_recording_until_finished(forgotten, reference, tmp_path, monkeypatch):
    ops, ref_fp, ref_base, _ = reference
    first_shard = next(i for i, o in enumerate(ops) if "/c/" in o)  # the first row rewrite: past the commit point
    path, state = _copy(forgotten, tmp_path / "s")
    with monkeypatch.context() as m:
        _Seam(m, fail_at=first_shard)
        with pytest.raises(OSError):
            purge(path, "P", state)
    from tests.helpers import TinyNet

    model = TinyNet()
    with pytest.raises(StoreLockedError, match="purge of request 'P' is unfinished"):
        Recorder(path, model, make_optimizer("adam", model.parameters()), mode="a")
    assert "deltastore purge" in verify_store(path).notes[0]
    # forget finishes it first (and appends the tombstone), then works on the new base. The model
    # given is the state before the purge (the crashed call returned nothing), hence the hint:
    with pytest.raises(DeltaStoreError, match="state before purge"):
        forget(dict(state), path, [2], request_id="R")
    assert verify_store(path).notes == []  # finished all the same
    r = forget(state, path, [2], request_id="R", force="the purge was interrupted; the result is derived from the base")
    assert r.steps_already_subtracted == [0] and r.steps == []
    assert r.fingerprint_after == _fp(state)


def test_damaged_tombstone_or_new_base_is_an_error_naming_the_file(reference, tmp_path):
    import re

    _, _, _, done = reference
    io = open_io(done)
    tomb = next(n for n in io.list_dir("ledger") if n.startswith("00000002-"))
    purge_id = tomb[len("00000002-"):-len(".json")]
    base = read_commit(io)["trained"]["key"]
    r0 = StoreReader(done)
    shapes = {k: v.clone() for k, v in read_trained(r0.io, r0.commit, r0.manifest).items()}  # names and shapes only: forced
    for key, named in ((f"ledger/{tomb}", purge_id), (base, base.rsplit("/", 1)[1])):
        for damage in ("flip", "truncate", "delete"):
            path = tmp_path / f"{damage}-{key.replace('/', '_')}"
            shutil.copytree(done, path)
            f = path / key
            data = f.read_bytes()
            if damage == "flip":
                f.write_bytes(data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0x20]) + data[len(data) // 2 + 1 :])
            elif damage == "truncate":
                f.write_bytes(data[: len(data) // 2])
            else:
                f.unlink()
            with pytest.raises(CorruptStoreError, match=re.escape(named)):
                forget(dict(shapes), path, [60], request_id="X", force="test: damage, not the fingerprint, is checked")
            if key == base:
                assert not verify_store(path).ok


_KILL_SCRIPT = """
import os, signal, sys
from deltastore.storage.local import LocalStoreIO
target = int(os.environ["KILL_AT"]); seen = [0]
for name in ("writer", "create", "delete"):
    real = getattr(LocalStoreIO, name)
    def op(io, key, *a, _real=real, **kw):
        if seen[0] == target:
            os.kill(os.getpid(), signal.SIGKILL)
        seen[0] += 1
        return _real(io, key, *a, **kw)
    setattr(LocalStoreIO, name, op)
from unlearning.forget import purge
purge(sys.argv[1], "P")
"""


def test_sigkill_in_the_middle_of_a_purge_leaves_a_store_that_verifies_and_finishes(forgotten, reference, tmp_path):
    ops, _, ref_base, _ = reference
    commit_point = next(i for i, o in enumerate(ops) if o.startswith("writer commit.json"))
    points = sorted({commit_point, commit_point + 1, len(ops) - 1})  # just before and after the commit point, the last write
    for k in points:
        path, _ = _copy(forgotten, tmp_path / f"k{k}")
        proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(path)], env={**os.environ, "KILL_AT": str(k)},
                              capture_output=True, timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
        rep = verify_store(path)
        assert rep.ok, (k, ops[k], rep.problems)
        purge(path, "P")
        r = StoreReader(path)
        assert _fp(read_trained(r.io, r.commit, r.manifest)) == ref_base
        assert verify_store(path).ok and verify_store(path).erased_steps == 3


def test_a_recording_holding_the_store_refuses_the_purge(forgotten, tmp_path):
    from tests.helpers import TinyNet

    path, state = _copy(forgotten, tmp_path / "s")
    model = TinyNet()
    model.load_state_dict(state)
    rec = Recorder(path, model, make_optimizer("adam", model.parameters()), mode="a")
    try:
        with pytest.raises(StoreLockedError):
            purge(path, "P")
    finally:
        rec.close()
    assert read_commit(open_io(path)).get("erased") is None  # nothing happened


def test_the_cli_finishes_a_pending_purge_and_writes_the_new_state(forgotten, reference, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file, save_file

    from deltastore.cli import main
    from unlearning.forget import audit

    ops, ref_fp, _, _ = reference
    first_shard = next(i for i, o in enumerate(ops) if "/c/" in o)
    path, state = _copy(forgotten, tmp_path / "s")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "before.safetensors")
    with monkeypatch.context() as m:
        _Seam(m, fail_at=first_shard)
        with pytest.raises(OSError):
            purge(path, "P", state)
    assert main(["purge", str(path), "--request", "P", "--model", str(tmp_path / "before.safetensors"),
                 "--out", str(tmp_path / "after.safetensors"), "--quiet"]) == 0
    assert "purged request P: 3 steps erased" in capsys.readouterr().out
    assert _fp(load_file(tmp_path / "after.safetensors")) == ref_fp == audit(path)[-1].fingerprint_after
    assert verify_store(path).notes == []


def test_a_failed_write_while_redacting_another_requests_ids_leaves_a_readable_ledger(tmp_path, monkeypatch):
    """R (restored) shares an id with P: the purge writes R's redacted copy, appends the tombstone
    naming it, then deletes R's old file. A failed write at each of those points leaves R's ids
    readable (the old file until the tombstone names the copy), and the next purge finishes."""
    from unlearning.ledger import Ledger

    src = tmp_path / "src"
    model, _, _ = record(src, steps=6, steps_per_shard=4)
    state0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    forget(state0, src, [3, 30], request_id="R")
    restore(state0, src, "R")
    forget(state0, src, [3, 4], request_id="P")
    with monkeypatch.context() as m:
        seam = _Seam(m)
        purge(_copy((src, state0), tmp_path / "ref")[0], "P", dict(state0))
    points = [i for i, o in enumerate(seam.ops) if "ledger/" in o]
    assert any("R.redacted-" in seam.ops[i] for i in points) and any(seam.ops[i] == "delete ledger/ids/R.parquet" for i in points)
    for i in points:
        path, state = _copy((src, state0), tmp_path / f"c{i}")
        with monkeypatch.context() as m:
            _Seam(m, fail_at=i)
            with pytest.raises((OSError, DeltaStoreError)):
                purge(path, "P", state)
        ledger = Ledger(StoreReader(path).io)
        assert sorted(ledger.read_ids(Ledger.forget_entry(ledger.entries(), "R"))) in ([3, 30], [30]), seam.ops[i]
        assert verify_store(path).ok, seam.ops[i]
        purge(path, "P", state)  # finishes
        assert ledger.read_ids(Ledger.forget_entry(ledger.entries(), "R")) == [30], seam.ops[i]
        names = os.listdir(path / "ledger" / "ids")  # P's file and R's original are gone, R's copy stays
        assert len(names) == 1 and names[0].startswith("R.redacted-"), (seam.ops[i], names)
