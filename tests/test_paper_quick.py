"""Smoke test of the paper reproduction: --quick into tmp_path, check the report's structure (not its numbers)."""

from __future__ import annotations

import json
import re

import pytest

from benchmarks import paper

SECTIONS = (
    "## Headline",
    "## Conclusions",
    "## Setup",
    "## Batch composition",
    "## Table 1",
    "### Storage each method needs",
    "## Table 2",
    "## Table 3",
    "## Table 4",
    "## Figure 1",
    "## Figure 2",
    "## Figure 4",
    "## Sample-level requests and membership inference",
    "## Engine checks",
    "## Run time",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper-quick")
    result = paper.run(quick=True, device="cpu", plots=None, out=str(out), log=lambda *_: None)
    return out, result


@pytest.mark.slow
def test_report_has_every_section_table_and_figure(quick_run):
    out, result = quick_run
    text = (out / "REPORT.md").read_text()
    positions = [text.find(s) for s in SECTIONS]
    assert all(p >= 0 for p in positions), [s for s, p in zip(SECTIONS, positions) if p < 0]
    assert positions == sorted(positions), "sections out of order"
    assert "QUICK MODE" in text
    # Each numbered table/figure section holds a Markdown table with at least one data row.
    for title in ("## Table 1", "## Table 2", "## Table 3", "## Table 4", "## Figure 1", "## Figure 2", "## Figure 4",
                  "## Sample-level", "## Batch composition", "## Engine checks"):
        body = text[text.find(title):]
        nxt = body.find("\n## ", 1)
        body = body if nxt < 0 else body[:nxt]
        assert re.search(r"^\|---", body, re.M), f"{title}: no table"
        assert len(re.findall(r"^\| ", body, re.M)) >= 2, f"{title}: table without data rows"
    for name in ("figure1.png", "figure2.png", "figure4.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in text
    assert result["report"].endswith("REPORT.md")


@pytest.mark.slow
def test_results_json_keys(quick_run):
    out, _ = quick_run
    res = json.loads((out / "results.json").read_text())
    assert {"config", "machine", "seconds", "calibration", "summary", "claims", "figures", "records"} <= set(res)
    assert res["config"]["quick"] is True
    assert set(res["calibration"]) == {"mlp"}
    for alg in ("label_flip", "gradient_ascent"):
        assert {"lr", "epochs", "grid"} <= set(res["calibration"]["mlp"][alg])
    assert {"mlp/bs128/shuffled", "mlp/bs128/class-sorted"} == set(res["summary"])
    agg = res["summary"]["mlp/bs128/shuffled"]
    assert set(agg["methods"]) == {"retrain", "sisa", "fmul", "aul", "partial"}
    for node in agg["methods"].values():
        assert {"target", "retained", "per_class"} <= set(node)
        assert {"mean", "std", "min", "max", "n"} == set(node["retained"])
        assert node["retained"]["n"] == len(res["config"]["seeds"])
        assert len(node["per_class"]) == 10
    assert {"curve", "unlearning_curve", "sparsity", "affected", "samples", "updates", "engine", "storage", "composition"} <= set(agg)
    assert len(agg["sparsity"]) == len(res["config"]["sparsity_rates"])
    assert {r["mode"] for r in agg["affected"]} == set(res["config"]["affected_modes"])
    for row in agg["samples"]:
        assert {"before", "aul", "partial", "retrained"} <= set(row)
        assert {"mia_loss_logreg", "mia_efficacy_svc", "mia_loss_auc"} <= set(row["retrained"])
    for alg in ("label_flip", "gradient_ascent"):
        assert {"naive", "partial", "partial_matched"} <= set(agg["updates"][alg])
    assert len(res["records"]) == 2 * len(res["config"]["seeds"])
    assert all(c["verdict"] in ("reproduced", "partly", "not reproduced") for c in res["claims"])
    assert len(res["claims"]) >= 7
