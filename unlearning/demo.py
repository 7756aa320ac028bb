"""`deltastore demo`: the whole story on real data in about a minute.

1. Train the paper's 2-layer MLP (hidden 500) on scikit-learn's digits for 8
   epochs (batch 128, Adam, lr 1e-3), recording every step twice in the same
   run: into the default store (paper layer-wise schedule, random masks,
   int8 values with a per-block scale, Blosc-lz4) and into a dense float32
   store (ρ = 0, Blosc-zstd, float32's default codec), the conventional
   amnesiac baseline.
2. Forget class 3 (the paper's targeted class) from the default store, then
   restore it (the ledger's undo), then forget 1 % of the training samples
   chosen at random with a fixed seed, with membership inference against a
   model retrained without them.
3. Leave what the CLI needs in ``<store>-out/`` (a local folder): the trained model
   and the model after each request as safetensors, and each request's ids as
   text (README's CLI walkthrough runs on them). Request ids are fixed
   (``demo-class-3``, ``demo-samples``) so the walkthrough can name them.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from deltastore.errors import StoreExistsError
from deltastore.plan import PruningPlan
from deltastore.devices import parse_device
from deltastore.read import StoreReader
from deltastore.record import Recorder
from deltastore.storage import is_url, open_io

from .baselines import retrain
from .data import load_digits_split
from .evaluation import accuracy, evaluate
from .forget import forget, restore
from .models import build_model
from .training import train

EPOCHS = 8
BATCH_SIZE = 128
LR = 1e-3
TARGET_CLASS = 3
SAMPLE_FRACTION = 0.01
SEED = 0


CLASS_REQUEST = "demo-class-3"
SAMPLES_REQUEST = "demo-samples"
OUT_FILES = ("trained.safetensors", "after-forget-class-3.safetensors", "after-restore-class-3.safetensors",
             "after-forget-samples.safetensors", "class-3-ids.txt", "samples-ids.txt")


class _Both:
    """Feeds one batch's ids to several recorders attached to the same optimizer; ticks the bar."""

    def __init__(self, *recorders, bar=None):
        self.recorders = recorders
        self.bar = bar

    def samples(self, ids, epoch=0):
        for r in self.recorders:
            r.samples(ids, epoch=epoch)
        if self.bar is not None:
            self.bar.update(1)


def _is_store(path: Path) -> bool:
    return (path / "zarr.json").exists() and (path / "commit.json").exists()


def _prepare(path, overwrite: bool) -> None:
    if is_url(path):  # s3://bucket/prefix: the object store says what is there
        io = open_io(path)
        if io.is_empty():
            return
        if overwrite and io.exists("zarr.json") and io.exists("commit.json"):
            io.delete_prefix("")
            return
        hint = " (pass --overwrite to replace an earlier demo store)" if io.exists("commit.json") else ""
        raise StoreExistsError(f"{path}: expected a new prefix for the demo store, found existing objects{hint}")
    if not path.exists():
        return
    if overwrite and _is_store(path):
        shutil.rmtree(path)
        return
    if any(path.iterdir()):
        hint = " (pass --overwrite to replace an earlier demo store)" if _is_store(path) else ""
        raise StoreExistsError(f"{path}: expected a new directory for the demo store, found existing files{hint}")


def _prepare_out(path: Path, overwrite: bool) -> None:
    """The outputs folder: new, empty, or (with --overwrite) holding only an earlier demo's files."""
    if not path.exists():
        path.mkdir(parents=True)
        return
    names = {p.name for p in path.iterdir()}
    if not names:
        return
    if overwrite and names <= set(OUT_FILES):
        for n in names:
            (path / n).unlink()
        return
    hint = " (pass --overwrite to replace an earlier demo's outputs)" if names <= set(OUT_FILES) else ""
    raise StoreExistsError(f"{path}: expected a new directory for the demo's outputs, found existing files{hint}")


def _save(model, path: Path) -> None:
    from .cli_files import save_weights

    save_weights({k: v.detach() for k, v in model.state_dict().items()}, path)


def _write_ids(ids, path: Path) -> None:
    path.write_text("".join(f"{int(i)}\n" for i in ids))


def _mask_accuracy(model, x, y, keep: torch.Tensor) -> float:
    return accuracy(model, x[keep], y[keep]) if bool(keep.any()) else float("nan")


def run_demo(store: str | Path, *, dense_store: str | Path | None = None, out_dir: str | Path | None = None, device: str = "cpu",
             overwrite: bool = False, epochs: int = EPOCHS, log=print, progress: bool = True) -> dict:
    from deltastore.progress import progress_bar

    dev = parse_device(device)
    if out_dir is None:
        out_dir = (str(store).rstrip("/").rsplit("/", 1)[-1] if is_url(store) else str(Path(store))) + "-out"
    out_dir = Path(out_dir)
    if is_url(store):  # s3://bucket/prefix; the dense store goes beside it, <prefix>-dense
        store = str(store).rstrip("/")
        dense_store = str(dense_store) if dense_store is not None else store + "-dense"
    else:
        store = Path(store)
        dense_store = Path(dense_store) if dense_store is not None else store.with_name(store.name + "-dense")
    _prepare(store, overwrite)
    _prepare(dense_store, overwrite)
    _prepare_out(out_dir, overwrite)
    data = load_digits_split(seed=SEED)
    model = build_model("mlp", in_shape=data.in_shape, num_classes=data.num_classes, seed=SEED).to(dev)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    log(f"training the paper's MLP on digits ({data.x_train.shape[0]} train samples) for {epochs} epochs, recording twice")
    t0 = time.perf_counter()
    bar = progress_bar(epochs * -(-data.x_train.shape[0] // BATCH_SIZE), progress, "training", unit="batch")
    with Recorder(store, model, opt) as rec, Recorder(dense_store, model, opt, plan=PruningPlan.dense(), value_dtype="float32") as dense_rec:
        train(model, data, epochs=epochs, batch_size=BATCH_SIZE, lr=LR, seed=SEED, optimizer=opt, recorder=_Both(rec, dense_rec, bar=bar),
              device=dev)
    bar.close()
    train_seconds = time.perf_counter() - t0
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.eval()  # a forward pass in train mode would move BatchNorm statistics (none in the MLP; a habit worth keeping)
    _save(model, out_dir / "trained.safetensors")
    reader = StoreReader(store)
    dense_reader = StoreReader(dense_store)
    store_bytes = reader.nbytes_stored()["total"]
    dense_bytes = dense_reader.nbytes_stored()["total"]
    out = {
        "steps": reader.committed_steps,
        "samples": int(data.x_train.shape[0]),
        "index_rows": reader.index.num_rows,
        "store_bytes": store_bytes,
        "dense_bytes": dense_bytes,
        "savings": 1.0 - store_bytes / dense_bytes,
        "train_seconds": train_seconds,
        "test_accuracy": accuracy(model, data.x_test, data.y_test),
        "plan": reader.manifest.plan.describe(),
        "value_dtype": reader.manifest.value_dtype,
        "codec": reader.manifest.codec,
        "store": str(store),
        "dense_store": str(dense_store),
    }
    log(f"  {out['steps']} steps, test accuracy {out['test_accuracy']:.3f}, {train_seconds:.1f} s")
    log(f"  store {store_bytes:,} B vs dense float32 {dense_bytes:,} B (blosc-zstd): savings {out['savings']:.1%}")

    # -- class request: forget every training sample of class 3 -----------------
    test_target = data.y_test == TARGET_CLASS
    before_t = _mask_accuracy(model, data.x_test, data.y_test, test_target)
    before_r = _mask_accuracy(model, data.x_test, data.y_test, ~test_target)
    class_ids = data.ids_train[data.positions_of_class(TARGET_CLASS)]
    _write_ids(class_ids, out_dir / "class-3-ids.txt")
    receipt = forget(model, reader, class_ids, device=dev, request_id=CLASS_REQUEST, progress=progress)
    _save(model, out_dir / "after-forget-class-3.safetensors")
    after_t = _mask_accuracy(model, data.x_test, data.y_test, test_target)
    after_r = _mask_accuracy(model, data.x_test, data.y_test, ~test_target)
    out_class = {
        "request_id": receipt.request_id,
        "samples": len(class_ids),
        "steps": len(receipt.steps),
        "steps_fraction": len(receipt.steps) / max(1, out["steps"]),
        "seconds": receipt.seconds,
        "bytes_read": receipt.bytes_read,
        "target_accuracy": [before_t, after_t],
        "retained_accuracy": [before_r, after_r],
    }
    log(f"forget class {TARGET_CLASS}: {out_class['steps']} of {out['steps']} steps, {receipt.seconds:.2f} s; "
        f"class-{TARGET_CLASS} test accuracy {before_t:.3f} -> {after_t:.3f}, other classes {before_r:.3f} -> {after_r:.3f}")
    if out_class["steps_fraction"] > 0.9 and after_t > 0.5:
        log(f"  note: {out_class['steps_fraction']:.0%} of the steps held class-{TARGET_CLASS} samples (shuffled batches), and subtracting "
            "their pruned updates did not remove the class; benchmarks/paper/REPORT.md measures when it does")
    # The same request against the dense store: conventional amnesiac unlearning.
    conventional = build_model("mlp", in_shape=data.in_shape, num_classes=data.num_classes, seed=SEED).to(dev)
    conventional.load_state_dict(trained)
    dense_receipt = forget(conventional, dense_reader, class_ids, device=dev)
    out_class["conventional"] = {
        "target_accuracy": [before_t, _mask_accuracy(conventional, data.x_test, data.y_test, test_target)],
        "retained_accuracy": [before_r, _mask_accuracy(conventional, data.x_test, data.y_test, ~test_target)],
        "seconds": dense_receipt.seconds,
        "bytes_read": dense_receipt.bytes_read,
    }
    log(f"  conventional amnesiac (dense store): other classes {before_r:.3f} -> {out_class['conventional']['retained_accuracy'][1]:.3f}")

    # -- restore: the ledger's undo ---------------------------------------------
    rr = restore(model, reader, receipt.request_id, device=dev, progress=progress)
    _save(model, out_dir / "after-restore-class-3.safetensors")
    drift = max(float((model.state_dict()[k].float() - trained[k].float()).abs().max()) for k in trained if trained[k].is_floating_point())
    out["restore"] = {"request_id": rr.restores, "seconds": rr.seconds, "max_abs_diff_to_trained": drift}
    log(f"restore {receipt.request_id}: max |w - w_trained| = {drift:.2e}")

    # -- sample request: 1 % of the training samples ------------------------------
    g = torch.Generator().manual_seed(SEED)
    n = data.x_train.shape[0]
    forget_pos = torch.sort(torch.randperm(n, generator=g)[: max(1, round(SAMPLE_FRACTION * n))]).values
    keep = torch.ones(n, dtype=torch.bool)
    keep[forget_pos] = False
    before_f = accuracy(model, data.x_train[forget_pos], data.y_train[forget_pos])
    before_test = accuracy(model, data.x_test, data.y_test)
    mia_before = evaluate(model, data, forget_pos, seed=SEED)
    _write_ids(data.ids_train[forget_pos], out_dir / "samples-ids.txt")
    receipt2 = forget(model, reader, data.ids_train[forget_pos], device=dev, request_id=SAMPLES_REQUEST, progress=progress)
    _save(model, out_dir / "after-forget-samples.safetensors")
    log(f"retraining a reference model without the {len(forget_pos)} forgotten samples (for membership inference)")
    reference = retrain(data, forget_pos, model_name="mlp", epochs=epochs, batch_size=BATCH_SIZE, lr=LR, seed=SEED, device=dev)
    ev = evaluate(model, data, forget_pos, seed=SEED, reference=reference)
    out_samples = {
        "request_id": receipt2.request_id,
        "samples": int(len(forget_pos)),
        "steps": len(receipt2.steps),
        "steps_fraction": len(receipt2.steps) / max(1, out["steps"]),
        "seconds": receipt2.seconds,
        "bytes_read": receipt2.bytes_read,
        "target_accuracy": [before_f, ev["forget_acc"]],
        "retained_accuracy": [before_test, ev["test_acc"]],
        "mia": {
            "before": {k: mia_before[k] for k in ("mia_loss_logreg", "mia_efficacy_svc", "mia_loss_auc")},
            "after": {k: ev[k] for k in ("mia_loss_logreg", "mia_efficacy_svc", "mia_loss_auc")},
            "retrained": {k: ev["reference"][k] for k in ("mia_loss_logreg", "mia_efficacy_svc", "mia_loss_auc")},
        },
        "retrained_accuracy": {"forget": ev["reference"]["forget_acc"], "test": ev["reference"]["test_acc"]},
    }
    log(f"forget {len(forget_pos)} samples (1 %): {out_samples['steps']} of {out['steps']} steps, {receipt2.seconds:.2f} s; "
        f"their accuracy {before_f:.3f} -> {ev['forget_acc']:.3f} (retrained model: {ev['reference']['forget_acc']:.3f}); "
        f"test accuracy {before_test:.3f} -> {ev['test_acc']:.3f}")
    m = out_samples["mia"]
    log(f"  membership inference (0.5 = cannot tell forgotten from unseen): loss-logreg {m['before']['mia_loss_logreg']:.3f} -> "
        f"{m['after']['mia_loss_logreg']:.3f} (retrained {m['retrained']['mia_loss_logreg']:.3f}); loss AUC "
        f"{m['before']['mia_loss_auc']:.3f} -> {m['after']['mia_loss_auc']:.3f} (retrained {m['retrained']['mia_loss_auc']:.3f})")
    out["forget"] = {"class": out_class, "samples": out_samples}
    out["outputs"] = {name: str(out_dir / name) for name in OUT_FILES}
    log(f"wrote the trained model, the model after each request and the requests' ids to {out_dir}/ "
        f"(the README's CLI walkthrough uses them)")
    out["initial_to_trained_max_abs"] = max(float((trained[k].float() - initial[k].float()).abs().max()) for k in initial if initial[k].is_floating_point())
    return out


def demo_main(args) -> int:
    out = run_demo(args.store, dense_store=args.dense_store, out_dir=args.out_dir, device=args.device, overwrite=args.overwrite,
                   epochs=args.epochs, progress=not args.quiet)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
        print(f"wrote {args.json}")
    return 0
