"""All numbers of one model on one request, against the retrained reference."""

from __future__ import annotations

import math

import numpy as np
import torch

from unlearning.evaluation import (
    attack_auc,
    evaluate,
    ks_forget_quality,
    lira_offline_scores,
    logit_confidence,
    privleak,
    tpr_at_fpr,
)
from unlearning.training import predict

from .testbed import Run


def _acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean()) if y.numel() else math.nan


class Shadowed:
    """The shadows' logit confidences, computed once per run."""

    def __init__(self, run: Run, shadow: dict):
        self.inside = shadow["in"]
        self.train_phi = np.stack([logit_confidence(lg, run.data.y_train) for lg in shadow["train_logits"]])
        self.test_phi = np.stack([logit_confidence(lg, run.data.y_test) for lg in shadow["test_logits"]])


def measure(model, run: Run, pos: torch.Tensor, *, target_class: int | None, shadows: Shadowed,
            reference_losses: np.ndarray | None, reference_auc: float | None) -> dict:
    data = run.data
    n = data.y_train.numel()
    is_f = torch.zeros(n, dtype=torch.bool)
    is_f[pos] = True
    tl = predict(model, data.x_train)
    te = predict(model, data.x_test)
    if not (torch.isfinite(tl).all() and torch.isfinite(te).all()):
        # A method that produced non-finite weights: no metric is meaningful; the verdict says so.
        return {"nonfinite": True, "forget_losses": np.full(int(is_f.sum()), np.nan), "ks_pvalue": math.nan,
                **{k: math.nan for k in ("forget_acc", "forget_true_acc", "retain_acc", "test_acc", "untouched_mislabeled_acc",
                                         "mia_loss_logreg", "mia_efficacy_svc", "mia_loss_auc", "lira_auc", "lira_tpr5",
                                         "ks_stat", "privleak")}}
    untouched = torch.zeros(n, dtype=torch.bool)
    untouched[run.mislabeled] = True
    untouched &= ~is_f
    losses = torch.nn.functional.cross_entropy(tl[is_f].double(), data.y_train[is_f], reduction="none").numpy()
    mia = evaluate(model, data, pos, target_class=target_class, seed=run.seed)
    # Offline LiRA: forget samples (claimed members) against held-out test samples (non-members);
    # for a class request, the test samples of that class.
    s_train = lira_offline_scores(logit_confidence(tl, data.y_train), shadows.train_phi, shadows.inside)
    s_test = lira_offline_scores(logit_confidence(te, data.y_test), shadows.test_phi, np.zeros_like(shadows.test_phi, dtype=bool))
    held = np.ones(len(s_test), dtype=bool) if target_class is None else (data.y_test == target_class).numpy()
    auc = attack_auc(s_train[is_f.numpy()], s_test[held])
    row = {
        "nonfinite": False,
        "forget_acc": _acc(tl[is_f], data.y_train[is_f]),
        "forget_true_acc": _acc(tl[is_f], run.true_y[is_f]),
        "retain_acc": _acc(tl[~is_f], data.y_train[~is_f]),
        "test_acc": _acc(te, data.y_test),
        "untouched_mislabeled_acc": _acc(tl[untouched], data.y_train[untouched]),
        "mia_loss_logreg": mia["mia_loss_logreg"],
        "mia_efficacy_svc": mia["mia_efficacy_svc"],
        "mia_loss_auc": mia["mia_loss_auc"],
        "lira_auc": auc,
        "lira_tpr5": tpr_at_fpr(s_train[is_f.numpy()], s_test[held], 0.05),
        "forget_losses": losses,
    }
    if reference_losses is not None:
        ks = ks_forget_quality(losses, reference_losses)
        row["ks_pvalue"], row["ks_stat"] = ks["pvalue"], ks["statistic"]
        row["privleak"] = privleak(auc, reference_auc)
    return row
