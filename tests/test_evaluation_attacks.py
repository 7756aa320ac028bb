"""unlearning.evaluation: LiRA (offline), attack AUC / TPR, KS forget quality, PrivLeak."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deltastore.errors import InvalidArgumentError
from unlearning.evaluation import attack_auc, ks_forget_quality, lira_offline_scores, logit_confidence, privleak, tpr_at_fpr


def test_logit_confidence_is_log_odds_and_finite_when_memorised():
    logits = torch.tensor([[0.0, 0.0], [50.0, -50.0], [1.0, 2.0]])
    phi = logit_confidence(logits, torch.tensor([0, 0, 1]))
    assert phi[0] == pytest.approx(0.0)
    assert phi[1] == pytest.approx(100.0)  # p/(1-p) = e^100: finite, unlike log(p) - log(1-p) in float
    assert phi[2] == pytest.approx(1.0)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 8), st.integers(3, 30), st.integers(0, 2**31 - 1))
def test_lira_scores_are_standardised_against_the_out_shadows(k, n, seed):
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(k, n))
    inside = rng.random((k, n)) < 0.5
    target = rng.normal(size=n)
    s = lira_offline_scores(target, phi, inside)
    mus = [phi[~inside[:, i], i].mean() if (~inside[:, i]).any() else math.nan for i in range(n)]
    resid = [phi[j, i] - mus[i] for i in range(n) for j in range(k) if not inside[j, i]]
    sigma = np.std(resid) if resid else math.nan
    for i in range(n):
        if math.isnan(mus[i]):
            assert math.isnan(s[i])
        else:
            assert s[i] == pytest.approx((target[i] - mus[i]) / max(sigma, 1e-12), rel=1e-9, abs=1e-9)


def test_lira_flags_a_memorised_sample_and_not_an_unseen_one():
    # 8 shadows; sample 0 OUT everywhere: its OUT confidence is ~0; the target is confident (memorised).
    rng = np.random.default_rng(0)
    shadow = rng.normal(0.0, 1.0, size=(8, 50))
    inside = np.zeros((8, 50), dtype=bool)
    target = rng.normal(0.0, 1.0, size=50)
    target[:10] += 6.0  # ten memorised samples
    s = lira_offline_scores(target, shadow, inside)
    assert attack_auc(s[:10], s[10:]) > 0.95
    assert tpr_at_fpr(s[:10], s[10:], 0.05) > 0.9
    assert 0.2 < attack_auc(s[10:30], s[30:]) < 0.8


def test_lira_rejects_mismatched_shapes():
    with pytest.raises(InvalidArgumentError, match="shape"):
        lira_offline_scores(np.zeros(3), np.zeros((2, 4)), np.zeros((2, 4), dtype=bool))


def test_ks_forget_quality_and_privleak():
    rng = np.random.default_rng(1)
    a = rng.normal(size=200)
    assert ks_forget_quality(a, a)["pvalue"] == pytest.approx(1.0)
    assert ks_forget_quality(a, a + 2.0)["pvalue"] < 1e-6
    assert math.isnan(ks_forget_quality([], a)["pvalue"])
    assert privleak(0.75, 0.5) == pytest.approx(0.5)
    assert privleak(0.5, 0.5) == 0.0
    assert math.isnan(privleak(float("nan"), 0.5))
    assert math.isnan(attack_auc([], [1.0]))
