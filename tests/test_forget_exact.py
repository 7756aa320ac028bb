"""DESIGN invariant 2, bit for bit: the model is a function of the set of live requests.

Stores keep their trained weights (FORMAT.md §5.1), and forget/restore derive every
model as W_trained − Σ over the live requests' steps in a fixed order. Hypothesis
drives random sequences of forgets and restores on float32, bfloat16 and int8-valued
stores and checks, by model fingerprint (every byte of every recorded tensor):
reaching the same live set twice gives the same model, undoing everything gives the
trained model, and the state equals one request for the union of the live ids.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltastore.format import model_fingerprint, read_commit
from deltastore.format.trained import read_trained
from deltastore.read import StoreReader
from deltastore.storage import open_io
from unlearning.forget import forget, restore

from .helpers import TinyNet, record

STEPS = 12  # helpers.record: step s uses ids [8s, 8s+8) mod 96


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    out = {}
    base = tmp_path_factory.mktemp("exact")
    for vd in ("float32", "bfloat16", "int8"):
        model, _, _ = record(base / vd, steps=STEPS, value_dtype=vd, steps_per_shard=5)
        out[vd] = (base / vd, {k: v.detach().clone() for k, v in model.state_dict().items()})
    return out


def _fp(model) -> str:
    return model_fingerprint({k: v for k, v in model.state_dict().items() if v.is_floating_point()})


def _model(state) -> TinyNet:
    m = TinyNet()
    m.load_state_dict(state)
    return m


ops = st.lists(st.tuples(st.sampled_from(["forget", "restore"]), st.integers(0, 5)), min_size=1, max_size=7)
id_sets = st.lists(st.lists(st.integers(0, 95), min_size=1, max_size=6, unique=True), min_size=6, max_size=6)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value_dtype=st.sampled_from(["float32", "bfloat16", "int8"]), ops=ops, ids=id_sets)
def test_model_is_a_function_of_the_live_set_bit_for_bit(stores, value_dtype, ops, ids):
    src, trained = stores[value_dtype]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s"
        shutil.copytree(src, path)  # a fresh ledger on the same recording
        model = _model(trained)
        trained_fp = _fp(model)
        seen: dict[frozenset, str] = {frozenset(): trained_fp}
        live: dict[int, str] = {}  # id-set number -> request id
        for n, (op, k) in enumerate(ops):
            if op == "forget" and k not in live:
                live[k] = forget(model, path, ids[k], request_id=f"r{n}").request_id
            elif op == "restore" and k in live:
                restore(model, path, live.pop(k))
            else:
                continue
            key = frozenset(live)
            assert seen.setdefault(key, _fp(model)) == _fp(model)  # same live set, same bits
        for k in list(live):  # undo everything, in an order the ops did not choose
            if live:
                restore(model, path, live.pop(k))
        assert _fp(model) == trained_fp
        assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value_dtype=st.sampled_from(["float32", "bfloat16", "int8"]), ids=id_sets)
def test_requests_one_by_one_equal_one_request_for_their_union(stores, value_dtype, ids):
    src, trained = stores[value_dtype]
    with tempfile.TemporaryDirectory() as d:
        a, b = Path(d) / "a", Path(d) / "b"
        shutil.copytree(src, a)
        shutil.copytree(src, b)
        one_by_one, union = _model(trained), _model(trained)
        for i, s in enumerate(ids[:3]):
            forget(one_by_one, a, s, request_id=f"r{i}")
        forget(union, b, sorted(set().union(*ids[:3])))
        assert _fp(one_by_one) == _fp(union)


def test_restore_gives_the_trained_model_bit_for_bit_and_it_stays_valid(stores):
    src, trained = stores["float32"]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s"
        shutil.copytree(src, path)
        model = _model(trained)
        r = forget(model, path, list(range(40)))
        assert r.derived_from == "trained" and len(r.steps) >= 5
        restore(model, path, r.request_id)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
        # The trained checkpoint is what the store expects again: no force needed.
        again = _model(trained)
        forget(again, path, [1])


def _record_bf16(path, steps: int):
    """A bfloat16 model (Linear + BatchNorm) recorded for ``steps`` steps; step s uses ids [4s, 4s+4)."""
    from deltastore.record import Recorder

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 3)).to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with Recorder(path, model, opt, value_dtype="bfloat16") as rec:
        for s in range(steps):
            opt.zero_grad()
            model(torch.randn(4, 6, dtype=torch.bfloat16)).float().square().mean().backward()
            rec.samples(list(range(4 * s, 4 * s + 4)))
            opt.step()
    return model


def test_trained_weights_are_kept_at_close_in_their_own_dtype(tmp_path):
    model = _record_bf16(tmp_path / "s", 3)
    io = open_io(tmp_path / "s")
    commit = read_commit(io)
    kept = read_trained(io, commit, StoreReader(tmp_path / "s").manifest)
    assert commit["trained"]["key"].startswith("trained/model-")
    state = model.state_dict()
    assert kept and all(v.dtype == torch.bfloat16 and torch.equal(v, state[k]) for k, v in kept.items())
    assert io.list_dir("trained") == [commit["trained"]["key"].split("/")[1]]


def test_a_bfloat16_model_is_exact_too(tmp_path):
    model = _record_bf16(tmp_path / "s", 6)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    a = forget(model, tmp_path / "s", [3, 20])
    b = forget(model, tmp_path / "s", [21])
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in trained.items())
    restore(model, tmp_path / "s", a.request_id)
    restore(model, tmp_path / "s", b.request_id)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
