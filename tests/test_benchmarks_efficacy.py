"""The efficacy testbed's quick run (issue #15): the premise holds and every method's row is produced.

One quick run (MLP, one seed, two shadows; ~1.5-3.5 min on 2 shared cores) feeds all assertions.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.efficacy import run
from benchmarks.efficacy.testbed import REQUESTS


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("efficacy")
    res = run(quick=True, out=str(out), log=lambda *a: None)
    res["_dir"] = out
    return res


def _row(result, request, method):
    (row,) = [r for r in result["records"] if r["request"] == request and r["method"] == method]
    return row


def test_premise_trained_model_memorises_the_wrong_labels_and_the_retrained_one_does_not(result):
    trained = _row(result, "mislabeled", "trained (no unlearning)")
    ref = _row(result, "mislabeled", "retrain")
    assert trained["forget_acc"] >= 0.8  # fits the forgotten samples' wrong labels
    assert ref["forget_acc"] <= 0.2  # the reference does not ...
    assert ref["forget_true_acc"] >= 0.8  # ... it predicts their true class instead
    assert ref["untouched_mislabeled_acc"] >= 0.7  # and still fits the other wrong labels (the collateral to avoid)
    assert trained["test_acc"] >= 0.85 and ref["test_acc"] >= 0.85
    # The per-example attack and the KS test both separate trained from retrained on (a).
    assert trained["lira_auc"] > ref["lira_auc"] + 0.3
    assert trained["ks_pvalue"] < 0.05 and ref["ks_pvalue"] == pytest.approx(1.0)
    assert trained["privleak"] > 0.5 and ref["privleak"] == 0.0


def test_every_method_has_a_row_per_request_with_costs(result):
    methods = {r["method"] for r in result["records"]}
    assert {"retrain", "amnesiac", "amnesiac+repair0.05", "precise", "label-flip (Alg. 2)", "grad-ascent (Alg. 3)",
            "amnesiac[default]", "repair-only0.05"} <= methods
    for request in REQUESTS:
        rows = [r for r in result["records"] if r["request"] == request]
        assert len(rows) == len(methods)
        ref = _row(result, request, "retrain")
        assert ref["cost_sample_gradients"] == ref["retrain_sample_gradients"] > 0
        # amnesiac subtraction does no gradient work; repair does k steps of one batch each
        assert _row(result, request, "amnesiac")["cost_sample_gradients"] == 0
        assert _row(result, request, "amnesiac")["extra"]["steps_subtracted"] > 0
        rep = _row(result, request, "amnesiac+repair0.05")
        assert rep["cost_steps"] == round(0.05 * result["runs"][0]["train_steps"])
        # sample-precise removal: one gradient per forgotten sample per epoch
        assert _row(result, request, "precise")["cost_sample_gradients"] == 60 * result["runs"][0]["request_sizes"][request]


def test_class_request_reference_forgets_the_class(result):
    ref = _row(result, "class", "retrain")
    assert ref["forget_acc"] <= 0.05
    assert _row(result, "class", "trained (no unlearning)")["forget_acc"] >= 0.95


def test_report_and_json_are_written(result):
    text = (result["_dir"] / "EFFICACY.md").read_text()
    for title in ("(a) Forget", "(b) Forget", "(c) Forget", "## Premise", "## Verdict"):
        assert title in text
    data = json.loads((result["_dir"] / "efficacy.json").read_text())
    assert data["summary"]["best"]["ranking"]
    assert result["runs"][0]["storage"]["float32-dense"]["checkpoint_bytes"] > 0
