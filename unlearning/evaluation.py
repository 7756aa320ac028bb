"""How well a model has forgotten: accuracies and membership inference.

Notation: ``f(x)`` is the model's softmax output, ``l(x, y) = -log f(x)_y``
the per-sample cross-entropy loss, ``D_f`` the forget set (train samples to
be forgotten), ``D_r`` the retained train samples and ``D_t`` held-out test
samples. A model that has truly forgotten ``D_f`` treats it like ``D_t``:
an attacker should not tell the two apart.

Three membership-inference (MIA) measures, each documented on its function:

* :func:`mia_loss_logreg` -- cross-validated accuracy of a logistic
  regression telling ``D_f`` from ``D_t`` by loss; 0.5 = indistinguishable.
* :func:`mia_efficacy_svc` -- MIA-efficacy (Jia et al. 2023, "Model Sparsity
  Can Simplify Machine Unlearning"; SCRUB): fraction of ``D_f`` that an SVC
  trained on ``D_r`` vs ``D_t`` confidences calls non-member; higher = more
  forgotten.
* :func:`mia_loss_auc` -- ROC AUC of the loss separating ``D_t`` (positive)
  from ``D_f``; 0.5 = indistinguishable, > 0.5 = ``D_f`` still remembered.

Per-example measures against a retrained reference (issue #15):
:func:`lira_offline_scores` (likelihood-ratio attack with shadow models),
:func:`attack_auc` / :func:`tpr_at_fpr` on its scores, :func:`ks_forget_quality`
(TOFU's KS-test p-value) and :func:`privleak` (MUSE's relative AUC gap).

All functions run the model in eval mode without gradients on the device
its parameters live on (``device=None``) and restore its mode.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from deltastore.errors import InvalidArgumentError
from unlearning.data import Dataset
from unlearning.training import predict

__all__ = [
    "accuracy",
    "per_class_accuracy",
    "per_sample_loss",
    "true_class_confidence",
    "mia_loss_logreg",
    "mia_efficacy_svc",
    "mia_loss_auc",
    "evaluate",
    "logit_confidence",
    "lira_offline_scores",
    "attack_auc",
    "tpr_at_fpr",
    "ks_forget_quality",
    "privleak",
]


def _device_of(model: nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _logits(model: nn.Module, x: torch.Tensor, device) -> torch.Tensor:
    return predict(model, x, device=_device_of(model, device))


def _check_pair(x: torch.Tensor, y: torch.Tensor, what: str) -> torch.Tensor:
    y = torch.as_tensor(y).flatten().to(torch.int64).cpu()
    if x.shape[0] != y.numel():
        raise InvalidArgumentError(f"{what}: expected as many labels as inputs ({x.shape[0]}); got {y.numel()}")
    return y


def _acc_from_logits(logits: torch.Tensor, y: torch.Tensor) -> float:
    if y.numel() == 0:
        return math.nan
    return float((logits.argmax(dim=1) == y).float().mean())


def _loss_from_logits(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    # float64 so that the tiny losses of memorised samples do not round to 0.
    return nn.functional.cross_entropy(logits.double(), y, reduction="none").numpy()


def _conf_from_logits(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    probs = torch.softmax(logits.double(), dim=1)
    return probs.gather(1, y[:, None]).flatten().numpy()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, device=None) -> float:
    """Fraction of ``x`` whose arg-max logit equals ``y`` (NaN if ``x`` is empty)."""
    y = _check_pair(x, y, "accuracy")
    return _acc_from_logits(_logits(model, x, device), y)


def per_class_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, *, device=None
) -> list[float]:
    """Accuracy restricted to each true class ``c = 0..num_classes-1`` (NaN where absent)."""
    y = _check_pair(x, y, "per_class_accuracy")
    return _per_class_from_logits(_logits(model, x, device), y, num_classes)


def _per_class_from_logits(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[float]:
    hit = logits.argmax(dim=1) == y
    return [_mean_or_nan(hit[y == c]) for c in range(int(num_classes))]


def _mean_or_nan(mask: torch.Tensor) -> float:
    return float(mask.float().mean()) if mask.numel() else math.nan


def per_sample_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, device=None) -> np.ndarray:
    """``l(x_i, y_i) = -log softmax(model(x_i))[y_i]`` for every sample (float64)."""
    y = _check_pair(x, y, "per_sample_loss")
    return _loss_from_logits(_logits(model, x, device), y)


def true_class_confidence(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, device=None) -> np.ndarray:
    """``f(x_i)_{y_i}``, the softmax probability of the true class (float64)."""
    y = _check_pair(x, y, "true_class_confidence")
    return _conf_from_logits(_logits(model, x, device), y)


# --- attacks on precomputed features -------------------------------------------------


def _balanced(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, cap: int | None = None):
    """Subsample both to the same size ``min(len(a), len(b), cap)`` without replacement."""
    m = min(len(a), len(b), cap if cap is not None else len(a))
    return rng.choice(a, m, replace=False), rng.choice(b, m, replace=False)


_LOSS_FLOOR = 1e-30


def _logreg_attack(loss_forget: np.ndarray, loss_test: np.ndarray, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    f, t = _balanced(loss_forget, loss_test, rng)
    m = len(f)
    if m < 2:  # no fold could hold both classes
        return math.nan
    # log: losses are heavy-tailed (memorised ~1e-3, unseen up to ~10); a
    # linear threshold on the raw loss lands badly, on its log it does not.
    x = np.log(np.maximum(np.concatenate([f, t]), _LOSS_FLOOR))[:, None]
    y = np.concatenate([np.ones(m, dtype=np.int64), np.zeros(m, dtype=np.int64)])
    cv = StratifiedKFold(n_splits=min(5, m), shuffle=True, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression())
    return float(np.mean(cross_val_score(clf, x, y, cv=cv, scoring="accuracy")))


def _svc_efficacy(
    conf_retain: np.ndarray, conf_test: np.ndarray, conf_forget: np.ndarray, seed: int, max_per_class: int
) -> float:
    from sklearn.svm import SVC

    if len(conf_forget) == 0:
        return math.nan
    rng = np.random.default_rng(seed)
    r, t = _balanced(conf_retain, conf_test, rng, cap=max_per_class)
    if len(r) == 0:
        return math.nan
    x = np.concatenate([r, t])[:, None]
    y = np.concatenate([np.ones(len(r), dtype=np.int64), np.zeros(len(t), dtype=np.int64)])
    # Settings of the MIA-efficacy reference code (Jia et al. 2023; SCRUB).
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(x, y)
    pred = clf.predict(conf_forget[:, None])
    return float(np.mean(pred == 0))


def _auc(loss_forget: np.ndarray, loss_test: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(loss_forget) == 0 or len(loss_test) == 0:
        return math.nan
    scores = np.concatenate([loss_test, loss_forget])
    labels = np.concatenate([np.ones(len(loss_test)), np.zeros(len(loss_forget))])
    return float(roc_auc_score(labels, scores))


# --- public attacks on a model ---------------------------------------------------------


def mia_loss_logreg(
    model: nn.Module,
    x_forget: torch.Tensor,
    y_forget: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    seed: int = 0,
    *,
    device=None,
) -> float:
    """Loss-based membership inference: logistic regression, cross-validated.

    The feature is the log of the per-sample loss, ``log max(l(x, y), 1e-30)``
    (a monotone transform: the attack is still a threshold on the loss, but
    the logistic fit places that threshold well on heavy-tailed losses);
    forget samples get label 1 ("member"), held-out test samples label 0. The larger of the two sets
    is subsampled (without replacement, ``numpy`` generator seeded by
    ``seed``) to the size ``m`` of the smaller, so chance level is exactly
    0.5. A standardised logistic regression is scored by stratified
    ``k``-fold cross-validation, ``k = min(5, m)`` (shuffled, ``seed``), and
    the mean held-out accuracy is returned.

    Returns
    -------
    float
        Attack accuracy in ``[0, 1]``: about 0.5 is ideal (the attacker cannot
        tell forgotten from never-seen samples); near 1 means the forget set
        is still recognisable. NaN when ``m < 2``.
    """
    y_forget = _check_pair(x_forget, y_forget, "forget set")
    y_test = _check_pair(x_test, y_test, "test set")
    lf = _loss_from_logits(_logits(model, x_forget, device), y_forget)
    lt = _loss_from_logits(_logits(model, x_test, device), y_test)
    return _logreg_attack(lf, lt, seed)


def mia_efficacy_svc(
    model: nn.Module,
    x_retain: torch.Tensor,
    y_retain: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    x_forget: torch.Tensor,
    y_forget: torch.Tensor,
    seed: int = 0,
    *,
    max_per_class: int = 5000,
    device=None,
) -> float:
    """MIA-efficacy: fraction of forget samples an attacker calls non-members.

    The attacker is an RBF SVC (``C=3, gamma="auto"``, as in Jia et al. 2023
    and SCRUB) on one feature, the true-class confidence ``f(x)_y``. It is
    trained on retained train samples (label 1, member) against held-out
    test samples (label 0, non-member), both subsampled to the same size
    ``min(|D_r|, |D_t|, max_per_class)`` (``seed``), then applied to every
    forget sample::

        MIA-efficacy = |{x in D_f : SVC(f(x)_y) = 0}| / |D_f|

    Returns
    -------
    float
        In ``[0, 1]``; higher = more forgotten (the forget set looks like
        unseen data). A model retrained without ``D_f`` gives the reference
        level; note that values near 1 can exceed it, since failing on
        ``D_f`` entirely also looks "non-member". NaN if a set is empty.
    """
    y_retain = _check_pair(x_retain, y_retain, "retain set")
    y_test = _check_pair(x_test, y_test, "test set")
    y_forget = _check_pair(x_forget, y_forget, "forget set")
    cr = _conf_from_logits(_logits(model, x_retain, device), y_retain)
    ct = _conf_from_logits(_logits(model, x_test, device), y_test)
    cf = _conf_from_logits(_logits(model, x_forget, device), y_forget)
    return _svc_efficacy(cr, ct, cf, seed, max_per_class)


def mia_loss_auc(
    model: nn.Module,
    x_forget: torch.Tensor,
    y_forget: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    device=None,
) -> float:
    """ROC AUC of the per-sample loss as a member/non-member score.

    Held-out test samples are the positives and forget samples the
    negatives, scored by their loss ``l(x, y)``; so::

        AUC = P(l(test) > l(forget)) + 0.5 * P(l(test) = l(forget))

    for a random test and a random forget sample. 0.5 = indistinguishable
    (ideal after unlearning); > 0.5 = forget samples still have lower loss
    than unseen ones (remembered); < 0.5 = forget samples have *higher* loss
    than unseen ones (over-forgotten, itself a tell). NaN if a set is empty.
    """
    y_forget = _check_pair(x_forget, y_forget, "forget set")
    y_test = _check_pair(x_test, y_test, "test set")
    lf = _loss_from_logits(_logits(model, x_forget, device), y_forget)
    lt = _loss_from_logits(_logits(model, x_test, device), y_test)
    return _auc(lf, lt)


# --- everything at once ----------------------------------------------------------------


def evaluate(
    model: nn.Module,
    data: Dataset,
    forget_positions: torch.Tensor,
    *,
    target_class: int | None = None,
    reference: nn.Module | None = None,
    seed: int = 0,
    device=None,
) -> dict:
    """All the numbers of one unlearning result.

    Parameters
    ----------
    model : torch.nn.Module
        The model after unlearning (or before, for the baseline row).
    data : Dataset
        The data set the model was trained on.
    forget_positions : torch.Tensor
        Positions into ``data.x_train`` of the forget set ``D_f``; the rest
        of the train set is ``D_r``.
    target_class : int, optional
        For a class request: the forgotten class. The held-out set the MIAs
        compare ``D_f`` with is then the test samples *of that class* (the
        same distribution as ``D_f``), and the SVC of MIA-efficacy is trained
        on ``D_r`` vs the test samples of the other classes. Without it, both
        use the whole test set.
    reference : torch.nn.Module, optional
        A second model (e.g. retrained without ``D_f``) evaluated the same way.
    seed : int
        Seed of the attacks' subsampling and cross-validation.

    Returns
    -------
    dict
        ``forget_acc``        accuracy on ``D_f`` (train);
        ``retain_acc``        accuracy on ``D_r`` (train);
        ``test_acc``          accuracy on the whole test set;
        ``test_target_acc``   test accuracy on ``target_class`` (None without it);
        ``test_retain_acc``   test accuracy on the other classes (None without it);
        ``per_class_test_acc`` list of test accuracy per class (NaN if absent);
        ``mia_loss_logreg``, ``mia_efficacy_svc``, ``mia_loss_auc``
                              the three measures above;
        ``n_forget``, ``n_retain`` set sizes;
        ``reference``         the same dict (without ``reference``) for the
                              reference model, or None.
    """
    n = data.y_train.numel()
    forget_positions = torch.as_tensor(forget_positions, dtype=torch.int64).flatten().cpu()
    if forget_positions.numel() and (int(forget_positions.min()) < 0 or int(forget_positions.max()) >= n):
        raise InvalidArgumentError(f"forget_positions must lie in [0, {n}); got values outside")
    if target_class is not None and not 0 <= int(target_class) < data.num_classes:
        raise InvalidArgumentError(f"target_class must lie in [0, {data.num_classes}); got {target_class}")
    is_forget = torch.zeros(n, dtype=torch.bool)
    is_forget[forget_positions] = True
    out = _evaluate_one(model, data, is_forget, target_class, seed, device)
    out["reference"] = (
        _evaluate_one(reference, data, is_forget, target_class, seed, device) if reference is not None else None
    )
    return out


def _evaluate_one(model, data: Dataset, is_forget, target_class, seed, device) -> dict:
    # One forward pass over train and test; every number below reuses it.
    train_logits = _logits(model, data.x_train, device)
    test_logits = _logits(model, data.x_test, device)
    y_tr, y_te = data.y_train, data.y_test
    f_logits, f_y = train_logits[is_forget], y_tr[is_forget]
    r_logits, r_y = train_logits[~is_forget], y_tr[~is_forget]
    if target_class is None:
        held_mask = torch.ones_like(y_te, dtype=torch.bool)
        shadow_mask = held_mask
        test_target_acc = test_retain_acc = None
    else:
        held_mask = y_te == int(target_class)
        shadow_mask = ~held_mask
        test_target_acc = _acc_from_logits(test_logits[held_mask], y_te[held_mask])
        test_retain_acc = _acc_from_logits(test_logits[~held_mask], y_te[~held_mask])
    loss_f = _loss_from_logits(f_logits, f_y)
    loss_held = _loss_from_logits(test_logits[held_mask], y_te[held_mask])
    return {
        "forget_acc": _acc_from_logits(f_logits, f_y),
        "retain_acc": _acc_from_logits(r_logits, r_y),
        "test_acc": _acc_from_logits(test_logits, y_te),
        "test_target_acc": test_target_acc,
        "test_retain_acc": test_retain_acc,
        "per_class_test_acc": _per_class_from_logits(test_logits, y_te, data.num_classes),
        "mia_loss_logreg": _logreg_attack(loss_f, loss_held, seed),
        "mia_efficacy_svc": _svc_efficacy(
            _conf_from_logits(r_logits, r_y),
            _conf_from_logits(test_logits[shadow_mask], y_te[shadow_mask]),
            _conf_from_logits(f_logits, f_y),
            seed,
            5000,
        ),
        "mia_loss_auc": _auc(loss_f, loss_held),
        "n_forget": int(is_forget.sum()),
        "n_retain": int((~is_forget).sum()),
    }


# --- per-example attack, forget quality, privacy leak (issue #15) -----------------------


def logit_confidence(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``φ = log f(x)_y − log(1 − f(x)_y)``, the logit-scaled confidence LiRA models as Gaussian (float64).

    Computed from log-softmax so memorised samples (``f ≈ 1``) stay finite.
    """
    y = torch.as_tensor(y).flatten().to(torch.int64).cpu()
    logp = torch.log_softmax(logits.double(), dim=1)
    true = logp.gather(1, y[:, None]).flatten()
    others = logp.clone()
    others.scatter_(1, y[:, None], -math.inf)
    return (true - torch.logsumexp(others, dim=1)).numpy()


def lira_offline_scores(target_phi: np.ndarray, shadow_phi: np.ndarray, shadow_in: np.ndarray) -> np.ndarray:
    """Per-example likelihood-ratio scores, offline LiRA (Carlini et al. 2022, "Membership inference from first principles").

    Parameters
    ----------
    target_phi : (n,) logit confidences of the attacked model on ``n`` samples.
    shadow_phi : (k, n) the same for ``k`` shadow models.
    shadow_in : (k, n) bool, True where a shadow trained on that sample.

    Each sample gets its own non-member distribution from the shadows that did
    *not* train on it, ``N(μ_out(x), σ_out²)``; with few shadows per sample the
    variance is pooled over all samples (the paper's "fixed variance" variant).
    The score is ``(φ_target(x) − μ_out(x)) / σ_out``: the one-sided
    likelihood ratio test against "x was not trained on" is monotone in it,
    so higher = more member-like. Samples with no OUT shadow get NaN.
    """
    target_phi = np.asarray(target_phi, dtype=np.float64)
    shadow_phi = np.asarray(shadow_phi, dtype=np.float64)
    shadow_in = np.asarray(shadow_in, dtype=bool)
    if shadow_phi.shape != shadow_in.shape or shadow_phi.shape[1:] != target_phi.shape:
        raise InvalidArgumentError(
            f"expected shadow_phi and shadow_in of shape (k, {target_phi.shape[0]}); got {shadow_phi.shape} and {shadow_in.shape}"
        )
    out = ~shadow_in
    count = out.sum(axis=0)
    mu = np.where(count > 0, np.where(out, shadow_phi, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)
    resid = np.where(out, shadow_phi - mu[None, :], np.nan)
    sigma = float(np.nanstd(resid)) if np.isfinite(resid).any() else math.nan
    return (target_phi - mu) / max(sigma, 1e-12)


def attack_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """ROC AUC of scores (higher = member) separating claimed members from known non-members; 0.5 = chance."""
    from sklearn.metrics import roc_auc_score

    a = np.asarray(member_scores, dtype=np.float64)
    b = np.asarray(nonmember_scores, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) == 0 or len(b) == 0:
        return math.nan
    return float(roc_auc_score(np.r_[np.ones(len(a)), np.zeros(len(b))], np.r_[a, b]))


def tpr_at_fpr(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr: float = 0.05) -> float:
    """Fraction of claimed members whose score exceeds the non-members' ``1 − fpr`` quantile (per-example flag rate)."""
    a = np.asarray(member_scores, dtype=np.float64)
    b = np.asarray(nonmember_scores, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) == 0 or len(b) == 0:
        return math.nan
    return float(np.mean(a > np.quantile(b, 1.0 - float(fpr))))


def ks_forget_quality(losses_unlearned: np.ndarray, losses_retrained: np.ndarray) -> dict:
    """TOFU's "forget quality": two-sample Kolmogorov-Smirnov test between per-sample losses on the forget set.

    Returns ``{"statistic", "pvalue"}``; TOFU / OpenUnlearning report the
    p-value (high = the unlearned model's losses on the forget set are
    distributed like the retrained model's; < 0.05 = distinguishable).
    """
    from scipy.stats import ks_2samp

    a = np.asarray(losses_unlearned, dtype=np.float64)
    b = np.asarray(losses_retrained, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return {"statistic": math.nan, "pvalue": math.nan}
    res = ks_2samp(a, b)
    return {"statistic": float(res.statistic), "pvalue": float(res.pvalue)}


def privleak(auc_unlearned: float, auc_retrained: float) -> float:
    """MUSE's PrivLeak: ``(AUC_unlearned − AUC_retrained) / AUC_retrained`` (0 = leaks like retraining; > 0 = under-unlearned)."""
    if not (math.isfinite(auc_unlearned) and math.isfinite(auc_retrained)) or auc_retrained == 0:
        return math.nan
    return (float(auc_unlearned) - float(auc_retrained)) / float(auc_retrained)
