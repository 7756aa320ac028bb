"""unlearning.evaluation: accuracies and the three membership-inference measures."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from deltastore.errors import InvalidArgumentError
from unlearning.data import load_digits_split
from unlearning.evaluation import (
    accuracy,
    evaluate,
    mia_efficacy_svc,
    mia_loss_auc,
    mia_loss_logreg,
    per_class_accuracy,
    per_sample_loss,
    true_class_confidence,
)
from unlearning.models import build_model
from unlearning.training import train


class OneHotOfFirstFeature(nn.Module):
    """Predicts class ``int(x[:, 0])``: a model whose every answer is known."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        return 10.0 * nn.functional.one_hot(x[:, 0].long(), self.num_classes).float()


class LossIsMonotoneInX(nn.Module):
    """Two logits ``[0, x]``: with label 0 the loss is ``log(1 + e^x)``, increasing in x."""

    def forward(self, x):
        return torch.stack([torch.zeros_like(x[:, 0]), x[:, 0]], dim=1)


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


@pytest.fixture(scope="module")
def class3(digits):
    """An MLP trained on everything and one retrained without class 3."""
    forget = digits.positions_of_class(3)
    keep = torch.nonzero(digits.y_train != 3).flatten()
    full = build_model("mlp", in_shape=digits.in_shape, num_classes=10, seed=0)
    train(full, digits, epochs=2, batch_size=32, seed=0)
    retrained = build_model("mlp", in_shape=digits.in_shape, num_classes=10, seed=0)
    train(retrained, digits, epochs=2, batch_size=32, seed=0, train_indices=keep)
    return full, retrained, forget


@pytest.fixture(scope="module")
def memoriser(digits):
    """A tiny-data MLP that has memorised train positions 0..39 (loss ~1e-3 there)."""
    model = build_model("mlp", in_shape=digits.in_shape, num_classes=10, seed=0)
    out = train(model, digits, epochs=60, batch_size=40, lr=3e-3, seed=0, train_indices=torch.arange(40))
    assert out["losses"][-1] < 0.05
    return model


# --- accuracies ---------------------------------------------------------------------


def test_accuracy_on_a_hand_built_model():
    model = OneHotOfFirstFeature(3)
    x = torch.tensor([[0.0], [1.0], [2.0], [2.0], [1.0]])
    y = torch.tensor([0, 1, 1, 2, 0])
    assert accuracy(model, x, y) == pytest.approx(3 / 5)
    per_class = per_class_accuracy(model, x, y, 4)
    assert per_class[:3] == pytest.approx([1 / 2, 1 / 2, 1.0])
    assert math.isnan(per_class[3])  # class 3 absent
    assert math.isnan(accuracy(model, x[:0], y[:0]))
    with pytest.raises(InvalidArgumentError, match="labels"):
        accuracy(model, x, y[:3])


def test_loss_and_confidence_agree():
    model = LossIsMonotoneInX()
    x = torch.tensor([[-2.0], [0.0], [3.0]])
    y = torch.zeros(3, dtype=torch.int64)
    loss = per_sample_loss(model, x, y)
    conf = true_class_confidence(model, x, y)
    assert loss == pytest.approx([math.log1p(math.exp(v)) for v in (-2.0, 0.0, 3.0)])
    assert conf == pytest.approx([math.exp(-v) for v in loss])


# --- MIA: formulas ------------------------------------------------------------------


@given(
    forget=st.lists(st.integers(-5, 5), min_size=1, max_size=30),
    test=st.lists(st.integers(-5, 5), min_size=1, max_size=30),
)
def test_auc_is_the_documented_probability(forget, test):
    # loss is increasing in x, so P(loss_test > loss_forget) = P(x_test > x_forget).
    model = LossIsMonotoneInX()
    xf = torch.tensor(forget, dtype=torch.float32)[:, None]
    xt = torch.tensor(test, dtype=torch.float32)[:, None]
    zf, zt = torch.zeros(len(forget), dtype=torch.int64), torch.zeros(len(test), dtype=torch.int64)
    pairs = [(t, f) for t in test for f in forget]
    expected = (sum(t > f for t, f in pairs) + 0.5 * sum(t == f for t, f in pairs)) / len(pairs)
    auc = mia_loss_auc(model, xf, zf, xt, zt)
    assert auc == pytest.approx(expected)
    assert auc + mia_loss_auc(model, xt, zt, xf, zf) == pytest.approx(1.0)


def test_degenerate_sets_give_nan(digits):
    model = build_model("mlp", in_shape=digits.in_shape, num_classes=10, seed=0)
    x, y = digits.x_test, digits.y_test
    assert math.isnan(mia_loss_logreg(model, x[:1], y[:1], x, y, 0))
    assert math.isnan(mia_loss_auc(model, x[:0], y[:0], x, y))
    assert math.isnan(mia_efficacy_svc(model, x, y, x, y, x[:0], y[:0], 0))


# --- MIA: behaviour on real models --------------------------------------------------


def test_mia_near_chance_for_unseen_samples(digits):
    # The model never saw positions 0..299: forget and test are both unseen.
    model = build_model("mlp", in_shape=digits.in_shape, num_classes=10, seed=0)
    train(model, digits, epochs=2, batch_size=32, seed=0, train_indices=torch.arange(300, 1347))
    xf, yf = digits.x_train[:300], digits.y_train[:300]
    xt, yt = digits.x_test[:300], digits.y_test[:300]
    assert abs(mia_loss_logreg(model, xf, yf, xt, yt, seed=0) - 0.5) < 0.1
    assert abs(mia_loss_auc(model, xf, yf, xt, yt) - 0.5) < 0.1
    untrained = build_model("mlp", in_shape=digits.in_shape, num_classes=10, seed=1)
    assert abs(mia_loss_logreg(untrained, xf, yf, xt, yt, seed=0) - 0.5) < 0.1
    assert abs(mia_loss_auc(untrained, xf, yf, xt, yt) - 0.5) < 0.1


def test_mia_detects_memorised_samples(digits, memoriser):
    xf, yf = digits.x_train[20:40], digits.y_train[20:40]  # memorised
    xt, yt = digits.x_test[:100], digits.y_test[:100]
    # Measured 0.80 and 0.80 (a 40-sample MLP still gets ~75 % of test right,
    # so many unseen samples have low loss too).
    assert mia_loss_logreg(memoriser, xf, yf, xt, yt, seed=0) > 0.7
    assert mia_loss_auc(memoriser, xf, yf, xt, yt) > 0.7


def test_mia_efficacy_separates_members_from_unseen(digits, memoriser):
    xr, yr = digits.x_train[:20], digits.y_train[:20]  # members the SVC learns from
    member = mia_efficacy_svc(
        memoriser, xr, yr, digits.x_test, digits.y_test, digits.x_train[20:40], digits.y_train[20:40], seed=0
    )
    unseen = mia_efficacy_svc(
        memoriser, xr, yr, digits.x_test, digits.y_test, digits.x_train[100:300], digits.y_train[100:300], seed=0
    )
    assert 0.0 <= member <= 0.1  # memorised: called members, i.e. not forgotten
    assert unseen >= 0.25 and unseen > member + 0.2


# --- evaluate -----------------------------------------------------------------------


KEYS = {
    "forget_acc", "retain_acc", "test_acc", "test_target_acc", "test_retain_acc",
    "per_class_test_acc", "mia_loss_logreg", "mia_efficacy_svc", "mia_loss_auc",
    "n_forget", "n_retain", "reference",
}


def test_evaluate_class_request(digits, class3):
    full, retrained, forget = class3
    out = evaluate(full, digits, forget, target_class=3, reference=retrained, seed=0)
    assert set(out) == KEYS and set(out["reference"]) == KEYS - {"reference"}
    assert out["n_forget"] == forget.numel() and out["n_forget"] + out["n_retain"] == 1347
    assert out["forget_acc"] > 0.8 and out["test_target_acc"] > 0.8 and out["test_retain_acc"] > 0.8
    assert len(out["per_class_test_acc"]) == 10
    ref = out["reference"]
    # Never saw a 3: cannot name one, still knows the rest.
    assert ref["forget_acc"] < 0.05 and ref["test_target_acc"] < 0.05
    assert ref["per_class_test_acc"][3] == pytest.approx(ref["test_target_acc"])
    assert ref["test_retain_acc"] > 0.8
    # Train and test 3s are both unseen by the reference: indistinguishable by loss;
    # and its confidence on them is low, so the SVC calls them non-members.
    assert abs(ref["mia_loss_auc"] - 0.5) < 0.15
    assert ref["mia_efficacy_svc"] > 0.9
    for res in (out, ref):
        for key in ("mia_loss_logreg", "mia_efficacy_svc", "mia_loss_auc"):
            assert 0.0 <= res[key] <= 1.0


def test_evaluate_matches_the_single_measures(digits, class3):
    full, _, _ = class3
    forget = torch.arange(0, 1347, 7)
    keep = torch.ones(1347, dtype=torch.bool)
    keep[forget] = False
    out = evaluate(full, digits, forget, seed=4)
    xf, yf = digits.x_train[forget], digits.y_train[forget]
    xr, yr = digits.x_train[keep], digits.y_train[keep]
    xt, yt = digits.x_test, digits.y_test
    assert out["test_target_acc"] is None and out["test_retain_acc"] is None and out["reference"] is None
    assert out["forget_acc"] == pytest.approx(accuracy(full, xf, yf))
    assert out["retain_acc"] == pytest.approx(accuracy(full, xr, yr))
    assert out["test_acc"] == pytest.approx(accuracy(full, xt, yt))
    assert out["mia_loss_logreg"] == pytest.approx(mia_loss_logreg(full, xf, yf, xt, yt, seed=4))
    assert out["mia_efficacy_svc"] == pytest.approx(mia_efficacy_svc(full, xr, yr, xt, yt, xf, yf, seed=4))
    assert out["mia_loss_auc"] == pytest.approx(mia_loss_auc(full, xf, yf, xt, yt))


def test_evaluate_rejects_bad_arguments(digits, class3):
    full, _, _ = class3
    with pytest.raises(InvalidArgumentError, match="forget_positions"):
        evaluate(full, digits, torch.tensor([1347]))
    with pytest.raises(InvalidArgumentError, match="target_class"):
        evaluate(full, digits, torch.tensor([0]), target_class=10)
