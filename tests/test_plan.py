"""Pruning plans (deltastore/plan.py): resolution against tensors, the layer-wise schedule,
the manifest's JSON form, and errors that say what was expected."""

from __future__ import annotations

import doctest
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deltastore import plan as plan_module
from deltastore.errors import InvalidArgumentError, InvalidPlanError
from deltastore.plan import MODES, PAPER_FIRST_RATE, PAPER_LAST_RATE, PruningPlan, TensorSpec, layerwise_rates

SPECS = [
    TensorSpec("conv.weight", (8, 1, 3, 3), "float32"),
    TensorSpec("conv.bias", (8,), "float32"),
    TensorSpec("bn.weight", (8,), "float32"),
    TensorSpec("bn.running_mean", (8,), "float32", kind="buffer"),
    TensorSpec("fc1.weight", (32, 72), "float32"),
    TensorSpec("fc1.bias", (32,), "float32"),
    TensorSpec("fc2.weight", (10, 32), "float32"),
    TensorSpec("fc2.bias", (10,), "float32"),
]
WEIGHTS = ["conv.weight", "fc1.weight", "fc2.weight"]
VECTORS = ["conv.bias", "bn.weight", "fc1.bias", "fc2.bias"]

rates = st.floats(0.0, 1.0, exclude_max=True)


# ---- the layer-wise schedule ---------------------------------------------------------------
def test_layerwise_rates_examples():
    assert layerwise_rates(0, 0.9, 0.5) == []
    assert layerwise_rates(1, 0.9, 0.5) == [0.9]
    assert layerwise_rates(5, 0.9, 0.5) == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert layerwise_rates(3, 0, 0) == [0.0, 0.0, 0.0]
    assert doctest.testmod(plan_module).failed == 0


@given(count=st.integers(0, 300), first=rates, last=rates)
def test_layerwise_rates_interpolate_linearly(count, first, last):
    got = layerwise_rates(count, first, last)
    assert len(got) == count
    assert all(isinstance(r, float) for r in got)
    if count:
        assert got[0] == first
    if count >= 2:
        assert math.isclose(got[-1], last, abs_tol=1e-15)
        step = (last - first) / (count - 1)
        assert all(math.isclose(b - a, step, abs_tol=1e-12) for a, b in zip(got, got[1:]))
    lo, hi = min(first, last), max(first, last)
    assert all(lo - 1e-15 <= r <= hi + 1e-15 for r in got)


@pytest.mark.parametrize(
    "args, match",
    [
        ((-1, 0.9, 0.5), "count: expected a non-negative integer"),
        ((2.0, 0.9, 0.5), "count: expected a non-negative integer"),
        ((True, 0.9, 0.5), "count: expected a non-negative integer"),
        ((3, float("nan"), 0.5), "first: expected a finite number"),
        ((3, 0.9, "0.5"), "last: expected a finite number"),
        ((3, 0.9, float("inf")), "last: expected a finite number"),
    ],
)
def test_layerwise_rates_bad_input(args, match):
    with pytest.raises(InvalidArgumentError, match=match):
        layerwise_rates(*args)


# ---- resolution against tensors ----------------------------------------------------------
def test_dense_plan_keeps_everything():
    p = PruningPlan.dense()
    assert p.is_dense() and p.describe() == "dense (rho=0)"
    assert p.rates(SPECS) == {s.name: 0.0 for s in SPECS}


def test_uniform_prunes_weights_only_unless_prune_1d():
    r = PruningPlan.uniform(0.6).rates(SPECS)
    assert {n: r[n] for n in WEIGHTS} == dict.fromkeys(WEIGHTS, 0.6)
    assert all(r[s.name] == 0.0 for s in SPECS if s.name not in WEIGHTS)
    r1 = PruningPlan.uniform(0.6, prune_1d=True).rates(SPECS)
    assert all(r1[n] == 0.6 for n in WEIGHTS + VECTORS)
    assert r1["bn.running_mean"] == 0.0  # buffers are never pruned


def test_layerwise_follows_the_schedule_over_prunable_tensors():
    p = PruningPlan.layerwise()
    assert (p.first, p.last) == (PAPER_FIRST_RATE, PAPER_LAST_RATE)
    r = p.rates(SPECS)
    assert [r[n] for n in WEIGHTS] == layerwise_rates(3, PAPER_FIRST_RATE, PAPER_LAST_RATE) == [0.9, 0.7, 0.5]
    assert all(r[n] == 0.0 for n in VECTORS + ["bn.running_mean"])
    # with prune_1d the vectors join the schedule, in spec order
    r1 = PruningPlan.layerwise(0.8, 0.2, prune_1d=True).rates(SPECS)
    prunable = [s.name for s in SPECS if s.kind == "parameter"]
    assert [r1[n] for n in prunable] == layerwise_rates(len(prunable), 0.8, 0.2)


@given(first=rates, last=rates, m=st.integers(1, 12))
def test_layerwise_plan_uses_the_one_schedule_formula(first, last, m):
    specs = [TensorSpec(f"l{i}.weight", (3, 4), "float32") for i in range(m)]
    r = PruningPlan.layerwise(first, last).rates(specs)
    assert [r[s.name] for s in specs] == layerwise_rates(m, first, last)


def test_pattern_first_match_wins_and_default_applies():
    p = PruningPlan.by_pattern({"fc*.weight": 0.8, "*.weight": 0.3, "*.bias": 0.5}, default=0.1)
    r = p.rates(SPECS)
    assert r["fc1.weight"] == r["fc2.weight"] == 0.8
    assert r["conv.weight"] == 0.3
    assert r["fc1.bias"] == 0.0  # 1-D: not prunable without prune_1d
    r1 = PruningPlan.by_pattern({"*.bias": 0.5}, default=0.1, prune_1d=True).rates(SPECS)
    assert r1["fc1.bias"] == 0.5 and r1["bn.weight"] == 0.1 and r1["conv.weight"] == 0.1
    assert "2 patterns" in PruningPlan.by_pattern({"a": 0.1, "b": 0.2}).describe()


def test_describe_and_tensor_spec():
    assert PruningPlan.uniform(0.5, mode="magnitude").describe() == "uniform 50% magnitude"
    assert PruningPlan.layerwise().describe() == "layer-wise 90%->50% random"
    s = TensorSpec("w", (3, 4, 5), "float32")
    assert s.numel == 60 and s.prunable_by_default
    assert not TensorSpec("b", (3,), "float32").prunable_by_default
    assert not TensorSpec("m", (3, 3), "float32", kind="buffer").prunable_by_default


# ---- JSON round trip --------------------------------------------------------------------------
common = dict(
    mode=st.sampled_from(MODES),
    prune_1d=st.booleans(),
    seed=st.one_of(st.none(), st.integers(0, 2**63 - 1)),
)
patterns = st.dictionaries(st.text(min_size=1, max_size=12), rates, min_size=1, max_size=4)
plans = st.one_of(
    st.just(PruningPlan.dense()),
    st.builds(PruningPlan.uniform, rates, **common),
    st.builds(PruningPlan.layerwise, rates, rates, **common),
    st.builds(PruningPlan.by_pattern, patterns, default=rates, **common),
)


@given(p=plans)
def test_json_round_trip(p):
    text = json.dumps(p.to_json())  # what the manifest holds
    back = PruningPlan.from_json(json.loads(text))
    assert back == p
    assert back.to_json() == p.to_json()
    assert back.describe() == p.describe()


# ---- bad input ------------------------------------------------------------------------------
BAD = {
    "kind": (lambda: PruningPlan(kind="cubic"), "plan kind: expected uniform, layerwise or pattern, got 'cubic'"),
    "mode": (lambda: PruningPlan.uniform(0.5, mode="lottery"), "pruning mode: expected one of"),
    "rate one": (lambda: PruningPlan.uniform(1.0), r"uniform rate: expected a pruning rate in \[0, 1\), got 1.0"),
    "rate negative": (lambda: PruningPlan.uniform(-0.1), r"expected a pruning rate in \[0, 1\)"),
    "rate string": (lambda: PruningPlan.uniform("0.5"), "uniform rate: expected a number in"),
    "rate bool": (lambda: PruningPlan.uniform(True), "uniform rate: expected a number in"),
    "first nan": (lambda: PruningPlan.layerwise(float("nan"), 0.5), "first-layer rate: expected a pruning rate"),
    "last one": (lambda: PruningPlan.layerwise(0.9, 1.0), "last-layer rate: expected a pruning rate"),
    "default": (lambda: PruningPlan.by_pattern({"a": 0.1}, default=2.0), "default rate: expected"),
    "pattern empty": (lambda: PruningPlan.by_pattern({"": 0.1}), "name pattern: expected a non-empty string"),
    "pattern rate": (lambda: PruningPlan.by_pattern({"*.w": 1.5}), "rate for pattern '\\*.w': expected"),
    "no patterns": (lambda: PruningPlan.by_pattern({}), "pattern plan: expected a non-empty mapping"),
    "seed negative": (lambda: PruningPlan.uniform(0.5, seed=-1), r"mask seed: expected an integer in \[0, 2\*\*63\), got -1"),
    "seed too big": (lambda: PruningPlan.uniform(0.5, seed=2**63), "mask seed: expected"),
    "seed bool": (lambda: PruningPlan.uniform(0.5, seed=True), "mask seed: expected"),
    "json missing key": (lambda: PruningPlan.from_json({"kind": "uniform"}), "pruning plan JSON: expected the keys written by to_json"),
    "json not a mapping": (lambda: PruningPlan.from_json(None), "pruning plan JSON: expected"),
    "json bad pattern pair": (
        lambda: PruningPlan.from_json({**PruningPlan.dense().to_json(), "patterns": [["a"]]}),
        "pruning plan JSON: expected",
    ),
    "json bad pattern rate": (
        lambda: PruningPlan.from_json({**PruningPlan.dense().to_json(), "patterns": [["a", "x"]]}),
        "pruning plan JSON: expected",
    ),
    "json rate out of range": (
        lambda: PruningPlan.from_json({**PruningPlan.dense().to_json(), "rate": 1.5}),
        "uniform rate: expected a pruning rate",
    ),
}


@pytest.mark.parametrize("call, match", BAD.values(), ids=BAD.keys())
def test_bad_plans_are_refused_with_a_message(call, match):
    with pytest.raises(InvalidPlanError, match=match) as info:
        call()
    assert isinstance(info.value, ValueError)
