"""Forgetting latency: the default store against a dense float32 store recorded in the same run.

One training run is recorded twice at once (two recorders on one optimizer):
into the default store (the paper's layer-wise plan, seeded random masks,
int8 values with a per-block scale, Blosc-lz4) and into a dense float32
store (rho = 0, Blosc-zstd, float32's default codec) -- conventional amnesiac
storage. Then forget
requests of three sizes (one sample, 1 % of the samples, one class) are timed
against both stores, three ways:

* ``forget`` -- :func:`unlearning.forget.forget`: index lookup, fingerprints
  before and after, :meth:`StoreReader.sum_updates`, the subtraction, the
  ledger entry (timed around the call);
* ``sum`` -- :meth:`StoreReader.sum_updates` alone;
* ``read_decode`` -- :meth:`StoreReader.read_decode` on the same steps: read the
  chunks (files, shard indexes, checksums), decompress them and decode the
  values to float32 rows (int8: dequantised with the per-block scales) on the
  reader's threads -- and nothing else: no masks, no scatter-add, no device.
  It is the floor for ``sum``; ``pipeline_efficiency = read_decode / sum``.

Cache states: **warm** (an open StoreReader, chunks in the page cache, mask
base sets cached: a service that keeps the store open) and **cold** (page cache
dropped with ``posix_fadvise(DONTNEED)`` where the kernel allows it, else a
fresh copy of the store; a new StoreReader, so mask base sets are rebuilt --
a new process). Times are medians of ``repeats``; the load average is logged
with every row, since other jobs on the machine distort the figures.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deltastore.masks import MaskGenerator
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader
from deltastore.selection import RANDOM
from deltastore.record import Recorder
from unlearning.data import load_digits_split, synthetic_images
from unlearning.demo import _Both
from unlearning.forget import forget
from unlearning.ledger import LEDGER_DIR
from unlearning.models import build_model
from unlearning.training import train

from .common import drop_page_cache, matplotlib_pyplot, median, plots_dir, print_table

TARGET_CLASS = 3  # the paper's targeted class
SAMPLE_FRACTION = 0.01
SPEEDUP_FACTOR = 0.8  # target: speedup >= 0.8 x byte ratio
EFFICIENCY_TARGET = 0.8  # target: read_decode / sum >= 0.8
# Dense stores of big models hold ~45 MB per step: shards of fewer steps keep the
# recorder's double buffer (two shards' worth of steps) under this bound.
DENSE_BUFFER_LIMIT = 2 * 2**30


@dataclass(frozen=True)
class Config:
    """One recorded training run."""

    name: str
    model: str  # unlearning.models name
    data: str  # "digits" or "synthetic"
    epochs: int
    batch: int
    n_train: int = 0  # synthetic only
    shape: tuple[int, int, int] = (3, 8, 8)  # synthetic only; ResNet-18's parameter count does not depend on it
    lr: float = 1e-3
    seed: int = 0


# ResNet-18 (11.2 M parameters): 2 epochs of 1,536 synthetic images at batch 32 = 96 steps,
# a dense float32 store of ~4.3 GB raw (~1.3 GB compressed). 8x8 images keep training fast;
# the recorded tensors are those of any ResNet-18.
FULL = (
    Config("mlp-digits", "mlp", "digits", epochs=8, batch=128),
    Config("resnet18", "resnet18", "synthetic", epochs=2, batch=32, n_train=1536),
)
QUICK = (
    Config("mlp-digits", "mlp", "digits", epochs=8, batch=128),
    Config("resnet18", "resnet18", "synthetic", epochs=1, batch=16, n_train=32),
)


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


# ---- recording ----------------------------------------------------------------------------
def _dataset(cfg: Config):
    if cfg.data == "digits":
        return load_digits_split(seed=cfg.seed)
    return synthetic_images(cfg.n_train, 0, shape=cfg.shape, seed=cfg.seed)


def _dense_steps_per_shard(step_bytes: int, default: int = 64) -> int:
    sps = default
    while sps > 1 and 2 * sps * step_bytes > DENSE_BUFFER_LIMIT:
        sps //= 2
    return sps


def record_pair(cfg: Config, folder: Path) -> dict:
    """Train ``cfg`` once, recording into ``folder/store`` (defaults) and ``folder/dense``."""
    data = _dataset(cfg)
    model = build_model(cfg.model, in_shape=data.in_shape, num_classes=data.num_classes, seed=cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    n_params = sum(p.numel() for p in model.parameters())
    n_floats = n_params + sum(b.numel() for b in model.buffers() if b.is_floating_point())
    dense_sps = _dense_steps_per_shard(4 * n_floats)
    store, dense = folder / "store", folder / "dense"
    t0 = time.perf_counter()
    with Recorder(store, model, opt) as rec, Recorder(
        dense, model, opt, plan=PruningPlan.dense(), value_dtype="float32",
        steps_per_shard=dense_sps, buffer_bytes=2 * dense_sps * 4 * n_floats + 1,
    ) as dense_rec:
        stats = train(model, data, epochs=cfg.epochs, batch_size=cfg.batch, lr=cfg.lr, seed=cfg.seed,
                      optimizer=opt, recorder=_Both(rec, dense_rec))
    seconds = time.perf_counter() - t0
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"data": data, "model": model, "trained": trained, "store": store, "dense": dense,
            "steps": stats["steps"], "record_seconds": seconds, "params": n_params, "dense_steps_per_shard": dense_sps}


def _requests(data, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = data.ids_train.numpy()
    n = ids.size
    k = max(1, round(SAMPLE_FRACTION * n))
    return {
        "one sample": np.sort(rng.choice(ids, size=1, replace=False)),
        "1% of samples": np.sort(rng.choice(ids, size=k, replace=False)),
        "one class": ids[data.positions_of_class(TARGET_CLASS).numpy()],
    }


# ---- cache control --------------------------------------------------------------------------
def _resident_fraction(root: Path) -> float | None:
    """Fraction of the files' pages in the page cache (mincore), or None where unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    except (OSError, AttributeError):
        return None
    page = mmap.PAGESIZE
    total = resident = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            size = os.path.getsize(path)
            if size == 0:
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
                if addr in (None, ctypes.c_void_p(-1).value):
                    return None
                try:
                    pages = (size + page - 1) // page
                    vec = ctypes.create_string_buffer(pages)
                    if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                        return None
                    resident += sum(1 for b in vec.raw if b & 1)
                    total += pages
                finally:
                    libc.munmap(ctypes.c_void_p(addr), size)
            finally:
                os.close(fd)
    return resident / total if total else 0.0


class _Cold:
    """Makes a store's pages cold before a timed call: drop them, else use a fresh copy."""

    def __init__(self, path: Path):
        self.path = path
        self.method = "posix_fadvise(DONTNEED)" if drop_page_cache([path]) else "fresh copy"
        self._copies = 0
        self.resident: list[float] = []

    def prepare(self) -> Path:
        if self.method.startswith("posix"):
            drop_page_cache([self.path])
            target = self.path
        else:
            self._copies += 1
            target = self.path.with_name(f"{self.path.name}-copy{self._copies}")
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(self.path, target)
            drop_page_cache([target])
        frac = _resident_fraction(target)
        if frac is not None:
            self.resident.append(frac)
        return target

    def release(self, target: Path) -> None:
        if target != self.path:
            shutil.rmtree(target, ignore_errors=True)


# ---- timing -------------------------------------------------------------------------------
def _reset(model: torch.nn.Module, trained: dict, store: Path) -> None:
    """Back to the trained model and an empty ledger, so the next forget does the whole request."""
    model.load_state_dict(trained)
    shutil.rmtree(store / LEDGER_DIR, ignore_errors=True)


def _measure(run: dict, kind: str, ids: np.ndarray, steps: list[int], *, device: str, repeats: int, cache: str) -> dict:
    """Median seconds of read_decode, sum_updates and forget on one store, warm or cold."""
    path: Path = run[kind]
    model, trained = run["model"], run["trained"]
    model.to(device)
    trained_dev = {k: v.to(device) for k, v in trained.items()}
    out: dict[str, list] = {"read_decode": [], "sum": [], "forget": [], "bytes": [], "load": [], "read_decode_cpu": [], "sum_cpu": []}

    def read_decode(reader: StoreReader) -> None:
        c0 = time.process_time()
        out["read_decode"].append(reader.read_decode(steps)["seconds"])
        out["read_decode_cpu"].append(time.process_time() - c0)

    def sum_updates(reader: StoreReader) -> None:
        c0, t0 = time.process_time(), time.perf_counter()
        res = reader.sum_updates(steps, device=device)
        out["sum"].append(time.perf_counter() - t0)
        out["sum_cpu"].append(time.process_time() - c0)
        out["bytes"].append(res.bytes_read)

    if cache == "warm":
        reader = StoreReader(path)
        # One untimed forget: page cache, mask base sets, index and ledger folder warm.
        _reset(model, trained_dev, path)
        forget(model, reader, ids, device=device)
        for _ in range(repeats):
            out["load"].append(_load())
            read_decode(reader)
            sum_updates(reader)
            _reset(model, trained_dev, path)
            t0 = time.perf_counter()
            forget(model, reader, ids, device=device)
            out["forget"].append(time.perf_counter() - t0)
        method, resident = "page cache warm, reader open", None
    else:
        cold = _Cold(path)
        for _ in range(repeats):
            out["load"].append(_load())
            target = cold.prepare()
            read_decode(StoreReader(target))  # opening reads metadata only; chunks stay cold
            cold.release(target)
            target = cold.prepare()
            sum_updates(StoreReader(target))
            cold.release(target)
            target = cold.prepare()
            _reset(model, trained_dev, target)
            t0 = time.perf_counter()
            forget(model, target, ids, device=device)  # opens the store: manifest, index, masks all cold
            out["forget"].append(time.perf_counter() - t0)
            cold.release(target)
        method = cold.method
        resident = max(cold.resident) if cold.resident else None
    _reset(model, trained_dev, path)
    return {
        "read_decode": median(out["read_decode"]),
        "sum": median(out["sum"]),
        "read_decode_cpu": median(out["read_decode_cpu"]),
        "sum_cpu": median(out["sum_cpu"]),
        "forget": median(out["forget"]),
        "bytes": int(median(out["bytes"])),
        "load": max(out["load"]),
        "cold_method": method,
        "resident_after_drop": resident,
    }


def _mask_seconds(path: Path, steps: list[int]) -> float:
    """Seconds (one thread) for a fresh reader to build the mask base sets ``steps`` need."""
    m = StoreReader(path).manifest
    gen = MaskGenerator(m.mask_seed, m.mask_pool)
    t0 = time.perf_counter()
    for g in m.groups:
        if g.selection is RANDOM:
            for p in sorted({gen.rotation(s, g.id, g.n)[0] for s in steps}):
                gen.base_np(g.id, p, g.n, g.k)
    return time.perf_counter() - t0


def _row(cfg: Config, request: str, ids: np.ndarray, steps: list[int], cache: str, s: dict, d: dict, total_steps: int) -> dict:
    byte_ratio = d["bytes"] / s["bytes"] if s["bytes"] else float("nan")
    speedup = d["forget"] / s["forget"]
    eff = s["read_decode"] / s["sum"]
    return {
        "model": cfg.name,
        "request": request,
        "samples": int(ids.size),
        "steps": len(steps),
        "steps_fraction": len(steps) / total_steps,
        "cache": cache,
        # headline: forget() end to end
        "store_seconds": s["forget"],
        "dense_seconds": d["forget"],
        "speedup": speedup,
        "byte_ratio": byte_ratio,
        "read_decode_seconds": s["read_decode"],
        "pipeline_efficiency": eff,
        # the parts
        "store_forget_seconds": s["forget"],
        "dense_forget_seconds": d["forget"],
        "store_sum_seconds": s["sum"],
        "dense_sum_seconds": d["sum"],
        "sum_speedup": d["sum"] / s["sum"],
        "store_read_decode_seconds": s["read_decode"],
        "dense_read_decode_seconds": d["read_decode"],
        "dense_pipeline_efficiency": d["read_decode"] / d["sum"],
        # CPU seconds (all threads): less sensitive to other jobs on the machine than wall time
        "store_read_decode_cpu_seconds": s["read_decode_cpu"],
        "store_sum_cpu_seconds": s["sum_cpu"],
        "cpu_efficiency": s["read_decode_cpu"] / s["sum_cpu"] if s["sum_cpu"] > 0 else float("nan"),
        "dense_read_decode_cpu_seconds": d["read_decode_cpu"],
        "dense_sum_cpu_seconds": d["sum_cpu"],
        "cpu_sum_speedup": d["sum_cpu"] / s["sum_cpu"] if s["sum_cpu"] > 0 else float("nan"),
        "store_forget_overhead_seconds": s["forget"] - s["sum"],
        "mask_build_seconds": s.get("mask_seconds"),
        "store_bytes_read": s["bytes"],
        "dense_bytes_read": d["bytes"],
        "speedup_target_met": bool(speedup >= SPEEDUP_FACTOR * byte_ratio),
        "sum_speedup_target_met": bool(d["sum"] / s["sum"] >= SPEEDUP_FACTOR * byte_ratio),
        "efficiency_target_met": bool(eff >= EFFICIENCY_TARGET),
        "cold_method": s["cold_method"],
        "resident_after_drop": max([x for x in (s["resident_after_drop"], d["resident_after_drop"]) if x is not None], default=None),
        "load": max(s["load"], d["load"]),
    }


def _bench_config(cfg: Config, folder: Path, *, device: str, repeats: int, caches, log) -> tuple[list[dict], dict]:
    log(f"[latency] {cfg.name}: recording {cfg.epochs} epochs at batch {cfg.batch} into both stores (load {_load()})")
    run = record_pair(cfg, folder)
    sizes = {"store": StoreReader(run["store"]).nbytes_stored()["total"], "dense": StoreReader(run["dense"]).nbytes_stored()["total"]}
    info = {
        "model": cfg.name, "params": run["params"], "steps": run["steps"], "samples": int(run["data"].ids_train.numel()),
        "record_seconds": run["record_seconds"], "store_bytes": sizes["store"], "dense_bytes": sizes["dense"],
        "size_ratio": sizes["dense"] / sizes["store"], "dense_steps_per_shard": run["dense_steps_per_shard"],
        "config": {k: v for k, v in cfg.__dict__.items()},
    }
    log(f"[latency] {cfg.name}: {run['steps']} steps in {run['record_seconds']:.1f} s; store {sizes['store'] / 1e6:.1f} MB, "
        f"dense {sizes['dense'] / 1e6:.1f} MB")
    rows = []
    lookup = StoreReader(run["store"]).index
    for request, ids in _requests(run["data"], cfg.seed).items():
        steps, unknown = lookup.lookup(ids)
        steps = [int(s) for s in steps]
        if unknown:
            raise RuntimeError(f"{cfg.name}: {len(unknown)} request ids missing from the index")
        mask_seconds = _mask_seconds(run["store"], steps)
        for cache in caches:
            s = _measure(run, "store", ids, steps, device=device, repeats=repeats, cache=cache)
            s["mask_seconds"] = mask_seconds if cache == "cold" else 0.0
            d = _measure(run, "dense", ids, steps, device=device, repeats=repeats, cache=cache)
            row = _row(cfg, request, ids, steps, cache, s, d, run["steps"])
            rows.append(row)
            log(f"[latency]   {request:13s} {cache}: {len(steps)} steps, forget store {s['forget']:.3f} s / dense "
                f"{d['forget']:.3f} s (x{row['speedup']:.2f}, bytes x{row['byte_ratio']:.2f}), sum x{row['sum_speedup']:.2f}, "
                f"efficiency {row['pipeline_efficiency']:.2f} (load {row['load']})")
    return rows, info


def run(
    *,
    quick: bool,
    device: str = "cpu",
    plots: str | None = None,
    out: str | None = None,
    configs: tuple[Config, ...] | None = None,
    repeats: int | None = None,
    caches: tuple[str, ...] = ("warm", "cold"),
    workdir: str | None = None,
    log=print,
) -> dict:
    """Record, time forget requests against both stores, print tables; return {"rows", "summary"}.

    Parameters
    ----------
    quick : small runs (MLP on digits, ResNet-18 for 2 steps), one repeat; same code path.
    device : where updates are accumulated and the model lives ("cpu", "cuda").
    plots : folder for ``latency_<model>.png`` (forget time, store vs dense, per request), or None.
    out : unused (the JSON is written by ``python -m benchmarks``).
    configs : runs to record (default FULL or QUICK).
    repeats : timed repetitions per figure (medians); default 3 (1 with ``quick``).
    caches : which cache states to time ("warm", "cold").
    workdir : where the temporary stores go (default: a new temporary folder); removed afterwards.
    """
    del out
    configs = tuple(configs) if configs is not None else (QUICK if quick else FULL)
    repeats = int(repeats) if repeats is not None else (1 if quick else 3)
    for c in caches:
        if c not in ("warm", "cold"):
            raise ValueError(f"caches: expected 'warm' and/or 'cold', got {c!r}")
    base = Path(tempfile.mkdtemp(prefix="latency-", dir=workdir))
    rows: list[dict] = []
    runs: list[dict] = []
    load_before = _load()
    t0 = time.perf_counter()
    try:
        for cfg in configs:
            folder = base / cfg.name
            folder.mkdir()
            r, info = _bench_config(cfg, folder, device=device, repeats=repeats, caches=caches, log=log)
            rows.extend(r)
            runs.append(info)
            shutil.rmtree(folder, ignore_errors=True)  # free the disk before the next run
    finally:
        shutil.rmtree(base, ignore_errors=True)
    summary = _summary(rows, runs, repeats=repeats, device=device, load_before=load_before, seconds=time.perf_counter() - t0)
    _print(rows, runs)
    folder = plots_dir(plots)
    if folder is not None and rows:
        summary["plots"] = [_plot(rows, cfg.name, folder) for cfg in configs]
    return {"rows": rows, "summary": summary}


def _summary(rows: list[dict], runs: list[dict], *, repeats: int, device: str, load_before: float, seconds: float) -> dict:
    return {
        "runs": runs,
        "device": device,
        "repeats": repeats,
        "all_speedup_targets_met": all(r["speedup_target_met"] for r in rows),
        "all_efficiency_targets_met": all(r["efficiency_target_met"] for r in rows),
        "speedup_target": f"speedup (dense/store forget seconds) >= {SPEEDUP_FACTOR} x byte_ratio (dense/store bytes read)",
        "efficiency_target": f"pipeline_efficiency (read_decode / sum_updates, default store) >= {EFFICIENCY_TARGET}",
        "read_decode_measures": "StoreReader.read_decode: chunk files read, shard indexes and crc32c checked, "
                                "decompressed, decoded to float32 rows (int8 dequantised) on the reader's threads; "
                                "no masks, no accumulation, no device transfer",
        "cold": "page cache dropped (posix_fadvise DONTNEED, or a fresh copy where refused) and a new StoreReader "
                "(mask base sets rebuilt); forget() cold also opens the store and its index",
        "warm": "open StoreReader after one untimed forget: chunks in the page cache, mask base sets cached",
        "mask_build_seconds": "one thread building the mask base sets a fresh reader needs for the request's steps; "
                              "included in the cold store sum and forget figures (shared by the reader threads there), "
                              "not in read_decode",
        "forget_overhead": "forget - sum_updates: index lookup, two sha256 model fingerprints, subtraction, ledger entry",
        "load_before": load_before,
        "max_load": max((r["load"] for r in rows), default=None),
        "seconds": round(seconds, 1),
    }


def _print(rows: list[dict], runs: list[dict]) -> None:
    print_table(runs, ["model", "params", "steps", "samples", "record_seconds", "store_bytes", "dense_bytes", "size_ratio", "dense_steps_per_shard"],
                title="recorded runs (default store, int8 + blosc-lz4, vs dense float32 + blosc-zstd)")
    print_table(rows, ["model", "request", "cache", "steps", "store_seconds", "dense_seconds", "speedup", "byte_ratio",
                       "store_sum_seconds", "dense_sum_seconds", "sum_speedup", "read_decode_seconds", "pipeline_efficiency", "load"],
                title="forget latency: default store vs dense float32 (medians; seconds)")
    print_table(rows, ["model", "request", "cache", "store_read_decode_cpu_seconds", "store_sum_cpu_seconds", "cpu_efficiency",
                       "dense_read_decode_cpu_seconds", "dense_sum_cpu_seconds", "cpu_sum_speedup", "byte_ratio"],
                title="CPU seconds, all threads (robust to other jobs; on 2 idle cores wall ~ CPU / 2 when both are busy)")
    print_table(rows, ["model", "request", "cache", "store_bytes_read", "dense_bytes_read", "dense_read_decode_seconds",
                       "dense_pipeline_efficiency", "store_forget_overhead_seconds", "mask_build_seconds", "speedup_target_met",
                       "efficiency_target_met", "cold_method", "resident_after_drop"],
                title="details")


def _plot(rows: list[dict], model: str, folder: Path) -> str:
    plt = matplotlib_pyplot()
    sub = [r for r in rows if r["model"] == model]
    requests = list(dict.fromkeys(r["request"] for r in sub))
    caches = list(dict.fromkeys(r["cache"] for r in sub))
    fig, axes = plt.subplots(1, len(caches), figsize=(5 * len(caches), 4), squeeze=False)
    x = np.arange(len(requests))
    for ax, cache in zip(axes[0], caches):
        by = {r["request"]: r for r in sub if r["cache"] == cache}
        store = [by[q]["store_seconds"] for q in requests]
        dense = [by[q]["dense_seconds"] for q in requests]
        ax.bar(x - 0.2, store, 0.4, label="default store (layer-wise, int8)")
        ax.bar(x + 0.2, dense, 0.4, label="dense float32 store")
        for i, q in enumerate(requests):
            ax.annotate(f"x{by[q]['speedup']:.1f}", (x[i], max(store[i], dense[i])), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, [f"{q}\n({by[q]['steps']} steps)" for q in requests], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("forget time (s, median)")
        ax.set_title(f"{model}, {cache}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = folder / f"latency_{model}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


__all__ = ["Config", "FULL", "QUICK", "record_pair", "run"]
