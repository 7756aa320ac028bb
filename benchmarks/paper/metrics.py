"""Accuracy numbers of one model: targeted / retained test accuracy, per class, train sets.

"Targeted" accuracy is measured on the test images of the targeted class and
"retained" accuracy on the test images of every other class (the paper's
D_t / D_r columns); train-set accuracies on the forget and retain sets are
kept beside them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from unlearning.data import Dataset
from unlearning.training import predict


def _acc(hit: torch.Tensor) -> float:
    return float(hit.float().mean()) if hit.numel() else math.nan


def class_metrics(model: nn.Module, data: Dataset, target_class: int, *, device) -> dict:
    """Accuracies of ``model`` for a request that forgets class ``target_class``."""
    test_hit = predict(model, data.x_test, device=device).argmax(1) == data.y_test
    train_hit = predict(model, data.x_train, device=device).argmax(1) == data.y_train
    is_t_test = data.y_test == target_class
    is_t_train = data.y_train == target_class
    return {
        "target": _acc(test_hit[is_t_test]),
        "retained": _acc(test_hit[~is_t_test]),
        "test": _acc(test_hit),
        "per_class": [_acc(test_hit[data.y_test == c]) for c in range(data.num_classes)],
        "forget_train": _acc(train_hit[is_t_train]),
        "retain_train": _acc(train_hit[~is_t_train]),
    }


def test_accuracies(model: nn.Module, data: Dataset, target_class: int, *, device) -> dict:
    """Targeted and retained test accuracy only (the training curves: no pass over the train set)."""
    test_hit = predict(model, data.x_test, device=device).argmax(1) == data.y_test
    is_t = data.y_test == target_class
    return {"target": _acc(test_hit[is_t]), "retained": _acc(test_hit[~is_t])}


def sample_metrics(model: nn.Module, data: Dataset, forget_positions: torch.Tensor, *, device) -> dict:
    """Accuracies for a request that forgets the train samples at ``forget_positions``."""
    train_hit = predict(model, data.x_train, device=device).argmax(1) == data.y_train
    test_hit = predict(model, data.x_test, device=device).argmax(1) == data.y_test
    is_f = torch.zeros(data.y_train.numel(), dtype=torch.bool)
    is_f[forget_positions] = True
    return {"forget": _acc(train_hit[is_f]), "retain": _acc(train_hit[~is_f]), "test": _acc(test_hit)}
