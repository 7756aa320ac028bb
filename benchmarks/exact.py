"""What exact, order-independent forgetting costs (issue 10): bytes per store, seconds per request.

Stores now keep the trained weights at close (FORMAT.md §5.1) and every forget/restore
derives W(live) = W_trained − Σ over the live requests' steps. Against the incremental
rule it replaces (w − u on forget, + u on restore; still what stores without trained
weights get) it costs:

- bytes: one copy of the recorded tensors per store (``extra_bytes``, against the store's
  total);
- seconds: a request reads every live request's steps, not only its new ones, and reads
  the trained weights; a restore reads the steps of the requests still live instead of
  its own.

Each figure is measured in this run on the same store, the incremental path forced by
hiding the trained weights (what an old store gets). Models: the demo's MLP and LeNet on
digits (Adam, batch 128, default plan: int8 values, layer-wise random pruning).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from deltastore.read import StoreReader
from deltastore.record import Recorder
from unlearning import forget as forget_module
from unlearning.data import load_digits_split
from unlearning.forget import forget, restore
from unlearning.models import build_model
from unlearning.training import train


def _record(path: Path, model_name: str, epochs: int):
    data = load_digits_split(seed=0)
    model = build_model(model_name, in_shape=data.in_shape, num_classes=data.num_classes, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with Recorder(path, model, opt) as rec:
        train(model, data, epochs=epochs, batch_size=128, lr=1e-3, seed=0, optimizer=opt, recorder=rec)
    return model, data


def _requests(data, n_single: int):
    g = torch.Generator().manual_seed(0)
    ids = data.ids_train
    perm = torch.randperm(len(ids), generator=g)
    # Small requests first (each exact forget reads the live ones' steps), the class request
    # last (it covers every step); restores then run in reverse.
    out = [(f"one sample #{i}", [int(ids[perm[100 + i]])]) for i in range(n_single)]
    out.append(("1 % of samples", ids[perm[: max(1, len(ids) // 100)]].tolist()))
    out.append(("class 3", ids[data.positions_of_class(3)].tolist()))
    return out


def _sequence(store: Path, model, requests, exact: bool) -> list[dict]:
    """Forget each request in turn (all stay live), then restore them in reverse; time each."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rows = []
    with mock.patch.object(forget_module, "has_trained", lambda commit: exact and commit.get("trained") is not None):
        reader = StoreReader(store)
        done = []
        for name, ids in requests:
            t0 = time.perf_counter()
            r = forget(state, reader, ids)
            rows.append({"op": "forget", "request": name, "seconds": time.perf_counter() - t0, "bytes_read": r.bytes_read,
                         "new_steps": len(r.steps), "live_steps_read": len(set(r.steps) | set(r.steps_already_subtracted))})
            done.append((name, r.request_id))
        for name, rid in reversed(done):
            t0 = time.perf_counter()
            r = restore(state, reader, rid)
            rows.append({"op": "restore", "request": name, "seconds": time.perf_counter() - t0, "bytes_read": r.bytes_read,
                         "new_steps": len(r.steps)})
    trained_fp = StoreReader(store).model_fingerprint
    from deltastore.format import model_fingerprint

    rows.append({"op": "all restored", "equals_trained_bit_for_bit": model_fingerprint(
        {k: state[k] for k in state if k in {t.name for t in reader.manifest.tensors}}) == trained_fp})
    return rows


def _resnet18(repeats: int) -> dict:
    """ResNet-18 (CIFAR-shaped random batches, 8 steps): one-sample forget and its restore,
    where reading the 45 MB of trained weights is the largest extra cost."""
    with tempfile.TemporaryDirectory() as d:
        store = Path(d) / "s"
        model = build_model("resnet18", in_shape=(3, 32, 32), num_classes=10, seed=0)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        with Recorder(store, model, opt) as rec:
            for i in range(8):
                opt.zero_grad()
                x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
                torch.nn.functional.cross_entropy(model(x), y).backward()
                rec.samples(list(range(16 * i, 16 * i + 16)))
                opt.step()
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        row = {"model": "resnet18", "steps": 8, "store_bytes": StoreReader(store).nbytes_stored()["total"],
               "extra_bytes": sum(p.stat().st_size for p in (store / "trained").glob("*.safetensors"))}
        for exact in (False, True) * repeats:
            shutil.rmtree(store / "ledger", ignore_errors=True)
            st = {k: v.clone() for k, v in state.items()}
            with mock.patch.object(forget_module, "has_trained", lambda commit: exact and commit.get("trained") is not None):
                t0 = time.perf_counter()
                r = forget(st, store, [3])
                t1 = time.perf_counter()
                restore(st, store, r.request_id)
                t2 = time.perf_counter()
            key = "exact" if exact else "incremental"
            row.setdefault(key, []).append({"forget_seconds": t1 - t0, "restore_seconds": t2 - t1, "bytes_read": r.bytes_read})
        print(f"resnet18: 8 steps; store {row['store_bytes']:,} B, of which trained weights {row['extra_bytes']:,} B")
        for key in ("incremental", "exact"):
            f = sorted(x["forget_seconds"] for x in row[key])[len(row[key]) // 2]
            b = sorted(x["restore_seconds"] for x in row[key])[len(row[key]) // 2]
            print(f"  {key:<11} one-sample forget {f * 1e3:7.1f} ms, its restore {b * 1e3:7.1f} ms (median of {len(row[key])})")
        return row


def run(*, quick: bool = False, device: str = "cpu", plots=None, out=None) -> dict:
    results = [_resnet18(1 if quick else 3)]
    for model_name, epochs in (("mlp", 2 if quick else 8), ("lenet", 1 if quick else 4)):
        with tempfile.TemporaryDirectory() as d:
            store = Path(d) / "s"
            model, data = _record(store, model_name, epochs)
            sizes = StoreReader(store).nbytes_stored()
            trained = sum(p.stat().st_size for p in (store / "trained").glob("*.safetensors"))
            requests = _requests(data, 2 if quick else 5)
            seqs = {}
            for exact in (False, True):
                shutil.rmtree(store / "ledger", ignore_errors=True)
                seqs["exact" if exact else "incremental"] = _sequence(store, model, requests, exact)
            row = {"model": model_name, "steps": StoreReader(store).committed_steps, "store_bytes": sizes["total"],
                   "extra_bytes": trained, "extra_fraction": trained / (sizes["total"] - trained), "sequences": seqs}
            results.append(row)
            print(f"{model_name}: {row['steps']} steps; store {sizes['total']:,} B, of which trained weights {trained:,} B "
                  f"(+{row['extra_fraction']:.1%} on the rest)")
            for (a, b) in zip(seqs["incremental"][:-1], seqs["exact"][:-1]):
                print(f"  {a['op']:<7} {a['request']:<16} incremental {a['seconds'] * 1e3:8.1f} ms {a['bytes_read']:>10,} B | "
                      f"exact {b['seconds'] * 1e3:8.1f} ms {b['bytes_read']:>10,} B")
            print(f"  all restored == trained bit for bit: incremental {seqs['incremental'][-1]['equals_trained_bit_for_bit']}, "
                  f"exact {seqs['exact'][-1]['equals_trained_bit_for_bit']}")
    return {"rows": results}


if __name__ == "__main__":
    run(quick=False)
