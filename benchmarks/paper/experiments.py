"""The experiment loop: every (batch size, model, regime, seed) once, every table's numbers from it.

Per run: train and record (one dense float32 store), then the class request
(retraining, SISA, FMUL, conventional and partial amnesiac), Figure 1's
epoch-wise rewind, Figure 2's sparsity sweep, Figure 4's affected-batches
sweep, sample-level requests with membership inference, label flipping and
gradient ascent, engine checks and store sizes. Each run's stores are deleted
when it is done (they can be large and nothing later reads them).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

from unlearning.data import load_digits_split

from .amnesiac import (
    Forgetter,
    affected_sweep,
    class_request,
    engine_checks,
    sample_requests,
    sparsity_sweep,
    storage,
    unlearning_curve,
)
from .config import PaperConfig
from .metrics import class_metrics
from .references import fmul_class, retrain_class, retrain_without, sisa_class
from .runs import batch_composition, train_and_record
from .updates import calibrate, run_updates


class _Clock:
    """Seconds spent per named section of one run."""

    def __init__(self):
        self.sections: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable):
        t0 = time.perf_counter()
        out = fn()
        self.sections[name] = self.sections.get(name, 0.0) + time.perf_counter() - t0
        return out


def run_experiments(cfg: PaperConfig, *, device: str, workdir: Path, log=print) -> dict:
    """All raw, per-seed results: {"calibration": {model: ...}, "records": [one dict per run]}."""
    data = load_digits_split(seed=cfg.data_seed)
    t0 = time.perf_counter()
    calibration = {}
    for model_name in cfg.models:
        calibration[model_name] = calibrate(cfg, data, model_name, device=device)
        c = calibration[model_name]
        log(f"[paper] calibrated {model_name}: label flip lr={c['label_flip']['lr']} x {c['label_flip']['epochs']} epochs, "
            f"gradient ascent lr={c['gradient_ascent']['lr']} x {c['gradient_ascent']['epochs']} epochs "
            f"({time.perf_counter() - t0:.0f} s)")
    records = []
    sisa_cache: dict[tuple, dict] = {}
    total = sum(len(cfg.models_at(bs)) for bs in cfg.batch_sizes) * len(cfg.regimes) * len(cfg.seeds)
    for bs in cfg.batch_sizes:
        for model_name in cfg.models_at(bs):
            for regime in cfg.regimes:
                for seed in cfg.seeds:
                    r0 = time.perf_counter()
                    rec = _one_run(cfg, data, model_name, bs, regime, seed, workdir, device, calibration, sisa_cache)
                    rec["seconds"] = time.perf_counter() - r0
                    records.append(rec)
                    m = rec["methods"]
                    log(f"[paper] {len(records)}/{total} {model_name} bs{bs} {regime} seed {seed}: "
                        f"{rec['composition']['class_steps']}/{rec['composition']['steps']} steps touched; "
                        f"target/retained  AUL {m['aul']['target']:.3f}/{m['aul']['retained']:.3f}  "
                        f"partial {m['partial']['target']:.3f}/{m['partial']['retained']:.3f}  "
                        f"retrain {m['retrain']['target']:.3f}/{m['retrain']['retained']:.3f}  "
                        f"({rec['seconds']:.0f} s: " + " ".join(f"{k} {v:.0f}" for k, v in rec["timings"].items())
                        + f"; total {time.perf_counter() - t0:.0f} s)")
    return {"calibration": calibration, "records": records, "seconds": time.perf_counter() - t0}


def _one_run(cfg, data, model_name, bs, regime, seed, workdir, device, calibration, sisa_cache) -> dict:
    clock = _Clock()
    run = clock("train_record", lambda: train_and_record(cfg, data, model_name, bs, regime, seed, workdir, device=device))
    rec = {
        "model": model_name, "batch_size": bs, "regime": regime, "seed": seed,
        "train_seconds": run.train_seconds, "curve": run.curve,
        "composition": batch_composition(run, cfg.target_class),
        "before": class_metrics(run.fresh_model(), data, cfg.target_class, device=device),
    }
    fg = Forgetter(run)
    methods = {"retrain": clock("retrain", lambda: retrain_class(cfg, run))}
    if bs in cfg.sisa_batch_sizes:
        key = (model_name, bs, seed)
        if key not in sisa_cache:  # SISA does not depend on the regime: train it once per (model, bs, seed)
            sisa_cache[key] = clock("sisa", lambda: sisa_class(cfg, data, model_name, bs, seed, device=device))
        methods["sisa"] = sisa_cache[key]
    methods["fmul"] = clock("fmul", lambda: fmul_class(cfg, run))
    amnesiac, forgotten = clock("class_request", lambda: class_request(cfg, run, fg))
    methods.update(amnesiac)
    rec["methods"] = methods
    rec["unlearning_curve"] = clock("figure1", lambda: unlearning_curve(cfg, run, fg, forgotten))
    rec["sparsity"] = clock("figure2", lambda: sparsity_sweep(cfg, run, fg, amnesiac))
    if bs in cfg.affected_batch_sizes:
        rec["affected"] = clock("figure4", lambda: affected_sweep(cfg, run, fg))
    if model_name in cfg.sample_models and bs in cfg.sample_batch_sizes:
        rec["samples"] = clock("samples", lambda: sample_requests(cfg, run, fg, lambda pos: retrain_without(cfg, run, pos)))
    rec["updates"] = clock("tables34", lambda: run_updates(cfg, run, calibration[model_name]))
    rec["engine"] = clock("engine", lambda: engine_checks(cfg, run, fg))
    rec["storage"] = storage(cfg, run)
    rec["timings"] = clock.sections
    shutil.rmtree(Path(next(iter(run.stores.values()))).parent, ignore_errors=True)
    return rec
