"""Recorder (deltastore.record.recorder): what a step records, skipped steps, accumulation, resuming."""

from __future__ import annotations

import pytest
import torch

from deltastore.format import model_fingerprint
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader
from deltastore.record import Recorder

from .helpers import TinyNet, data, make_optimizer, record


def _step(rec, model, opt, ids, *, step=True):
    x, y = data()
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x[: len(ids)]), y[: len(ids)]).backward()
    rec.samples(ids)
    if step:
        opt.step()


def test_frozen_parameters_are_not_recorded_and_tied_ones_once(tmp_path):
    model = TinyNet(0)
    model.fc1.bias.requires_grad_(False)
    model.head = torch.nn.Linear(24, 3)
    model.head.weight = model.fc2.weight  # tied: one tensor under two names
    record(tmp_path / "s", steps=3, model=model)
    names = [t.name for t in StoreReader(tmp_path / "s").manifest.tensors]
    assert "fc1.bias" not in names
    assert ("fc2.weight" in names) != ("head.weight" in names)
    assert len(names) == len(set(names))


def test_ids_of_a_step_that_did_not_run_go_to_the_next_real_step(tmp_path):
    model = TinyNet()
    opt = make_optimizer("sgd", model.parameters())
    with Recorder(tmp_path / "s", model, opt, plan=PruningPlan.dense(), value_dtype="float32") as rec:
        _step(rec, model, opt, [1, 2], step=False)  # e.g. a GradScaler found inf: no optimizer step
        _step(rec, model, opt, [3, 4])
        assert rec.skipped_steps == 0 and rec.step == 1
    r = StoreReader(tmp_path / "s")
    assert r.committed_steps == 1
    assert r.index.steps_for([1, 2, 3, 4]).tolist() == [0]  # never dropped: over-inclusion is safe
    assert r.index.lookup([1, 2])[1] == []


def test_skip_step_declares_a_skipped_step_and_drops_only_its_ids(tmp_path):
    model = TinyNet()
    opt = make_optimizer("sgd", model.parameters())
    with Recorder(tmp_path / "s", model, opt, plan=PruningPlan.dense(), value_dtype="float32") as rec:
        _step(rec, model, opt, [1, 2], step=False)
        rec.skip_step()
        _step(rec, model, opt, [3, 4])
        rec.skip_step()  # nothing pending: not a skipped step
        assert rec.skipped_steps == 1 and rec.step == 1
    r = StoreReader(tmp_path / "s")
    assert r.index.steps_for([3, 4]).tolist() == [0]
    assert r.index.lookup([1, 2])[1] == [1, 2]


@pytest.mark.parametrize("declare", [False, True])
def test_gradscaler_skip_on_cpu_keeps_ids_unless_declared(tmp_path, declare):
    model = TinyNet()
    opt = make_optimizer("sgd", model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    x, y = data()
    with Recorder(tmp_path / "s", model, opt, plan=PruningPlan.dense(), value_dtype="float32") as rec:
        for ids, poison in (([1, 2], True), ([3], False)):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[:4]), y[:4]) * (float("inf") if poison else 1.0)
            scaler.scale(loss).backward()
            rec.samples(ids)
            before = scaler.get_scale()
            scaler.step(opt)  # skips optimizer.step() (and its hooks) on inf gradients
            scaler.update()
            if declare and scaler.get_scale() < before:
                rec.skip_step()
        assert rec.step == 1 and rec.skipped_steps == int(declare)
    r = StoreReader(tmp_path / "s")
    assert r.committed_steps == 1
    assert r.index.steps_for([3]).tolist() == [0]
    assert r.index.lookup([1, 2])[1] == ([1, 2] if declare else [])


def test_with_gradient_accumulation_every_micro_batch_belongs_to_the_next_step(tmp_path):
    model = TinyNet()
    opt = make_optimizer("sgd", model.parameters())
    with Recorder(tmp_path / "s", model, opt) as rec:  # grad_accumulation=True is no longer needed
        _step(rec, model, opt, [1, 2], step=False)
        _step(rec, model, opt, [3, 4])
        _step(rec, model, opt, [5])
    r = StoreReader(tmp_path / "s")
    assert r.committed_steps == 2
    assert r.index.steps_for([1, 2, 3, 4]).tolist() == [0] and r.index.steps_for([5]).tolist() == [1]


def test_resuming_equals_one_long_recording_and_close_fingerprints_the_model(tmp_path):
    one, _, _ = record(tmp_path / "one", steps=6, optimizer="sgd", steps_per_shard=4)
    model = TinyNet()
    opt = make_optimizer("sgd", model.parameters())
    x, y = data()
    for path_steps in ((0, 3), (3, 6)):
        rec = Recorder(tmp_path / "two", model, opt, plan=PruningPlan.dense(), value_dtype="float32", steps_per_shard=4,
                       mode="w" if path_steps[0] == 0 else "a")
        for s in range(*path_steps):
            idx = torch.arange(s * 8, (s + 1) * 8) % x.shape[0]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            rec.samples(idx, epoch=(s * 8) // x.shape[0])
            opt.step()
        rec.close()
    a, b = StoreReader(tmp_path / "one"), StoreReader(tmp_path / "two")
    assert b.committed_steps == 6
    assert b.model_fingerprint == model_fingerprint({n: t for n, t in model.state_dict().items() if t.is_floating_point()})
    for name, upd in a.sum_updates(range(6)).updates.items():
        assert torch.equal(upd, b.sum_updates(range(6)).updates[name]), name
