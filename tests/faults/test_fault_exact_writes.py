"""Faults on the write paths issue 10 added: the trained weights at close, a request's ids
file, its ledger entry. Each failure leaves every committed thing as it was: a store that
opens, verifies and resumes; a ledger without the request; a model untouched."""

from __future__ import annotations

import errno

import pytest
import torch

import deltastore.record.writer as writer_module
from deltastore.errors import RecordingFailedError
from deltastore.format import read_commit
from deltastore.record import Recorder
from deltastore.storage import open_io
from deltastore.storage.local import LocalStoreIO
from deltastore.verify import verify_store
from tests.helpers import TinyNet, data, make_optimizer, record
from unlearning.forget import audit, forget


def _fail_writes(monkeypatch, prefix: str, *, method: str = "writer"):
    """Every ``method`` call on a key under ``prefix`` fails as a full disk would."""
    real = getattr(LocalStoreIO, method)

    def failing(self, key, *args, **kwargs):
        if key.startswith(prefix):
            raise OSError(errno.ENOSPC, "No space left on device", key)
        return real(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStoreIO, method, failing)


def _train(path, steps: int, *, mode: str = "w", model=None):
    model = model if model is not None else TinyNet()
    opt = make_optimizer("adam", model.parameters())
    x, y = data()
    rec = Recorder(path, model, opt, mode=mode)
    for s in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:8]), y[:8]).backward()
        rec.samples(list(range(8 * s, 8 * s + 8)))
        opt.step()
    return rec, model


def test_disk_full_writing_the_trained_weights_at_close_keeps_the_store_and_it_resumes(tmp_path, monkeypatch):
    rec, model = _train(tmp_path / "s", 4)
    with monkeypatch.context() as m:
        _fail_writes(m, "trained/")
        with pytest.raises(RecordingFailedError, match="closing"):
            rec.close()
    io = open_io(tmp_path / "s")
    commit = read_commit(io)
    assert commit["committed_steps"] == 4 and commit.get("trained") is None
    assert verify_store(tmp_path / "s").ok
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert forget(state, tmp_path / "s", [3], force="no fingerprint: close failed").derived_from == "model"  # old-store path
    rec2, _ = _train(tmp_path / "s", 2, mode="a", model=model)
    rec2.close()
    commit = read_commit(io)
    assert commit["committed_steps"] == 6 and commit["trained"]["key"].startswith("trained/")
    assert io.list_dir("trained") == [commit["trained"]["key"].split("/")[1]]


def test_a_crash_between_the_trained_weights_and_the_commit_leaves_the_old_reference(tmp_path, monkeypatch):
    rec, model = _train(tmp_path / "s", 3)
    real = writer_module.write_commit

    def crash(io, *args, trained=None, **kwargs):
        if trained is not None:
            raise OSError(errno.EIO, "Input/output error")
        return real(io, *args, trained=trained, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(writer_module, "write_commit", crash)
        with pytest.raises(RecordingFailedError):
            rec.close()
    io = open_io(tmp_path / "s")
    assert len(io.list_dir("trained")) == 1 and read_commit(io).get("trained") is None  # a file no record names
    assert verify_store(tmp_path / "s").ok
    rec2, _ = _train(tmp_path / "s", 1, mode="a", model=model)
    rec2.close()
    commit = read_commit(io)
    assert io.list_dir("trained") == [commit["trained"]["key"].split("/")[1]]  # the orphan is gone


@pytest.mark.parametrize("where", ["ids", "entry"])
def test_a_failed_ids_file_or_ledger_entry_leaves_no_request_and_the_model_untouched(tmp_path, monkeypatch, where):
    model, _, _ = record(tmp_path / "s", steps=4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with monkeypatch.context() as m:
        if where == "ids":
            _fail_writes(m, "ledger/ids/")
        else:
            _fail_writes(m, "ledger/0", method="create")
        with pytest.raises(OSError, match="No space left"):
            forget(model, tmp_path / "s", [1, 9], request_id="r1")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert audit(tmp_path / "s") == []
    r = forget(model, tmp_path / "s", [1, 9], request_id="r1")  # the same request again: the ids file is replaced
    assert r.ids_file == "ledger/ids/r1.parquet"
    from unlearning.ledger import Ledger

    assert Ledger(tmp_path / "s").read_ids(audit(tmp_path / "s")[0]) == [1, 9]
