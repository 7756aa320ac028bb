"""unlearning.methods: checkpoints (checksummed), trajectory replay, sample-precise removal, repair."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from deltastore.errors import CorruptStoreError, InvalidArgumentError
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader
from deltastore.record import Recorder
from unlearning.methods import Checkpointer, checkpoint_bytes, list_checkpoints, load_checkpoint, precise_removal, repair
from unlearning.methods.trajectory import replay

N, BATCH, DIM, CLASSES = 48, 8, 5, 3


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, DIM, generator=g), torch.randint(0, CLASSES, (N,), generator=g)


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(DIM, 7), nn.Tanh(), nn.Linear(7, CLASSES))


def _batches(steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    while len(out) < steps:
        out.extend(torch.split(torch.randperm(N, generator=g), BATCH))
    return out[:steps]


def _train(model, opt, x, y, batches, *, drop=(), hooks=()):
    drop = set(int(i) for i in drop)
    for b in batches:
        b = torch.tensor([int(i) for i in b if int(i) not in drop], dtype=torch.int64)
        if not b.numel():
            continue
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[b]), y[b]).backward()
        for h in hooks:
            h.samples(b)
        opt.step()


def _record(tmp_path, optimizer="sgd", steps=12, every=4):
    x, y = _data()
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1) if optimizer == "sgd" else torch.optim.Adam(model.parameters(), lr=0.01)
    batches = _batches(steps)
    ck = Checkpointer(tmp_path / "s", model, opt, every=every)
    with Recorder(tmp_path / "s", model, opt, plan=PruningPlan.dense(), value_dtype="float32") as rec:
        _train(model, opt, x, y, batches, hooks=(ck, rec))
    ck.close()
    return model, x, y, batches


def _fetch(x, y):
    return lambda ids: (x[torch.as_tensor(ids)], y[torch.as_tensor(ids)])


def test_checkpoints_round_trip_and_replay_rebuilds_the_trajectory(tmp_path):
    model, x, y, batches = _record(tmp_path, steps=10, every=4)
    assert list_checkpoints(tmp_path / "s") == [0, 4, 8, 10]
    assert checkpoint_bytes(tmp_path / "s") > 0
    final = load_checkpoint(tmp_path / "s", 10)
    for n, p in model.named_parameters():
        assert torch.equal(final.model[n], p.detach())
    start = load_checkpoint(tmp_path / "s", 4)
    reader = StoreReader(tmp_path / "s")
    w = None
    for t, w in replay(reader, start.model, 4, 8):
        pass
    ck8 = load_checkpoint(tmp_path / "s", 8)
    for n in ck8.model:
        assert torch.allclose(w[n], ck8.model[n], atol=1e-6)


def test_a_flipped_or_missing_checkpoint_is_an_error(tmp_path):
    _record(tmp_path, steps=6, every=4)
    path = tmp_path / "s" / "checkpoints" / "step-00000004.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptStoreError, match="SHA-256"):
        load_checkpoint(tmp_path / "s", 4)
    path.write_bytes(bytes(blob[: len(blob) // 2]))  # truncated
    with pytest.raises(CorruptStoreError, match="SHA-256"):
        load_checkpoint(tmp_path / "s", 4)
    path.unlink()
    with pytest.raises(CorruptStoreError, match="missing"):
        load_checkpoint(tmp_path / "s", 4)
    # a data file without its digest is an unfinished write: not listed
    (tmp_path / "s" / "checkpoints" / "step-00000000.sha256").unlink()
    assert 0 not in list_checkpoints(tmp_path / "s")


def test_checkpointer_rejects_bad_interval(tmp_path):
    m = _net()
    with pytest.raises(InvalidArgumentError, match="every"):
        Checkpointer(tmp_path / "c", m, torch.optim.SGD(m.parameters(), lr=0.1), every=0)


@pytest.mark.parametrize("whole_batch", [False, True])
def test_sgd_removal_is_exact_when_only_the_last_step_saw_the_samples(tmp_path, whole_batch):
    """Plain SGD: the correction of a step equals that step without the samples, at the same weights."""
    model, x, y, batches = _record(tmp_path, steps=12, every=4)
    # pick ids that occur only in the last step (steps 6..11 are the second epoch: 12 steps = 2 epochs of 6)
    last = [int(i) for i in batches[-1]]
    ids = last if whole_batch else last[:3]
    # these ids also occur in the first epoch; retrain from the checkpoint before the last step instead
    reader = StoreReader(tmp_path / "s")
    ck = load_checkpoint(tmp_path / "s", 8)
    ref = _net()
    with torch.no_grad():
        for t, w in replay(reader, ck.model, 8, 11):
            pass
        for n, p in ref.named_parameters():
            p.copy_(w[n])
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    _train(ref, opt, x, y, [batches[-1]], drop=ids)
    # restrict the request to the last step by giving precise_removal a store whose index only has it there:
    # equivalently, compare only the correction of step 11, computed on a copy of the trained model
    state, info = _precise_last_step(model, tmp_path / "s", ids, x, y)
    assert info["exact_per_step"]
    for n, p in ref.named_parameters():
        assert torch.allclose(state[n], p.detach(), atol=1e-6), n


def _precise_last_step(model, store, ids, x, y):
    """precise_removal restricted to step 11 (monkeypatched step table)."""
    reader = StoreReader(store)
    table = reader.index.step_table()
    last = max(table)
    original = type(reader.index).step_table
    try:
        type(reader.index).step_table = lambda self: {last: table[last]}
        return precise_removal(model, reader, ids, _fetch(x, y))
    finally:
        type(reader.index).step_table = original


def test_sgd_removal_of_every_occurrence_moves_toward_retraining(tmp_path):
    model, x, y, batches = _record(tmp_path, steps=12, every=4)
    ids = [int(i) for i in batches[-1][:4]]
    state, info = precise_removal(model, tmp_path / "s", ids, _fetch(x, y))
    expected_steps = sum(1 for b in batches if set(b.tolist()) & set(ids))
    assert info["affected_steps"] == expected_steps and info["sample_gradients"] == 8  # each id once per epoch
    ref = _net()
    _train(ref, torch.optim.SGD(ref.parameters(), lr=0.1), x, y, batches, drop=ids)
    trained = dict(model.named_parameters())
    before = sum(float((trained[n] - p).detach().norm()) for n, p in ref.named_parameters())
    after = sum(float((state[n] - p).detach().norm()) for n, p in ref.named_parameters())
    assert after < 0.2 * before  # first-order: close, not exact (the trajectory drift is not modelled)


def test_adam_removal_moves_toward_retraining(tmp_path):
    model, x, y, batches = _record(tmp_path, optimizer="adam", steps=12, every=4)
    ids = [int(i) for i in batches[-1][:4]]
    state, info = precise_removal(model, tmp_path / "s", ids, _fetch(x, y))
    assert not info["exact_per_step"] and info["optimizer"] == "Adam"
    ref = _net()
    _train(ref, torch.optim.Adam(ref.parameters(), lr=0.01), x, y, batches, drop=ids)
    trained = dict(model.named_parameters())
    before = sum(float((trained[n] - p).detach().norm()) for n, p in ref.named_parameters())
    after = sum(float((state[n] - p).detach().norm()) for n, p in ref.named_parameters())
    assert after < 0.7 * before


def test_precise_removal_needs_checkpoints(tmp_path):
    x, y = _data()
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(tmp_path / "s", model, opt, plan=PruningPlan.dense(), value_dtype="float32") as rec:
        _train(model, opt, x, y, _batches(3), hooks=(rec,))
    with pytest.raises(InvalidArgumentError, match="checkpoints"):
        precise_removal(model, tmp_path / "s", [0], _fetch(x, y))


def test_repair_trains_on_retained_data_only_and_counts_its_work():
    x, y = _data()
    model = _net()
    before = copy.deepcopy(model.state_dict())
    info = repair(model, x[:20], y[:20], steps=5, batch_size=8, lr=0.01)
    assert info["steps"] == 5 and info["sample_gradients"] == 40
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(InvalidArgumentError):
        repair(model, x[:0], y[:0], steps=1, batch_size=8, lr=0.01)
    np.testing.assert_equal(repair(model, x, y, steps=0, batch_size=8, lr=0.01)["steps"], 0)


def test_method_options_are_checked_before_anything_runs():
    from unlearning.methods.api import MethodOptions, parse_method

    m = _net()
    x, y = _data()
    assert parse_method("amnesiac", MethodOptions(), m) == "amnesiac"
    with pytest.raises(InvalidArgumentError, match="method"):
        parse_method("retrain", MethodOptions(), m)
    with pytest.raises(InvalidArgumentError, match="retained"):
        parse_method("amnesiac+repair", MethodOptions(repair_steps=3), m)
    with pytest.raises(InvalidArgumentError, match="repair_steps"):
        parse_method("amnesiac+repair", MethodOptions(retained=(x, y)), m)
    with pytest.raises(InvalidArgumentError, match="nn.Module"):
        parse_method("amnesiac+repair", MethodOptions(retained=(x, y), repair_steps=3), m.state_dict())


def test_apply_method_repairs_a_copy_and_reports_its_parameters():
    from unlearning.methods.api import MethodOptions, apply_method

    m = _net()
    x, y = _data()
    named = dict(m.named_parameters())
    zeros = {n: torch.zeros_like(p) for n, p in named.items()}
    before = {n: p.detach().clone() for n, p in named.items()}
    same, params = apply_method("amnesiac", MethodOptions(), m, named, zeros)
    assert same is zeros and params is None
    out, params = apply_method("amnesiac+repair", MethodOptions(retained=(x, y), repair_steps=4, repair_batch_size=8), m, named, zeros)
    assert params["repair_steps"] == 4 and params["retained_samples"] == N
    assert all(torch.equal(before[n], p) for n, p in m.named_parameters())  # the model itself is untouched
    assert any(not torch.equal(out[n], zeros[n]) for n in out)  # repaired from the subtraction's result
    # deterministic: the same request gives the same bits
    again, _ = apply_method("amnesiac+repair", MethodOptions(retained=(x, y), repair_steps=4, repair_batch_size=8), m, named, zeros)
    assert all(torch.equal(out[n], again[n]) for n in out)


def test_forget_method_amnesiac_repair_is_recorded_and_restore_gives_the_trained_model_back(tmp_path):
    from unlearning.forget import audit, forget, restore
    from unlearning.methods.api import MethodOptions

    x, y = _data()
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with Recorder(tmp_path / "s", model, opt, plan=PruningPlan.dense(), value_dtype="float32") as rec:
        _train(model, opt, x, y, _batches(12), hooks=(rec,))
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    plain = copy.deepcopy(model)
    ids = [0, 1, 2]
    keep = torch.ones(N, dtype=torch.bool)
    keep[ids] = False
    forget(plain, tmp_path / "s", ids, request_id="plain")
    subtracted = {k: v.detach().clone() for k, v in plain.state_dict().items()}
    restore(plain, tmp_path / "s", "plain")
    options = MethodOptions(retained=(x[keep], y[keep]), repair_steps=3, repair_batch_size=8)
    receipt = forget(model, tmp_path / "s", ids, method="amnesiac+repair", method_options=options)
    assert receipt.method == "amnesiac+repair" and receipt.method_params["repair_steps"] == 3
    assert audit(tmp_path / "s")[-1].method == "amnesiac+repair"
    assert audit(tmp_path / "s")[0].method == "amnesiac" and audit(tmp_path / "s")[0].method_params is None
    assert any(not torch.equal(v, subtracted[k]) for k, v in model.state_dict().items())  # repaired, not just subtracted
    with pytest.raises(InvalidArgumentError, match="retained"):
        forget(model, tmp_path / "s", [5], method="amnesiac+repair")
    restore(model, tmp_path / "s", receipt.request_id)
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items() if v.is_floating_point())
