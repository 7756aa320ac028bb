"""Algorithms 2 and 3 (layer-wise partial updates): masks, schedules, equivalences, effect."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from deltastore.errors import InvalidArgumentError
from deltastore.plan import layerwise_rates
from unlearning.data import load_digits_split
from unlearning.models import build_model
from unlearning.partial_updates import (
    SelectionSchedule,
    circular_shift,
    derive_seed,
    flip_labels,
    gradient_ascent_unlearn,
    initial_masks,
    kept_count,
    label_flip_unlearn,
    mask_at_epoch,
    naive_gradient_ascent_unlearn,
    naive_label_flip_unlearn,
    selection_mask,
)
from unlearning.training import predict, train


# ---- helpers -----------------------------------------------------------------------
def _tiny_batch(n=24, shape=(1, 8, 8), classes=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=gen), torch.randint(0, classes, (n,), generator=gen)


def _hand_loop(model, x, y, *, epochs, lr, ascend, batch_size=None):
    """The naive algorithm written out plainly: eval mode, backward, p -/+= lr * grad."""
    m = copy.deepcopy(model)
    m.eval()
    step = len(y) if batch_size is None else batch_size
    for _ in range(epochs):
        for start in range(0, len(y), step):
            m.zero_grad()
            F.cross_entropy(m(x[start : start + step]), y[start : start + step]).backward()
            with torch.no_grad():
                for p in m.parameters():
                    if ascend:
                        p += lr * p.grad
                    else:
                        p -= lr * p.grad
    return m


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ---- dense = naive, bit for bit ---------------------------------------------------------
@pytest.mark.parametrize("name", ["mlp", "lenet"])
@pytest.mark.parametrize("batch_size", [None, 7])
def test_dense_label_flip_is_the_naive_loop(name, batch_size):
    model = build_model(name, in_shape=(1, 8, 8), num_classes=10, seed=1)
    x, y = _tiny_batch()
    seed = 5
    y_wrong = flip_labels(y, 10, seed=derive_seed(seed, "labels"))  # the documented contract
    ref = _hand_loop(model, x, y_wrong, epochs=3, lr=0.1, ascend=False, batch_size=batch_size)
    out = label_flip_unlearn(
        model, x, y, num_classes=10, epochs=3, lr=0.1, schedule=SelectionSchedule.dense(),
        seed=seed, batch_size=batch_size,
    )
    _assert_same_state(out, ref)
    _assert_same_state(naive_label_flip_unlearn(model, x, y, num_classes=10, epochs=3, lr=0.1, seed=seed,
                                                batch_size=batch_size), ref)


def test_dense_label_flip_two_classes_needs_no_internals():
    # With two classes the wrong label is forced (1 - y): no knowledge of the label seed needed.
    model = build_model("mlp", in_shape=(1, 8, 8), num_classes=2, seed=3)
    x, y = _tiny_batch(classes=2)
    ref = _hand_loop(model, x, 1 - y, epochs=4, lr=0.05, ascend=False)
    out = naive_label_flip_unlearn(model, x, y, num_classes=2, epochs=4, lr=0.05, seed=11)
    _assert_same_state(out, ref)


@pytest.mark.parametrize("name", ["mlp", "lenet"])
@pytest.mark.parametrize("batch_size", [None, 10])
def test_dense_gradient_ascent_is_the_naive_loop(name, batch_size):
    model = build_model(name, in_shape=(1, 8, 8), num_classes=10, seed=2)
    x, y = _tiny_batch(seed=4)
    ref = _hand_loop(model, x, y, epochs=3, lr=0.05, ascend=True, batch_size=batch_size)
    out = gradient_ascent_unlearn(
        model, x, y, epochs=3, lr=0.05, schedule=SelectionSchedule.dense(), seed=9, batch_size=batch_size
    )
    _assert_same_state(out, ref)
    _assert_same_state(naive_gradient_ascent_unlearn(model, x, y, epochs=3, lr=0.05, seed=0,
                                                     batch_size=batch_size), ref)


def test_original_untouched_and_bn_statistics_unchanged():
    model = build_model("lenet", in_shape=(1, 8, 8), num_classes=10, seed=0)
    model.train()
    before = copy.deepcopy(model.state_dict())
    x, y = _tiny_batch()
    out = label_flip_unlearn(model, x, y, num_classes=10, epochs=2, lr=0.1,
                             schedule=SelectionSchedule.for_label_flip(model), seed=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # eval mode during unlearning: running statistics never saw the forget set
    for k, v in out.state_dict().items():
        if "running" in k or "num_batches" in k:
            assert torch.equal(v, before[k]), k
    assert out is not model and out.training  # mode of the input restored
    assert any(not torch.equal(v, before[k]) for k, v in out.state_dict().items())


def test_zero_epochs_returns_an_equal_copy():
    model = build_model("mlp", in_shape=(1, 8, 8), num_classes=10, seed=0)
    x, y = _tiny_batch()
    out = gradient_ascent_unlearn(model, x, y, epochs=0, lr=1.0,
                                  schedule=SelectionSchedule.for_gradient_ascent(model), seed=0)
    assert out is not model
    _assert_same_state(out, model)


# ---- masks ------------------------------------------------------------------------------
shapes = st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple)
densities = st.floats(min_value=0.01, max_value=1.0, allow_nan=False)


@given(shape=shapes, density=densities, seed=st.integers(0, 2**40))
def test_mask_has_exactly_round_d_n_ones(shape, density, seed):
    mask = selection_mask(shape, density, seed=seed)
    n = mask.numel()
    assert mask.dtype == torch.bool and tuple(mask.shape) == shape
    assert int(mask.sum()) == kept_count(n, density) == min(n, round(density * n))
    assert torch.equal(mask, selection_mask(shape, density, seed=seed))  # deterministic


@given(shape=shapes, density=densities, seed=st.integers(0, 2**40), stride=st.integers(0, 50))
def test_circular_shift_preserves_count_and_moves_the_mask(shape, density, seed, stride):
    mask = selection_mask(shape, density, seed=seed)
    n, k = mask.numel(), int(mask.sum())
    shifted = circular_shift(mask, stride)
    assert shifted.shape == mask.shape and int(shifted.sum()) == k
    # it is a roll of the flattened mask
    flat = mask.flatten()
    assert torch.equal(shifted.flatten(), torch.cat([flat[n - stride % n:], flat[: n - stride % n]]))
    # a mask rolled by one equals itself only if it is constant
    if 0 < k < n:
        assert not torch.equal(circular_shift(mask, 1), mask)
    # S_e = S_0 shifted e times
    e = stride % 5
    rolled = mask
    for _ in range(e):
        rolled = circular_shift(rolled, 3)
    assert torch.equal(mask_at_epoch(mask, e, 3), rolled)


def test_masks_differ_between_tensors_and_seeds():
    a = selection_mask((40, 30), 0.5, seed=1)
    b = selection_mask((40, 30), 0.5, seed=2)
    assert not torch.equal(a, b)
    model = build_model("mlp", in_shape=(1, 8, 8), num_classes=10, seed=0)
    masks = initial_masks(model, SelectionSchedule.for_label_flip(model), seed=0)
    # density 1 tensors carry no mask; the last weight (density 0.3) does
    assert set(masks) == {"3.weight"}
    assert int(masks["3.weight"].sum()) == kept_count(5000, 0.3)


# ---- only selected entries move ------------------------------------------------------------
_SMALL = build_model("lenet", in_shape=(1, 8, 8), num_classes=10, seed=7)
_X, _Y = _tiny_batch(n=12, seed=3)


@given(
    first=densities, last=densities, vector=densities, seed=st.integers(0, 2**31),
    ascend=st.booleans(), epochs=st.integers(1, 2),
)
def test_entries_outside_the_selection_are_bit_identical(first, last, vector, seed, ascend, epochs):
    schedule = SelectionSchedule.layerwise(_SMALL, first, last, vector_density=vector)
    if ascend:
        out = gradient_ascent_unlearn(_SMALL, _X, _Y, epochs=epochs, lr=0.5, schedule=schedule, seed=seed)
    else:
        out = label_flip_unlearn(_SMALL, _X, _Y, num_classes=10, epochs=epochs, lr=0.5,
                                 schedule=schedule, seed=seed)
    masks0 = initial_masks(_SMALL, schedule, seed=seed)
    before = dict(_SMALL.named_parameters())
    for name, p in out.named_parameters():
        if name not in masks0:
            continue
        allowed = torch.zeros_like(masks0[name])
        for e in range(epochs):
            allowed |= mask_at_epoch(masks0[name], e, 1)
        old = before[name].detach()
        # bit-level comparison (also distinguishes -0.0 from 0.0)
        same_bits = p.detach().view(torch.int32) == old.view(torch.int32)
        assert bool(same_bits[~allowed].all()), name


def test_mask_stride_kept_option():
    model = build_model("mlp", in_shape=(1, 8, 8), num_classes=10, seed=0)
    sched = SelectionSchedule.layerwise(model, 0.5, 0.5, shift="kept")
    x, y = _tiny_batch()
    out = gradient_ascent_unlearn(model, x, y, epochs=2, lr=0.1, schedule=sched, seed=1)
    m0 = initial_masks(model, sched, seed=1)["1.weight"]
    allowed = m0 | mask_at_epoch(m0, 1, kept_count(m0.numel(), 0.5))
    changed = out.get_parameter("1.weight") != model.get_parameter("1.weight")
    assert bool((changed & ~allowed).sum() == 0)


# ---- labels --------------------------------------------------------------------------------
@given(
    classes=st.integers(2, 12), n=st.integers(0, 200), seed=st.integers(0, 2**40), data=st.data()
)
def test_flip_labels_never_the_true_label(classes, n, seed, data):
    y = torch.tensor(data.draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n)),
                     dtype=torch.int64)
    flipped = flip_labels(y, classes, seed=seed)
    assert flipped.shape == y.shape and flipped.dtype == torch.int64
    assert bool((flipped != y).all())
    assert bool(((flipped >= 0) & (flipped < classes)).all())
    assert torch.equal(flipped, flip_labels(y, classes, seed=seed))


def test_flip_labels_reaches_every_wrong_class():
    y = torch.full((2000,), 4, dtype=torch.int64)
    assert set(flip_labels(y, 10, seed=0).tolist()) == set(range(10)) - {4}


# ---- schedules -------------------------------------------------------------------------------
def test_layerwise_schedule_interpolates_over_weight_tensors():
    model = build_model("lenet", in_shape=(1, 8, 8), num_classes=10, seed=0)
    sched = SelectionSchedule.layerwise(model, 0.9, 0.1, vector_density=0.7)
    weights = [n for n, p in model.named_parameters() if p.ndim >= 2]
    got = [sched.density(n) for n in weights]
    expected = [0.9 + (0.1 - 0.9) * i / (len(weights) - 1) for i in range(len(weights))]
    assert got == pytest.approx(expected)
    assert got == layerwise_rates(len(weights), 0.9, 0.1)  # the pruning plans' formula, bit for bit
    assert all(sched.density(n) == 0.7 for n, p in model.named_parameters() if p.ndim < 2)
    lf = SelectionSchedule.for_label_flip(model)
    ga = SelectionSchedule.for_gradient_ascent(model)
    lf_w = [lf.density(n) for n in weights]
    ga_w = [ga.density(n) for n in weights]
    assert lf_w == sorted(lf_w, reverse=True) and lf_w[0] == 1.0 and lf_w[-1] < 1.0
    assert ga_w == sorted(ga_w) and ga_w[-1] == 1.0 and ga_w[0] < 1.0
    assert SelectionSchedule.dense().is_dense() and not lf.is_dense()


# Not down to subnormals: 1.0 + (5e-324 - 1.0) * 1.0 is 0.0, a density the schedule rightly refuses.
_densities = st.floats(1e-6, 1.0)


@given(first=_densities, last=_densities, vector=_densities, name=st.sampled_from(["mlp", "lenet"]))
def test_layerwise_schedule_is_the_plan_schedule_over_weights(first, last, vector, name):
    model = _MODELS[name]
    sched = SelectionSchedule.layerwise(model, first, last, vector_density=vector)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert list(sched.densities) == [n for n, _ in params]  # registration order
    weights = [n for n, p in params if p.ndim >= 2]
    assert [sched.density(n) for n in weights] == layerwise_rates(len(weights), first, last)
    assert all(sched.density(n) == vector for n, p in params if p.ndim < 2)


_MODELS = {name: build_model(name, in_shape=(1, 8, 8), num_classes=10, seed=0) for name in ("mlp", "lenet")}


def test_schedule_validation():
    model = build_model("mlp", in_shape=(1, 8, 8), num_classes=10, seed=0)
    for bad in (0.0, 1.5, -0.1, float("nan"), True, "0.5"):
        with pytest.raises(InvalidArgumentError):
            SelectionSchedule.from_mapping({"1.weight": bad})
    with pytest.raises(InvalidArgumentError):
        SelectionSchedule(shift=-1)
    sched = SelectionSchedule.from_mapping({"no.such.weight": 0.5})
    with pytest.raises(InvalidArgumentError, match="does not have"):
        sched.resolve(model)
    assert SelectionSchedule.from_mapping({"1.weight": 0.5}, default=0.2).resolve(model) == {
        "1.weight": 0.5, "1.bias": 0.2, "3.weight": 0.2, "3.bias": 0.2,
    }


def test_argument_validation():
    model = build_model("mlp", in_shape=(1, 8, 8), num_classes=10, seed=0)
    x, y = _tiny_batch()
    dense = SelectionSchedule.dense()
    with pytest.raises(InvalidArgumentError):
        label_flip_unlearn(model, x, y[:3], num_classes=10, epochs=1, lr=0.1, schedule=dense)
    with pytest.raises(InvalidArgumentError):
        label_flip_unlearn(model, x[:0], y[:0], num_classes=10, epochs=1, lr=0.1, schedule=dense)
    with pytest.raises(InvalidArgumentError):
        label_flip_unlearn(model, x, y, num_classes=1, epochs=1, lr=0.1, schedule=dense)
    with pytest.raises(InvalidArgumentError):
        gradient_ascent_unlearn(model, x, y, epochs=-1, lr=0.1, schedule=dense)
    with pytest.raises(InvalidArgumentError):
        gradient_ascent_unlearn(model, x, y, epochs=1, lr=0.1, schedule=dense, batch_size=0)


# ---- effect on digits -------------------------------------------------------------------------
FORGET = 3


@pytest.fixture(scope="module")
def digits_mlp():
    data = load_digits_split(seed=0)
    model = build_model("mlp", in_shape=data.in_shape, num_classes=data.num_classes, seed=0)
    train(model, data, epochs=5, batch_size=32, lr=1e-3, seed=0)
    return data, model


def _class_accuracy(model, data):
    pred = predict(model, data.x_test).argmax(1)
    target = data.y_test == FORGET
    forget_acc = float((pred[target] == FORGET).float().mean())
    retain_acc = float((pred[~target] == data.y_test[~target]).float().mean())
    return forget_acc, retain_acc


@pytest.mark.parametrize("algorithm", ["label_flip", "gradient_ascent"])
def test_partial_unlearning_forgets_class_3_on_digits(digits_mlp, algorithm):
    data, model = digits_mlp
    forget_before, retain_before = _class_accuracy(model, data)
    assert forget_before > 0.9 and retain_before > 0.9
    pos = data.positions_of_class(FORGET)
    x, y = data.x_train[pos], data.y_train[pos]
    if algorithm == "label_flip":
        out = label_flip_unlearn(model, x, y, num_classes=data.num_classes, epochs=5, lr=0.05,
                                 schedule=SelectionSchedule.for_label_flip(model), seed=0)
    else:
        out = gradient_ascent_unlearn(model, x, y, epochs=3, lr=0.05,
                                      schedule=SelectionSchedule.for_gradient_ascent(model), seed=0)
    forget_after, retain_after = _class_accuracy(out, data)
    assert forget_after < 0.3
    # forgetting by wrecking the model would also pass the line above
    assert retain_after > 0.7
    assert _class_accuracy(model, data) == (forget_before, retain_before)  # original intact
