"""Train one (model, batch size, regime, seed) and record its updates.

Every run records ONE dense float32 store (ρ = 0, lossless): all pruning rates
and modes are applied to it at unlearning time (``forget(..., plan=...)``),
which DESIGN invariant 5 makes equal to recording with that plan. For the
seeds in ``extra_store_seeds`` the same optimizer also feeds three more
recorders -- the paper's plan in float32 and in the default int8 format, and a
dense int8 store -- for the storage table and an end-to-end check of invariant 5.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from deltastore.plan import PruningPlan
from deltastore.read import StoreReader
from deltastore.record import Recorder
from unlearning.data import Dataset
from unlearning.models import build_model
from unlearning.training import make_batches, train

from .config import PaperConfig
from .metrics import test_accuracies

DENSE = "dense-float32"


class _Fanout:
    """Feeds one batch's ids to several recorders attached to the same optimizer."""

    def __init__(self, recorders):
        self.recorders = list(recorders)

    def samples(self, ids, epoch: int = 0) -> None:
        for r in self.recorders:
            r.samples(ids, epoch=epoch)


@dataclass
class Run:
    """A trained model, its batch order and its stores."""

    model_name: str
    batch_size: int
    regime: str
    seed: int
    data: Dataset
    batches: list
    trained: dict[str, torch.Tensor]  # CPU copy of the final state dict
    stores: dict[str, Path]
    curve: dict
    train_seconds: float
    device: str
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return config_key(self.model_name, self.batch_size, self.regime)

    @property
    def steps_per_epoch(self) -> list[int]:
        return [len(ep) for ep in self.batches]

    def fresh_model(self) -> nn.Module:
        """A new model (same architecture) holding the trained weights, on the run's device."""
        m = build_model(self.model_name, in_shape=self.data.in_shape, num_classes=self.data.num_classes, seed=self.seed)
        m.load_state_dict(self.trained)
        return m.to(self.device)

    def reader(self, name: str = DENSE) -> StoreReader:
        return StoreReader(self.stores[name])


def config_key(model_name: str, batch_size: int, regime: str) -> str:
    return f"{model_name}/bs{batch_size}/{regime}"


def _store_specs(cfg: PaperConfig, extra: bool) -> dict[str, dict]:
    specs = {DENSE: dict(plan=PruningPlan.dense(), value_dtype="float32")}
    if extra:
        specs["paper-float32"] = dict(plan=cfg.paper_plan(), value_dtype="float32")
        specs["paper-int8"] = dict(plan=cfg.paper_plan(), value_dtype="int8")
        specs["dense-int8"] = dict(plan=PruningPlan.dense(), value_dtype="int8")
    return specs


def train_and_record(
    cfg: PaperConfig, data: Dataset, model_name: str, batch_size: int, regime: str, seed: int, workdir: Path, *, device: str
) -> Run:
    """Train with Adam as in paper §5.4.2, recording every step; accuracy after every epoch."""
    root = Path(workdir) / model_name / f"bs{batch_size}" / regime / f"seed{seed}"
    root.mkdir(parents=True, exist_ok=False)
    model = build_model(model_name, in_shape=data.in_shape, num_classes=data.num_classes, seed=seed).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    batches = make_batches(data.y_train, batch_size=batch_size, epochs=cfg.epochs, seed=seed, regime=regime)
    first = test_accuracies(model, data, cfg.target_class, device=device)
    curve = {"epoch": [0], "target": [first["target"]], "retained": [first["retained"]]}

    def on_epoch_end(epoch: int, m: nn.Module) -> None:
        cm = test_accuracies(m, data, cfg.target_class, device=device)
        curve["epoch"].append(epoch + 1)
        curve["target"].append(cm["target"])
        curve["retained"].append(cm["retained"])

    specs = _store_specs(cfg, seed in cfg.extra_store_seeds)
    stores = {name: root / name for name in specs}
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        recorders = [
            stack.enter_context(Recorder(stores[name], model, opt, mask_seed=seed, **kw)) for name, kw in specs.items()
        ]
        train(
            model, data, epochs=cfg.epochs, batch_size=batch_size, lr=cfg.lr, seed=seed, optimizer=opt,
            regime=regime, recorder=_Fanout(recorders), device=device, on_epoch_end=on_epoch_end, batches=batches,
        )
    seconds = time.perf_counter() - t0
    trained = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return Run(model_name, batch_size, regime, seed, data, batches, trained, stores, curve, seconds, str(device))


def batch_composition(run: Run, target_class: int) -> dict:
    """How a class request meets this run's batches: steps touched, and the targeted share of those batches."""
    y = run.data.y_train
    touched, shares, total = 0, [], 0
    for epoch in run.batches:
        for b in epoch:
            total += 1
            n_t = int((y[b] == target_class).sum())
            if n_t:
                touched += 1
                shares.append(n_t / b.numel())
    return {
        "steps": total,
        "class_steps": touched,
        "class_step_fraction": touched / total,
        "target_share_in_touched_batches": sum(shares) / len(shares) if shares else float("nan"),
        "mean_batch_size": y.numel() * len(run.batches) / total,
    }
