"""Forgetting where it is not free: the memorisation testbed (issue #15).

``python -m benchmarks efficacy [--quick] [--out DIR]``: digits with 10 % wrong
labels, models trained until they fit them, three kinds of forget request,
every method beside the model retrained without the request (same init, same
batch order), with the field's metrics (accuracies, three loss/confidence
MIAs, an offline LiRA per-example attack with shadow models, TOFU's KS-test
forget quality, MUSE's PrivLeak) and each method's cost. Writes
``EFFICACY.md`` and ``efficacy.json`` into ``--out`` (default for a full run: the
committed ``benchmarks/EFFICACY.md`` and ``benchmarks/results/efficacy.json``; a quick
run writes nothing without ``--out``). :func:`rebuild` remakes the report from a
results file.

Modules: :mod:`.config` (what runs), :mod:`.testbed` (data, training with
stores and checkpoints, references, shadows), :mod:`.methods`,
:mod:`.metrics`, :mod:`.report` (tables and verdicts).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import config as _config
from .methods import method_table
from .metrics import Shadowed, measure
from .report import summarize, write_report
from .testbed import REQUESTS, noisy_digits, requests, retrain, shadows, train_and_record

__all__ = ["run", "rebuild"]


def run(*, quick: bool, device: str = "cpu", plots: str | None = None, out: str | None = None, log=print,
        cfg: _config.EfficacyConfig | None = None) -> dict:
    cfg = cfg or (_config.quick() if quick else _config.full())
    if device != "cpu":
        log(f"[efficacy] note: runs on CPU (small models); --device {device} ignored")
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    records, runs_info = [], []
    work = Path(tempfile.mkdtemp(prefix="efficacy-"))
    try:
        # Seeds outer: every model is exercised early, and partial results are kept after each run.
        for seed in cfg.seeds:
            for setup in cfg.models:
                records += _one_run(cfg, setup, seed, work, runs_info, log)
                if out is not None:
                    Path(out).mkdir(parents=True, exist_ok=True)
                    (Path(out) / "efficacy.partial.json").write_text(json.dumps(_clean({"records": records, "runs": runs_info})))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        torch.set_num_threads(threads)
    summary = summarize(cfg, records)
    result = {"config": cfg.to_json(), "records": records, "runs": runs_info, "summary": summary,
              "seconds": time.perf_counter() - t0}
    if out is not None or not quick:
        md, js = _paths(out)
        _write(cfg, result, md, js)
        result["out"] = str(md.parent)
    result["rows"] = [dict(r) for r in records]
    return result


def rebuild(json_path: str, out: str | None = None, *, quick: bool = False, seeds: tuple[int, ...] | None = None) -> dict:
    """Tables and verdicts again from a results file (``efficacy.json`` or the per-run ``efficacy.partial.json``).

    ``seeds``: the seeds the file actually holds, when it is a partial run (the report says so).
    """
    import dataclasses

    data = json.loads(Path(json_path).read_text(), object_hook=lambda o: {k: (math.nan if v is None else v) for k, v in o.items()})
    cfg = _config.quick() if quick else _config.full()
    if seeds is not None:
        cfg = dataclasses.replace(cfg, seeds=tuple(seeds))
    records = data["records"]
    summary = summarize(cfg, records)
    result = {"config": cfg.to_json(), "records": records, "runs": data["runs"], "summary": summary,
              "seconds": data.get("seconds", math.nan)}
    _write(cfg, result, *_paths(out))
    return result


def _paths(out: str | None) -> tuple[Path, Path]:
    """(EFFICACY.md, efficacy.json): in ``out``, or the committed places (benchmarks/, benchmarks/results/)."""
    if out is not None:
        return Path(out) / "EFFICACY.md", Path(out) / "efficacy.json"
    here = Path(__file__).resolve().parent.parent
    return here / "EFFICACY.md", here / "results" / "efficacy.json"


def _write(cfg, result: dict, md: Path, js: Path) -> None:
    md.parent.mkdir(parents=True, exist_ok=True)
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(_clean(result), indent=1, allow_nan=False))
    write_report(cfg, result, md)


def _one_run(cfg, setup, seed, work: Path, runs_info: list, log) -> list[dict]:
    data, true_y, mis = noisy_digits(cfg, seed)
    run = train_and_record(cfg, data, true_y, mis, setup, seed, work)
    sh = shadows(cfg, run)
    shadowed = Shadowed(run, sh)
    reqs = requests(cfg, data, mis, seed)
    table = {k: v for k, v in method_table(cfg).items() if k not in cfg.skip_methods}
    runs_info.append({"model": setup.name, "seed": seed, "train_seconds": run.train_seconds,
                      "train_steps": run.train_steps, "train_sample_gradients": run.train_sample_gradients,
                      "storage": run.storage, "shadow_seconds": sh["seconds"], "mislabeled": int(mis.numel()),
                      "request_sizes": {k: int(v.numel()) for k, v in reqs.items()}})
    log(f"[efficacy] {setup.name} seed {seed}: trained {run.train_steps} steps in {run.train_seconds:.1f} s, "
        f"{cfg.shadows} shadows in {sh['seconds']:.1f} s")
    out = []
    ctx: dict = {}
    for kind in REQUESTS:
        pos = reqs[kind]
        target = cfg.target_class if kind == "class" else None
        ref_model, ref_cost = retrain(run, pos)
        ref = measure(ref_model, run, pos, target_class=target, shadows=shadowed, reference_losses=None, reference_auc=None)
        ref_losses, ref_auc = ref["forget_losses"], ref["lira_auc"]

        def record(name, model, cost, meta):
            row = measure(model, run, pos, target_class=target, shadows=shadowed, reference_losses=ref_losses, reference_auc=ref_auc)
            row.pop("forget_losses")
            row.update({"model": setup.name, "seed": seed, "request": kind, "method": name, **meta,
                        "cost_seconds": cost["seconds"], "cost_steps": cost["steps"],
                        "cost_sample_gradients": cost["sample_gradients"],
                        "retrain_seconds": ref_cost["seconds"], "retrain_steps": ref_cost["steps"],
                        "retrain_sample_gradients": ref_cost["sample_gradients"],
                        "extra": {k: v for k, v in cost.items() if k not in ("seconds", "steps", "sample_gradients")}})
            out.append(row)

        record("retrain", ref_model, ref_cost, {"store": "-", "needs": "all retained data, full training"})
        record("trained (no unlearning)", run.model(), {"seconds": 0.0, "steps": 0, "sample_gradients": 0}, {"store": "-", "needs": "-"})
        for name, (fn, meta) in table.items():
            model, cost = fn(run, pos, ctx)
            record(name, model, cost, meta)
        r = {row["method"]: row for row in out if row["request"] == kind and row["seed"] == seed and row["model"] == setup.name}
        log(f"[efficacy]   {kind}: forget acc trained {r['trained (no unlearning)']['forget_acc']:.2f} retrained "
            f"{r['retrain']['forget_acc']:.2f}; LiRA AUC trained {r['trained (no unlearning)']['lira_auc']:.2f} "
            f"retrained {r['retrain']['lira_auc']:.2f}; retrain {ref_cost['seconds']:.1f} s")
    return out


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
