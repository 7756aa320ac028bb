"""The prepared GPU check: record and forget on a CUDA device, against the CPU, in one short run.

``python -m benchmarks gpu --json FILE`` (under 8 minutes on one GPU, any torch). Per model
(the digits MLP and the 11 M-parameter ResNet-18-sized network):

* ``masks_identical``: the kept positions of every random group at several steps,
  regenerated on the device, equal the CPU's (numpy) bit for bit;
* recording on the device (int8, the defaults; and int4, whose dither is drawn on the
  device): the store decodes, and forgetting a request from it on the device gives the
  same model as forgetting it on the CPU (``forget_allclose``, ``forget_max_abs_diff``);
* ``overhead``: ``benchmarks.overhead.measure`` on the device (plain vs recorded vs
  dense rounds, paired), against the <= 5 % GPU target;
* forget latency: the request's ``read_decode`` seconds (reading and decoding the chunks,
  the floor), ``sum_updates`` on the device and the whole ``forget``, warm;
  ``pipeline_efficiency = read_decode / sum`` against the >= 0.8 target.

Without CUDA it runs the same code on the CPU (``fallback: true``, CPU targets): a test
runs that path so the check cannot rot before a GPU is lent.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deltastore.masks import MaskGenerator
from deltastore.read import StoreReader
from deltastore.record import Recorder
from unlearning.data import load_digits_split, synthetic_images
from unlearning.forget import forget
from unlearning.models import build_model

from . import overhead
from .common import median, print_table

__all__ = ["run", "check_model"]

FULL = {
    "mlp": {"data": "digits", "batch": 128, "steps": 48, "overhead": {"batch": 128, "shape": None, "steps": 64, "rounds": 5}},
    "resnet18": {"data": "synthetic", "shape": (3, 32, 32), "batch": 32, "steps": 24,
                 "overhead": {"batch": 32, "shape": (3, 32, 32), "steps": 16, "rounds": 5}},
}
QUICK = {
    "mlp": {"data": "digits", "batch": 128, "steps": 8, "overhead": {"batch": 128, "shape": None, "steps": 8, "rounds": 2}},
}
MASK_STEPS = (0, 1, 7, 1000)
OVERHEAD_TARGET = {"cuda": 0.05, "cpu": 0.10}
EFFICIENCY_TARGET = 0.8


def _device(requested: str | None) -> torch.device:
    if requested not in (None, "cpu"):
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _data(spec: dict, seed: int = 0):
    if spec["data"] == "digits":
        return load_digits_split(seed=seed)
    return synthetic_images(max(spec["batch"] * 8, 64), 64, shape=tuple(spec["shape"]), seed=seed)


def _record(name: str, spec: dict, data, folder: Path, dev: torch.device, value_dtype: str) -> tuple[torch.nn.Module, dict, list]:
    """Train ``steps`` shuffled steps on ``dev`` with a recorder; (model, its trained state on CPU, batches)."""
    model = build_model(name, in_shape=data.in_shape, num_classes=data.num_classes, seed=0).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = data.x_train.to(dev), data.y_train.to(dev)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    batches = []
    with Recorder(folder, model, opt, value_dtype=value_dtype) as rec:
        for s in range(spec["steps"]):
            pos = order[(s * spec["batch"]) % len(y):][: spec["batch"]]
            if len(pos) < spec["batch"]:
                pos = order[: spec["batch"]]
            batches.append(pos)
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x[pos.to(dev)]), y[pos.to(dev)]).backward()
            rec.samples(data.ids_train[pos])
            opt.step()
    return model, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, batches


def _masks_identical(reader: StoreReader, dev: torch.device) -> tuple[bool, int]:
    """Every random group's positions at MASK_STEPS on ``dev`` against numpy; (all equal, groups checked)."""
    m = reader.manifest
    gen = MaskGenerator(m.mask_seed, m.mask_pool)
    ok, checked = True, 0
    for g in m.groups:
        if g.selection.name != "random":
            continue
        for step in MASK_STEPS:
            on_dev = gen.positions(step, g.id, g.n, g.k, device=dev).cpu().numpy()
            ok &= bool(np.array_equal(on_dev, gen.positions_np(step, g.id, g.n, g.k)))
        checked += 1
    return ok, checked


def _forget_both(name: str, data, trained: dict, store: Path, ids, dev: torch.device) -> dict:
    """Forget ``ids`` from ``store`` on ``dev`` and on the CPU, from the same trained model: compare."""
    results = []  # [on the device, on the CPU]; the CPU fallback runs both forgets too
    for where in (dev, torch.device("cpu")):
        shutil.rmtree(store / "ledger", ignore_errors=True)  # each forget is the store's first request
        model = build_model(name, in_shape=data.in_shape, num_classes=data.num_classes, seed=0).to(where)
        model.load_state_dict(trained)
        forget(model, store, ids, device=where)
        results.append({k: v.detach().cpu() for k, v in model.state_dict().items()})
    on_dev, on_cpu = results
    keys = [k for k in on_cpu if on_cpu[k].is_floating_point()]
    changed = any(not torch.equal(on_cpu[k], trained[k].cpu()) for k in keys)  # else the comparison says nothing
    diff = max(float((on_dev[k].float() - on_cpu[k].float()).abs().max()) for k in keys)
    close = all(torch.allclose(on_dev[k].float(), on_cpu[k].float(), rtol=1e-5, atol=1e-6) for k in keys)
    shutil.rmtree(store / "ledger", ignore_errors=True)
    return {"forget_allclose": bool(close), "forget_max_abs_diff": diff, "forget_changed_model": bool(changed)}


def _latency(name: str, data, trained: dict, store: Path, ids, dev: torch.device, repeats: int = 3) -> dict:
    """Warm forget latency on ``dev`` with its read+decode floor beside it (medians of ``repeats``)."""
    reader = StoreReader(store)
    steps = sorted(int(s) for s in np.unique(reader.index.steps_for(ids)))
    model = build_model(name, in_shape=data.in_shape, num_classes=data.num_classes, seed=0).to(dev)
    out: dict[str, list[float]] = {"read_decode": [], "sum": [], "forget": []}
    for i in range(repeats + 1):  # the first round warms the page cache, masks and CUDA context
        rd = reader.read_decode(steps)["seconds"]
        _sync(dev)
        t0 = time.perf_counter()
        reader.sum_updates(steps, device=dev)
        _sync(dev)
        sm = time.perf_counter() - t0
        shutil.rmtree(store / "ledger", ignore_errors=True)
        model.load_state_dict(trained)
        _sync(dev)
        t0 = time.perf_counter()
        forget(model, reader, ids, device=dev)
        _sync(dev)
        fg = time.perf_counter() - t0
        if i:
            out["read_decode"].append(rd)
            out["sum"].append(sm)
            out["forget"].append(fg)
    shutil.rmtree(store / "ledger", ignore_errors=True)
    res = {f"{k}_seconds": median(v) for k, v in out.items()}
    res["steps_read"] = len(steps)
    res["pipeline_efficiency"] = res["read_decode_seconds"] / res["sum_seconds"] if res["sum_seconds"] > 0 else float("nan")
    res["efficiency_target_met"] = bool(res["pipeline_efficiency"] >= EFFICIENCY_TARGET)
    return res


def check_model(name: str, spec: dict, root: Path, dev: torch.device, *, log=print) -> dict:
    t0 = time.perf_counter()
    data = _data(spec)
    row: dict = {"model": name, "device": str(dev), "fallback": dev.type == "cpu"}
    for value_dtype in ("int8", "int4"):
        store = root / f"{name}-{value_dtype}"
        _, trained, batches = _record(name, spec, data, store, dev, value_dtype)
        reader = StoreReader(store)
        row["params"] = reader.manifest.num_params
        if value_dtype == "int8":
            row["masks_identical"], row["mask_groups_checked"] = _masks_identical(reader, dev)
        ids = data.ids_train[batches[len(batches) // 2]][:8]  # a few samples from one mid-run batch
        both = _forget_both(name, data, trained, store, ids, dev)
        row.update({f"{value_dtype}_{k}": v for k, v in both.items()})
        if value_dtype == "int8":
            row.update(_latency(name, data, trained, store, ids, dev, repeats=spec.get("repeats", 3)))
            # every step: the largest request there is, the read path at full stretch
            lat_all = _latency(name, data, trained, store, data.ids_train[torch.cat(batches)], dev, repeats=spec.get("repeats", 2))
            row.update({f"all_steps_{k}": v for k, v in lat_all.items()})
    ov = overhead.measure(name, device=str(dev), **spec["overhead"])
    target = OVERHEAD_TARGET["cuda" if dev.type == "cuda" else "cpu"]
    row.update({"overhead": ov["overhead"], "overhead_dense": ov["overhead_dense"], "overhead_from_parts": ov["overhead_from_parts"],
                "plain_ms_per_step": ov["plain_ms_per_step_min"], "parts_recorded": ov["parts_recorded"],
                "overhead_target": target, "overhead_target_met": bool(ov["overhead"] <= target),
                "seconds": time.perf_counter() - t0})
    log(f"[gpu] {name} on {dev}: masks identical {row['masks_identical']}, forget allclose int8 {row['int8_forget_allclose']} "
        f"int4 {row['int4_forget_allclose']}, overhead {row['overhead']:.3f} (target {target}), pipeline efficiency "
        f"{row['pipeline_efficiency']:.2f} ({row['seconds']:.0f} s)")
    return row


def run(*, quick: bool, device: str | None = None, plots: str | None = None, out: str | None = None, models: dict | None = None,
        workdir: str | None = None) -> dict:
    dev = _device(device)
    specs = models if models is not None else (QUICK if quick else FULL)
    root = Path(tempfile.mkdtemp(prefix="ds-gpu-", dir=workdir))
    rows = []
    try:
        for name, spec in specs.items():
            rows.append(check_model(name, spec, root, dev))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(rows, ["model", "device", "params", "masks_identical", "int8_forget_allclose", "int4_forget_allclose", "int8_forget_max_abs_diff",
                       "overhead", "overhead_target", "read_decode_seconds", "sum_seconds", "forget_seconds", "pipeline_efficiency",
                       "all_steps_pipeline_efficiency"],
                title=f"GPU check on {dev}" + (" (CPU fallback: no CUDA device)" if dev.type == "cpu" else ""))
    ok = all(r["masks_identical"] and r["int8_forget_allclose"] and r["int4_forget_allclose"]
             and r["int8_forget_changed_model"] and r["int4_forget_changed_model"] for r in rows)
    return {"rows": rows, "summary": {"device": str(dev), "fallback": dev.type == "cpu", "correct": ok,
                                      "overhead_targets_met": all(r["overhead_target_met"] for r in rows),
                                      "efficiency_targets_met": all(r["efficiency_target_met"] for r in rows),
                                      "torch": torch.__version__,
                                      "cuda_device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None},
            "params": {r["model"]: r["params"] for r in rows}}
