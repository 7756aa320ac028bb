"""Recording overhead: training throughput without a recorder, with the default one, with a dense one.

Three variants train the *same* model on the same batches:

* ``plain``     -- no recorder;
* ``recorded``  -- the default :class:`~deltastore.Recorder` (paper layer-wise
  plan, random mode, int8 values, Blosc-lz4);
* ``dense``     -- a dense float32 recorder (rho = 0, Blosc-zstd, float32's
  default codec): conventional amnesiac storage.

Each variant owns its own optimizer over the model's parameters, and the
recorders are attached to their variant's optimizer only, so the runs can be
interleaved round by round (plain, recorded, dense, plain, ...) without
closing and reopening stores: a slow phase of the machine then hits every
variant alike. The figure per variant is the median over rounds of
``steps / seconds``, where a recorded round's seconds include ``flush()`` --
the writer thread's compression and disk writes of that round's steps are
paid inside the round, never spilled into the next (plain) one. ``overhead``
is the median over rounds of the paired ratio ``plain_i / recorded_i - 1``
(each round's recorded steps against the plain steps just before them);
``overhead_per_round`` lists them, so the spread is visible.

Before the timed rounds every variant runs one untimed warm-up round (allocator,
the recorder's cached mask base sets, the first shard files). Both recorders
use one shard per round (``steps_per_shard = steps``, or fewer rows per shard
when the recorder's memory bound asks, which must divide the round): each
round's ``flush()`` then writes whole shards, as a long run does.

On a busy machine throughput medians swing with other jobs, so each row also
gives the recorder's parts from :attr:`Recorder.timings` -- training-thread time
in the hooks (minus waits for the writer) and writer-thread time per step --
taking the fastest round of each, against the fastest plain step:
``overhead_from_parts = (hooks + writer) / plain step``. It assumes the writer's
work cannot hide behind training (true on 2 busy cores; on more cores it can).
The load average is recorded with every row.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from deltastore.format import DEFAULT_VALUE_DTYPE
from deltastore.plan import PruningPlan
from deltastore.record import Recorder
from unlearning.data import load_digits_split, synthetic_images
from unlearning.models import build_model, count_parameters

from .common import median, print_table

__all__ = ["run", "measure"]

# batch 32 on 3x32x32 synthetic images: CIFAR-sized inputs for the 11 M-parameter ResNet-18.
FULL = {
    "resnet18": {"batch": 32, "shape": (3, 32, 32), "steps": 12, "rounds": 9},
    "mlp": {"batch": 128, "shape": None, "steps": 64, "rounds": 5},
}
QUICK = {
    "resnet18": {"batch": 8, "shape": (3, 32, 32), "steps": 3, "rounds": 2},
    "mlp": {"batch": 128, "shape": None, "steps": 16, "rounds": 3},
}
VARIANTS = ("plain", "recorded", "dense")


def _load() -> float:
    return os.getloadavg()[0]


def measure(
    model_name: str,
    *,
    batch: int,
    shape: tuple | None,
    steps: int,
    rounds: int,
    device: str = "cpu",
    workdir: str | Path | None = None,
    seed: int = 0,
    encrypt: bool = False,
) -> dict:
    """Interleaved plain/recorded/dense rounds of ``steps`` steps each; one result row.

    ``shape`` None means scikit-learn's digits (the MLP's data); otherwise
    synthetic images of that shape. ``encrypt``: a fourth variant, ``encrypted`` -- the
    default recorder writing an encrypted store (deltastore.crypto) -- in the same rounds.
    """
    variants = VARIANTS + (("encrypted",) if encrypt else ())
    dev = torch.device(device)
    if shape is None:
        data = load_digits_split(seed=seed)
    else:
        data = synthetic_images(max(batch * 8, 64), 0, shape=tuple(shape), seed=seed)
    x_all, y_all = data.x_train.to(dev), data.y_train.to(dev)
    n = x_all.shape[0]
    model = build_model(model_name, in_shape=data.in_shape, num_classes=data.num_classes, seed=seed).to(dev)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    cursor = [0]

    def next_batch() -> torch.Tensor:
        if cursor[0] + batch > n:
            cursor[0] = 0
        b = order[cursor[0] : cursor[0] + batch]
        cursor[0] += batch
        return b

    opts = {v: torch.optim.Adam(model.parameters(), lr=1e-3) for v in variants}
    root = Path(tempfile.mkdtemp(prefix="ds-overhead-", dir=workdir))
    # One shard per round: each round's flush writes whole shards, as a long run does
    # (a shard part-filled by an early flush would be rewritten through Zarr's slower path).
    recs = {
        "recorded": Recorder(root / "recorded", model, opts["recorded"], steps_per_shard=steps),
        "dense": Recorder(root / "dense", model, opts["dense"], plan=PruningPlan.dense(), value_dtype="float32",
                          steps_per_shard=steps),
    }
    if encrypt:
        recs["encrypted"] = Recorder(root / "encrypted", model, opts["encrypted"], steps_per_shard=steps, encryption_key=os.urandom(32))
    for v, r in recs.items():
        if steps % r.writer.capacity:
            raise ValueError(f"{model_name}: {steps} steps per round is not a multiple of the {v} recorder's "
                             f"{r.writer.capacity} steps per flush; rounds would end mid-shard")

    parts: dict[str, dict[str, list[float]]] = {v: {"compute_ms": [], "writer_ms": [], "wait_ms": []} for v in recs}

    def run_steps(variant: str, k: int, record_parts: bool = False) -> float:
        opt, rec = opts[variant], recs.get(variant)
        before = rec.timings if rec is not None else None
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        for _ in range(k):
            pos = next_batch()
            p = pos.to(dev)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x_all[p]), y_all[p]).backward()
            if rec is not None:
                rec.samples(data.ids_train[pos])
            opt.step()
        if rec is not None:
            in_hooks = rec.timings
            rec.flush()  # this round's writes are paid by this round
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - t0
        if rec is not None and record_parts:
            after = rec.timings
            hook_wait = in_hooks["writer_wait_seconds"] - before["writer_wait_seconds"]
            parts[variant]["compute_ms"].append(1e3 * (in_hooks["hook_seconds"] - before["hook_seconds"] - hook_wait) / k)
            parts[variant]["wait_ms"].append(1e3 * (after["writer_wait_seconds"] - before["writer_wait_seconds"]) / k)
            parts[variant]["writer_ms"].append(1e3 * (after["writer_seconds"] - before["writer_seconds"]) / k)
        return seconds

    load_start = _load()
    try:
        for v in variants:
            run_steps(v, steps)  # warm-up round, untimed
        per_round: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(rounds):
            for v in variants:
                per_round[v].append(steps / run_steps(v, steps, record_parts=True))
        stored = {v: _dir_bytes(root / v) for v in recs}
    finally:
        for r in recs.values():
            r.close(fingerprint=False)
        shutil.rmtree(root, ignore_errors=True)
    sps = {v: median(per_round[v]) for v in variants}
    paired = {v: [p / r - 1.0 for p, r in zip(per_round["plain"], per_round[v])] for v in recs}
    # Load-robust view: the fastest round of each part. On 2 busy cores the writer's work
    # cannot hide behind training, so (hook compute + writer) / plain step is what it adds.
    plain_ms = 1e3 / max(per_round["plain"])
    est = {v: {"compute_ms_per_step": min(parts[v]["compute_ms"]), "writer_ms_per_step": min(parts[v]["writer_ms"]),
               "wait_ms_per_step_median": median(parts[v]["wait_ms"])} for v in recs}
    for v in recs:
        est[v]["overhead_from_parts"] = (est[v]["compute_ms_per_step"] + est[v]["writer_ms_per_step"]) / plain_ms
    extra = {}
    if encrypt:  # side by side with "recorded": the same recorder, the same rounds, an encrypted store
        n_params = count_parameters(model)
        extra = {
            "steps_per_s_encrypted": sps["encrypted"],
            "overhead_encrypted": median(paired["encrypted"]),
            "overhead_encrypted_per_round": paired["encrypted"],
            "parts_encrypted": est["encrypted"],
            "overhead_encrypted_from_parts": est["encrypted"]["overhead_from_parts"],
            "store_bytes_encrypted": stored["encrypted"],
            "store_bytes_encrypted_ratio": stored["encrypted"] / stored["recorded"],
            # Writer-thread nanoseconds per parameter per step (fastest round): what encryption adds to the writer.
            "writer_ns_per_param_step_recorded": 1e6 * est["recorded"]["writer_ms_per_step"] / n_params,
            "writer_ns_per_param_step_encrypted": 1e6 * est["encrypted"]["writer_ms_per_step"] / n_params,
            "recording_ns_per_param_step_recorded": 1e6 * (est["recorded"]["compute_ms_per_step"] + est["recorded"]["writer_ms_per_step"]) / n_params,
            "recording_ns_per_param_step_encrypted": 1e6 * (est["encrypted"]["compute_ms_per_step"] + est["encrypted"]["writer_ms_per_step"]) / n_params,
        }
    return {
        **extra,
        "model": model_name,
        "params": count_parameters(model),
        "input": list(data.in_shape),
        "data": "digits" if shape is None else "synthetic",
        "batch": batch,
        "steps_per_round": steps,
        "rounds": rounds,
        "steps_per_shard_recorded": recs["recorded"].writer.manifest.steps_per_shard,
        "steps_per_shard_dense": recs["dense"].writer.manifest.steps_per_shard,
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "recorded_value_dtype": DEFAULT_VALUE_DTYPE,
        "recorded_plan": PruningPlan.layerwise().describe(),
        "codec_recorded": recs["recorded"].writer.manifest.codec,
        "codec_dense": recs["dense"].writer.manifest.codec,
        "steps_per_s_plain": sps["plain"],
        "steps_per_s_recorded": sps["recorded"],
        "steps_per_s_dense": sps["dense"],
        # Pair by pair: round i's plain against round i's recorder, then the median.
        "overhead": median(paired["recorded"]),
        "overhead_dense": median(paired["dense"]),
        "overhead_per_round": paired["recorded"],
        "overhead_dense_per_round": paired["dense"],
        "overhead_of_medians": sps["plain"] / sps["recorded"] - 1.0,
        "rounds_steps_per_s": per_round,
        "plain_ms_per_step_min": plain_ms,
        "parts_recorded": est["recorded"],
        "parts_dense": est["dense"],
        "overhead_from_parts": est["recorded"]["overhead_from_parts"],
        "overhead_dense_from_parts": est["dense"]["overhead_from_parts"],
        "store_bytes_recorded": stored["recorded"],
        "store_bytes_dense": stored["dense"],
        "load_avg_1m_start": load_start,
        "load_avg_1m_end": _load(),
    }


def _dir_bytes(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def run(*, quick: bool, device: str = "cpu", plots: str | None = None, out: str | None = None, models: dict | None = None,
        encrypt: bool = False) -> dict:
    """Benchmark entry point; ``models`` overrides the per-model sizes (name -> measure() kwargs).

    ``encrypt`` (``python -m benchmarks overhead --encrypt``): the default recorder also writes an
    encrypted store in the same interleaved rounds; printed side by side, pipelines skipped.
    """
    sizes = models if models is not None else (QUICK if quick else FULL)
    rows = []
    for name, kw in sizes.items():
        rows.append(measure(name, device=device, encrypt=encrypt, **kw))
        r = rows[-1]
        print(f"[overhead] {name}: plain {r['steps_per_s_plain']:.3g} steps/s, recorded {r['steps_per_s_recorded']:.3g}, "
              f"dense {r['steps_per_s_dense']:.3g} (load {r['load_avg_1m_start']:.2f} -> {r['load_avg_1m_end']:.2f})", flush=True)
    print_table(
        rows,
        ["model", "params", "batch", "steps_per_round", "rounds", "steps_per_s_plain", "steps_per_s_recorded",
         "steps_per_s_dense", "overhead", "overhead_dense", "overhead_from_parts", "overhead_dense_from_parts",
         "load_avg_1m_start", "load_avg_1m_end"],
        title=f"recording overhead ({device}; recorded = default plan, {DEFAULT_VALUE_DTYPE}; dense = float32, rho=0)",
    )
    for r in rows:
        for v in ("recorded", "dense"):
            p = r[f"parts_{v}"]
            print(f"  {r['model']} {v}: hooks {p['compute_ms_per_step']:.1f} ms/step on the training thread, writer "
                  f"{p['writer_ms_per_step']:.1f} ms/step, waits {p['wait_ms_per_step_median']:.1f} ms/step "
                  f"(plain step {r['plain_ms_per_step_min']:.1f} ms)")
    summary = {r["model"]: {"overhead": r["overhead"], "overhead_dense": r["overhead_dense"], "overhead_from_parts": r["overhead_from_parts"]}
               for r in rows}
    big = next((r for r in rows if r["model"] == "resnet18"), None)
    if big is not None:
        summary["target"] = "overhead <= 0.10 on CPU for the 11 M-parameter model"
        summary["target_met"] = bool(big["overhead"] <= 0.10)
    if encrypt:
        print_table(
            rows,
            ["model", "params", "steps_per_s_recorded", "steps_per_s_encrypted", "overhead", "overhead_encrypted",
             "recording_ns_per_param_step_recorded", "recording_ns_per_param_step_encrypted",
             "writer_ns_per_param_step_recorded", "writer_ns_per_param_step_encrypted",
             "store_bytes_recorded", "store_bytes_encrypted", "store_bytes_encrypted_ratio"],
            title="recording: default store vs the same store encrypted (AES-256-GCM per chunk, one step per chunk)",
        )
        for r in rows:
            summary[r["model"]].update({k: r[k] for k in ("overhead_encrypted", "store_bytes_encrypted_ratio",
                                                          "recording_ns_per_param_step_recorded", "recording_ns_per_param_step_encrypted")})
    if plots:
        _plot(rows, plots)
    result = {"rows": rows, "summary": summary}
    if models is None and not encrypt:  # the training-pipeline rows (DDP 2 ranks, HF Trainer, LoRA store size): benchmarks/integrations.py
        from .integrations import run as run_pipelines

        result["pipelines"] = run_pipelines(quick=quick)
    return result


def _plot(rows: list[dict], folder: str) -> None:
    from .common import matplotlib_pyplot, plots_dir

    plt = matplotlib_pyplot()
    d = plots_dir(folder)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.25
    for i, v in enumerate(VARIANTS):
        ax.bar([j + (i - 1) * width for j in range(len(rows))], [r[f"steps_per_s_{v}"] / r["steps_per_s_plain"] for r in rows], width, label=v)
    ax.set_xticks(range(len(rows)), [r["model"] for r in rows])
    ax.set_ylabel("throughput relative to plain")
    ax.axhline(1 / 1.1, color="grey", linestyle="--", linewidth=0.8, label="10 % overhead")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(d / "overhead.png", dpi=120)
    plt.close(fig)
