"""DESIGN invariants 2, 5, 6 through the unlearning layer, plus its errors."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deltastore import errors
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader
from unlearning.forget import audit, forget, restore

from .helpers import TinyNet, record

BATCH = 8  # helpers.record: step s uses ids [8s, 8s+8) mod 96


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _close(a, b, atol=1e-5):
    return all(torch.allclose(a[k].float(), b[k].float(), atol=atol) for k in a if a[k].is_floating_point())


@settings(max_examples=8)
@given(ids=st.lists(st.integers(0, 95), min_size=1, max_size=12, unique=True), value_dtype=st.sampled_from(["float32", "bfloat16", "int8"]))
def test_restore_undoes_forget(ids, value_dtype):
    with tempfile.TemporaryDirectory() as d:
        model, _, _ = record(Path(d) / "s", steps=14, plan=PruningPlan.layerwise(), value_dtype=value_dtype)
        trained = _state(model)
        receipt = forget(model, Path(d) / "s", ids)
        assert receipt.steps and not _close(_state(model), trained, atol=0)
        restore(model, Path(d) / "s", receipt.request_id)
        assert _close(_state(model), trained)


@settings(max_examples=8)
@given(
    s1=st.lists(st.integers(0, 95), min_size=1, max_size=10, unique=True),
    s2=st.lists(st.integers(0, 95), min_size=1, max_size=10, unique=True),
)
def test_two_requests_equal_their_union_and_shared_steps_are_subtracted_once(s1, s2):
    with tempfile.TemporaryDirectory() as d:
        path, twin = Path(d) / "s", Path(d) / "twin"
        model, _, _ = record(path, steps=14, plan=PruningPlan.layerwise())
        shutil.copytree(path, twin)  # the same recording, with its own ledger
        trained = _state(model)
        r1 = forget(model, path, s1)
        r2 = forget(model, path, s2)
        assert not set(r1.steps) & set(r2.steps)
        assert set(r2.steps_already_subtracted) == set(r1.steps) & (set(r2.steps_already_subtracted) | set(r2.steps))
        union_model = TinyNet()
        union_model.load_state_dict(trained)
        ru = forget(union_model, twin, sorted(set(s1) | set(s2)))
        assert sorted(r1.steps + r2.steps) == ru.steps
        assert _close(_state(model), _state(union_model))


@settings(max_examples=10)
@given(
    mode=st.sampled_from(["random", "magnitude", "global"]),
    first=st.floats(0.05, 0.95),
    last=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**31),
    ids=st.lists(st.integers(0, 95), min_size=1, max_size=20, unique=True),
)
def test_unlearn_time_pruning_of_a_dense_store_equals_record_time_pruning(mode, first, last, seed, ids):
    plan = PruningPlan.layerwise(first, last, mode=mode, seed=seed)
    with tempfile.TemporaryDirectory() as d:
        dense, _, _ = record(Path(d) / "dense", steps=12, plan=PruningPlan.dense(), value_dtype="float32", steps_per_shard=5)
        pruned, _, _ = record(Path(d) / "pruned", steps=12, plan=plan, value_dtype="float32", steps_per_shard=5)
        assert _close(_state(dense), _state(pruned), atol=0)  # same training
        forget(dense, Path(d) / "dense", ids, plan=plan)
        forget(pruned, Path(d) / "pruned", ids)
        a, b = _state(dense), _state(pruned)
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_failure_midway_leaves_the_model_unchanged(tmp_path):
    model, _, _ = record(tmp_path / "s", steps=12, plan=PruningPlan.layerwise(), steps_per_shard=2)
    trained = _state(model)
    r = StoreReader(tmp_path / "s")
    g = r.manifest.group_of("fc2.weight")
    p = tmp_path / "s" / g.path / "values" / "c" / "5" / "0"  # steps 10-11, the last group read
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(errors.CorruptStoreError) as info:
        forget(model, tmp_path / "s", list(range(96)))
    assert info.value.tensor == "fc2.weight" and info.value.step in (10, 11)
    assert _close(_state(model), trained, atol=0)
    assert audit(tmp_path / "s") == []


def test_fingerprint_mismatch_is_refused_unless_forced(tmp_path):
    model, _, _ = record(tmp_path / "s", steps=6)
    with torch.no_grad():
        model.fc1.weight.add_(1.0)
    with pytest.raises(errors.FingerprintMismatchError, match=r"fc1\.weight: 2,304 of 2,304 values differ \(max \|diff\| 1\)") as info:
        forget(model, tmp_path / "s", [1])
    assert "force=" in str(info.value) and "conv.weight" not in str(info.value)
    with pytest.raises(errors.InvalidArgumentError, match="expected a reason"):
        forget(model, tmp_path / "s", [1], force=True)
    rec = forget(model, tmp_path / "s", [1], force="model edited by hand in a test")
    assert rec.forced and rec.force_reason == "model edited by hand in a test"
    assert audit(tmp_path / "s")[0].force_reason == rec.force_reason


def test_fingerprint_mismatch_names_dtype_changes_and_batchnorm_buffers(tmp_path):
    model, _, _ = record(tmp_path / "s", steps=6)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 1, 8, 8))  # a forward pass in train mode moves the running statistics
    with pytest.raises(errors.FingerprintMismatchError) as info:
        forget(model, tmp_path / "s", [1])
    msg = str(info.value)
    assert "bn.running_mean" in msg and "model.eval()" in msg and "fc1.weight" not in msg
    half = {k: v.half() if k == "fc2.weight" else v for k, v in _state(model).items()}
    with pytest.raises(errors.FingerprintMismatchError, match="fc2.weight: dtype float16, expected float32"):
        forget(half, tmp_path / "s", [1])


def test_receipt_and_ledger(tmp_path):
    model, _, _ = record(tmp_path / "s", steps=6)
    r = forget(model, tmp_path / "s", [0, 9], request_id="req-1")
    assert r.steps == [0, 1] and r.sample_count == 2 and r.bytes_read > 0
    assert r.fingerprint_before != r.fingerprint_after
    back = restore(model, tmp_path / "s", "req-1")
    entries = audit(tmp_path / "s")
    assert [e.kind for e in entries] == ["forget", "restore"] and entries[1].restores == "req-1"
    assert back.steps == [0, 1]
    with pytest.raises(errors.LedgerError, match="already restored"):
        restore(model, tmp_path / "s", "req-1")
    with pytest.raises(errors.LedgerError, match="already"):
        forget(model, tmp_path / "s", [0], request_id="req-1")


def test_concurrent_forgets_are_serialised_and_none_is_lost(tmp_path):
    model, _, _ = record(tmp_path / "s", steps=12)
    trained = _state(model)
    errs = []

    def run(i):
        try:
            m = TinyNet()
            m.load_state_dict(trained)
            # Every request names a sample of step 0: exactly one of them may subtract it.
            forget(m, tmp_path / "s", [i, 8 * (i + 1)], request_id=f"r{i}", force="every thread starts from the trained model")
        except Exception as exc:  # pragma: no cover - reported below
            errs.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errs
    entries = audit(tmp_path / "s")
    assert sorted(e.request_id for e in entries) == [f"r{i}" for i in range(6)]
    assert [e.sequence for e in entries] == list(range(6))
    assert sum(0 in e.steps for e in entries) == 1
    assert sorted(s for e in entries for s in e.steps) == list(range(7))


def test_unknown_ids_are_reported_never_ignored(tmp_path):
    model, _, _ = record(tmp_path / "s", steps=3)  # ids 0..23 seen
    with pytest.raises(errors.UnknownSampleIdsError, match="2 of 3 ids were never recorded") as info:
        forget(model, tmp_path / "s", [1, 500, 501])
    assert sorted(info.value.ids) == [500, 501]
    r = forget(model, tmp_path / "s", [1, 500], allow_unknown=True)
    assert r.unknown_ids == [500] and r.steps == [0]


def test_wrong_id_type_empty_request_bad_device_and_mismatched_model(tmp_path):
    model, _, _ = record(tmp_path / "s", steps=3)
    with pytest.raises(errors.SampleIdTypeError):
        forget(model, tmp_path / "s", ["a"])
    with pytest.raises(errors.InvalidArgumentError, match="at least one"):
        forget(model, tmp_path / "s", [])
    with pytest.raises(errors.DeviceError):
        forget(model, tmp_path / "s", [1], device="quantum")
    with pytest.raises(errors.ModelMismatchError, match="conv.weight"):
        forget(TinyNet(width=4), tmp_path / "s", [1])


def test_empty_store_is_an_error(tmp_path):
    model, _, _ = record(tmp_path / "s", steps=0)
    with pytest.raises(errors.EmptyStoreError, match="no committed steps|committed steps"):
        forget(model, tmp_path / "s", [1])


@settings(max_examples=6)
@given(ids=st.lists(st.integers(0, 79), min_size=1, max_size=12, unique=True))  # 10 steps of 8 ids
def test_buffers_are_kept_by_default_and_subtracted_on_request(ids):
    with tempfile.TemporaryDirectory() as d:
        store = Path(d) / "s"
        model, _, _ = record(store, steps=10, plan=PruningPlan.dense())
        trained = _state(model)
        buffers = {n for n, _ in model.named_buffers() if trained[n].is_floating_point()}
        assert buffers, "TinyNet records BatchNorm running statistics"
        kept = forget(model, store, ids)
        after = _state(model)
        assert kept.buffers == "keep"
        assert all(torch.equal(after[n], trained[n]) for n in buffers)
        assert not all(torch.equal(after[n], trained[n]) for n in trained if n not in buffers and trained[n].is_floating_point())
        restore(model, store, kept.request_id)
        assert _close(_state(model), trained)
        # "subtract": each buffer moves by minus the summed recorded change of the same steps
        sub = forget(model, store, ids, buffers="subtract")
        assert sub.steps == kept.steps and sub.buffers == "subtract"
        summed = StoreReader(store).sum_updates(sub.steps).updates
        now = _state(model)
        for n in buffers:
            torch.testing.assert_close(now[n], trained[n] - summed[n])
        back = restore(model, store, sub.request_id)
        assert back.buffers == "subtract" and _close(_state(model), trained)


def test_bad_buffers_mode_and_old_ledger_entries(tmp_path):
    from unlearning.ledger import Receipt

    model, _, _ = record(tmp_path / "s", steps=4)
    with pytest.raises(errors.InvalidArgumentError, match="buffers: expected one of"):
        forget(model, tmp_path / "s", [1], buffers="recompute")
    # entries written before the field existed subtracted buffers; restore must mirror that
    assert Receipt.from_json({"request_id": "r", "kind": "forget"}).buffers == "subtract"


@pytest.mark.parametrize("fail_at", ["before_commit", "ledger"])
def test_forget_and_restore_are_all_or_nothing(tmp_path, monkeypatch, fail_at):
    model, _, _ = record(tmp_path / "s", steps=6)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    seen = {}

    def hook(new):
        seen.update(new)
        if fail_at == "before_commit":
            raise OSError("disk full while writing --out")

    if fail_at == "ledger":
        from unlearning.ledger import Ledger

        monkeypatch.setattr(Ledger, "append", lambda self, receipt: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        forget(model, tmp_path / "s", [0, 1], before_commit=hook)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched
    assert audit(tmp_path / "s") == []  # ledger untouched
    if fail_at == "before_commit":
        assert not torch.equal(seen["fc1.weight"], before["fc1.weight"])  # the hook saw the new weights
    monkeypatch.undo()
    receipt = forget(model, tmp_path / "s", [0, 1])  # and the same request then succeeds
    assert len(audit(tmp_path / "s")) == 1 and receipt.steps
