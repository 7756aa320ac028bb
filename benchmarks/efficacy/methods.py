"""Every method of the comparison, as ``fn(run, forget_positions, ctx) -> (model, cost)``.

``cost`` = ``{"seconds", "steps", "sample_gradients"}``: wall time, optimizer steps
of gradient work, and per-sample forward/backward passes (the work measure that
is fair across batch sizes; retraining's is every retained sample once per epoch).
Store reads are in the seconds, not in the gradient counts.
"""

from __future__ import annotations

import time

import torch

from deltastore.plan import PruningPlan
from deltastore.read import StoreReader
from unlearning.forget import forget
from unlearning.ledger import LEDGER_DIR
from unlearning.methods import precise_removal, repair
from unlearning.partial_updates import SelectionSchedule, gradient_ascent_unlearn, label_flip_unlearn

from .config import EfficacyConfig
from .testbed import DEFAULT, FLOAT32, Run


def _retained(run: Run, forget_pos: torch.Tensor):
    keep = torch.ones(run.data.y_train.numel(), dtype=torch.bool)
    keep[forget_pos] = False
    return run.data.x_train[keep], run.data.y_train[keep]


def amnesiac(store: str, plan: PruningPlan | None = None):
    def fn(run: Run, pos: torch.Tensor, ctx: dict):
        reader = ctx.setdefault(("reader", store), StoreReader(run.stores[store]))
        reader.io.delete_prefix(LEDGER_DIR)  # every request starts from the trained model and an empty ledger
        model = run.model()
        t0 = time.perf_counter()
        receipt = forget(model, reader, run.data.ids_train[pos], plan=plan)
        return model, {"seconds": time.perf_counter() - t0, "steps": 0, "sample_gradients": 0,
                       "steps_subtracted": len(receipt.steps)}
    return fn


def with_repair(base, fraction: float, cfg: EfficacyConfig):
    def fn(run: Run, pos: torch.Tensor, ctx: dict):
        model, cost = base(run, pos, ctx) if base is not None else (run.model(), {"seconds": 0.0, "steps": 0, "sample_gradients": 0})
        x, y = _retained(run, pos)
        k = max(1, round(fraction * run.train_steps))
        info = repair(model, x, y, steps=k, batch_size=run.setup.batch_size, lr=run.setup.lr, seed=run.seed)
        out = dict(cost)
        out["seconds"] += info["seconds"]
        out["steps"] += info["steps"]
        out["sample_gradients"] += info["sample_gradients"]
        return model, out
    return fn


def precise(store: str):
    def fn(run: Run, pos: torch.Tensor, ctx: dict):
        model = run.model()
        t0 = time.perf_counter()
        state, info = precise_removal(model, run.stores[store], run.data.ids_train[pos].numpy(), run.fetch)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(state[n])
        return model, {"seconds": time.perf_counter() - t0, "steps": info["affected_steps"],
                       "sample_gradients": info["sample_gradients"], "steps_replayed": info["steps_replayed"]}
    return fn


def partial_update(kind: str, cfg: EfficacyConfig):
    lr, epochs = cfg.label_flip if kind == "label_flip" else cfg.gradient_ascent

    def fn(run: Run, pos: torch.Tensor, ctx: dict):
        model = run.model()
        x, y = run.data.x_train[pos], run.data.y_train[pos]
        t0 = time.perf_counter()
        if kind == "label_flip":
            out = label_flip_unlearn(model, x, y, num_classes=run.data.num_classes, epochs=epochs, lr=lr,
                                     schedule=SelectionSchedule.for_label_flip(model), seed=run.seed)
        else:
            out = gradient_ascent_unlearn(model, x, y, epochs=epochs, lr=lr,
                                          schedule=SelectionSchedule.for_gradient_ascent(model), seed=run.seed)
        return out, {"seconds": time.perf_counter() - t0, "steps": epochs, "sample_gradients": epochs * int(pos.numel())}
    return fn


def method_table(cfg: EfficacyConfig) -> dict[str, tuple[object, dict]]:
    """name -> (fn, description: store, requirements)."""
    mid = sorted(cfg.repair_fractions)[len(cfg.repair_fractions) // 2]
    top = max(cfg.repair_fractions)
    conv = amnesiac(FLOAT32)
    table: dict[str, tuple[object, dict]] = {
        "amnesiac": (conv, {"store": FLOAT32, "needs": "store"}),
        "amnesiac-partial": (amnesiac(FLOAT32, PruningPlan.layerwise()), {"store": FLOAT32, "needs": "store"}),
    }
    for f in sorted(cfg.repair_fractions):
        table[f"amnesiac+repair{f:g}"] = (with_repair(conv, f, cfg), {"store": FLOAT32, "needs": "store, retained data"})
    table[f"repair-only{top:g}"] = (with_repair(None, top, cfg), {"store": "-", "needs": "retained data (control: no subtraction)"})
    table["precise"] = (precise(FLOAT32), {"store": FLOAT32, "needs": "store, checkpoints, forgotten samples"})
    table[f"precise+repair{mid:g}"] = (with_repair(precise(FLOAT32), mid, cfg), {"store": FLOAT32, "needs": "store, checkpoints, forgotten samples, retained data"})
    table["amnesiac[default]"] = (amnesiac(DEFAULT), {"store": DEFAULT, "needs": "store"})
    table[f"amnesiac+repair{mid:g}[default]"] = (with_repair(amnesiac(DEFAULT), mid, cfg), {"store": DEFAULT, "needs": "store, retained data"})
    table["precise[default]"] = (precise(DEFAULT), {"store": DEFAULT, "needs": "store, checkpoints, forgotten samples"})
    table["label-flip (Alg. 2)"] = (partial_update("label_flip", cfg), {"store": "-", "needs": "forgotten samples"})
    table["grad-ascent (Alg. 3)"] = (partial_update("gradient_ascent", cfg), {"store": "-", "needs": "forgotten samples"})
    return table
