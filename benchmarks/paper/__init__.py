"""Reproduction of the paper's Tables 1-4 and Figures 1, 2, 4 on scikit-learn digits.

``python -m benchmarks paper --out DIR [--quick] [--device cpu|cuda]`` writes
``DIR/REPORT.md`` (configuration, tables, figures, conclusions),
``DIR/results.json`` (every per-seed number and every aggregate) and the
figures as PNG. Modules, one job each:

* :mod:`.config`      -- what is run (full and quick), every choice commented;
* :mod:`.runs`        -- train one configuration and record its dense store;
* :mod:`.amnesiac`    -- conventional / partial amnesiac requests and sweeps;
* :mod:`.references`  -- retraining, SISA, FMUL;
* :mod:`.updates`     -- label flipping and gradient ascent (Tables 3, 4);
* :mod:`.experiments` -- the loop over runs;
* :mod:`.aggregate`   -- mean ± std over seeds;
* :mod:`.claims`      -- the paper's claims checked against the numbers;
* :mod:`.figures`, :mod:`.report` -- PNGs and REPORT.md.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

from deltastore.errors import InvalidArgumentError

from . import config as _config
from .aggregate import summarize
from .claims import check_claims
from .experiments import run_experiments
from .figures import write_figures
from .report import write_report

__all__ = ["run", "rebuild"]


def run(*, quick: bool, device: str = "cpu", plots: str | None = None, out: str | None = None, log=print) -> dict:
    """Run the reproduction and write ``out/REPORT.md``, ``out/results.json`` and the PNG figures.

    Parameters
    ----------
    quick : the smoke-test configuration (MLP only, two seeds, few sweep points).
    device : where models train and updates are summed ("cpu", "cuda", "cuda:N").
    plots : optional extra folder that also receives the PNGs.
    out : output folder (created if missing; files in it are overwritten).

    Returns
    -------
    dict
        ``{"rows": Table 1 rows, "claims": [...], "out": ..., "report": ..., "results": ...}``.
    """
    if out is None:
        raise InvalidArgumentError("paper: expected an output folder (--out DIR) for REPORT.md and results.json, got none")
    cfg = _config.quick() if quick else _config.full()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # see PaperConfig.threads
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="paper-stores-") as work:
            results = run_experiments(cfg, device=device, workdir=Path(work), log=log)
    finally:
        torch.set_num_threads(threads)
    results["seconds"] = time.perf_counter() - t0
    results["device"] = str(device)
    results["machine"] = _machine()
    result = _write(cfg, results, out_dir, plots)
    log(f"[paper] wrote {result['report']} and {result['results']} in {results['seconds']:.0f} s")
    return result


def rebuild(out: str, *, plots: str | None = None) -> dict:
    """Rewrite REPORT.md, the figures and the aggregates of ``out/results.json`` from its per-seed records.

    No experiment is rerun: for changes to the report's presentation only.
    """
    out_dir = Path(out)
    res = json.loads((out_dir / "results.json").read_text(), object_hook=_nan_hook)
    cfg = _config.PaperConfig.from_json(res["config"])
    results = {k: res[k] for k in ("records", "calibration", "seconds", "device", "machine")}
    return _write(cfg, results, out_dir, plots)


def _write(cfg: _config.PaperConfig, results: dict, out_dir: Path, plots: str | None) -> dict:
    summary = summarize(results["records"])
    claims = check_claims(cfg, summary)
    figures = write_figures(cfg, summary, out_dir)
    report = write_report(cfg, summary, results, claims, figures, out_dir / "REPORT.md")
    if plots is not None and Path(plots).resolve() != out_dir.resolve():
        Path(plots).mkdir(parents=True, exist_ok=True)
        for name in figures.values():
            shutil.copy2(out_dir / name, Path(plots) / name)
    payload = {
        "config": cfg.to_json(),
        "device": results["device"],
        "machine": results["machine"],
        "seconds": results["seconds"],
        "calibration": results["calibration"],
        "summary": summary,
        "claims": claims,
        "figures": figures,
        "records": results["records"],
    }
    results_path = out_dir / "results.json"
    results_path.write_text(json.dumps(_clean(payload), indent=1, allow_nan=False))
    rows = [{"config": k, **{m: v["retained"]["mean"] for m, v in agg["methods"].items()}} for k, agg in summary.items()]
    return {"rows": rows, "claims": [{"claim": c["claim"], "verdict": c["verdict"]} for c in claims],
            "out": str(out_dir), "report": str(report), "results": str(results_path)}


def _nan_hook(obj: dict) -> dict:
    # results.json writes NaN as null; aggregates and metrics expect NaN back.
    return {k: (math.nan if v is None else v) for k, v in obj.items()}


def _machine() -> dict:
    from benchmarks.common import machine

    return machine()


def _clean(obj):
    """JSON without NaN (null instead), tuples as lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return obj.item()
    return obj
