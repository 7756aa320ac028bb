"""The memorisation testbed: digits with wrong labels, a recorded training run, requests, references, shadows.

One *run* = (model, seed): wrong labels drawn for 10 % of the training images,
the model trained until it fits them while recording two stores (dense
float32, and the default: the paper's layer-wise plan in int8) plus periodic
checkpoints; three forget requests; for each, the reference retrained without
it from the same initialisation and the same batch order; shadow models on
random halves for the per-example attack.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deltastore.plan import PruningPlan
from deltastore.record import Recorder
from unlearning.data import Dataset, load_digits_split
from unlearning.models import build_model
from unlearning.training import make_batches, predict, train
from unlearning.methods import Checkpointer, checkpoint_bytes

from .config import EfficacyConfig, ModelSetup

FLOAT32, DEFAULT = "float32-dense", "default-int8"
REQUESTS = ("mislabeled", "random", "class")


class _Fanout:
    def __init__(self, hooks):
        self.hooks = list(hooks)

    def samples(self, ids, epoch: int = 0) -> None:
        for h in self.hooks:
            h.samples(ids, epoch=epoch)


def noisy_digits(cfg: EfficacyConfig, seed: int) -> tuple[Dataset, torch.Tensor, torch.Tensor]:
    """Digits whose training labels are wrong for ``noise_fraction`` of the images.

    Returns (dataset with the training labels, true training labels, positions of the mislabeled).
    A wrong label is the true one plus a uniform offset in 1..9 (mod 10): never the true class.
    """
    base = load_digits_split(cfg.data_seed)
    n = base.y_train.numel()
    g = torch.Generator().manual_seed(10_000 + seed)
    mis = torch.randperm(n, generator=g)[: int(round(cfg.noise_fraction * n))].sort().values
    y = base.y_train.clone()
    y[mis] = (y[mis] + torch.randint(1, base.num_classes, (mis.numel(),), generator=g)) % base.num_classes
    data = Dataset(base.x_train, y, base.x_test, base.y_test, base.ids_train, base.num_classes)
    return data, base.y_train, mis


def requests(cfg: EfficacyConfig, data: Dataset, mislabeled: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """(a) a few % drawn from the mislabeled, (b) the same size at random, (c) one class (by training label)."""
    n = data.y_train.numel()
    size = int(round(cfg.request_fraction * n))
    g = torch.Generator().manual_seed(20_000 + seed)
    return {
        "mislabeled": mislabeled[torch.randperm(mislabeled.numel(), generator=g)[:size]].sort().values,
        "random": torch.randperm(n, generator=g)[:size].sort().values,
        "class": data.positions_of_class(cfg.target_class),
    }


@dataclass
class Run:
    setup: ModelSetup
    seed: int
    data: Dataset
    true_y: torch.Tensor
    mislabeled: torch.Tensor
    batches: list
    trained: dict[str, torch.Tensor]
    stores: dict[str, Path]
    train_seconds: float
    train_steps: int
    train_sample_gradients: int
    storage: dict = field(default_factory=dict)

    def model(self, state: dict | None = None) -> nn.Module:
        m = build_model(self.setup.name, in_shape=self.data.in_shape, num_classes=self.data.num_classes, seed=self.seed)
        m.load_state_dict(self.trained if state is None else state)
        return m

    def fetch(self, ids) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.as_tensor(np.asarray(ids), dtype=torch.int64)  # ids_train == positions
        return self.data.x_train[pos], self.data.y_train[pos]


def train_and_record(cfg: EfficacyConfig, data, true_y, mislabeled, setup: ModelSetup, seed: int, workdir: Path) -> Run:
    root = Path(workdir) / setup.name / f"seed{seed}"
    root.mkdir(parents=True)
    model = build_model(setup.name, in_shape=data.in_shape, num_classes=data.num_classes, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=setup.lr)
    batches = make_batches(data.y_train, batch_size=setup.batch_size, epochs=setup.epochs, seed=seed)
    total = sum(len(ep) for ep in batches)
    every = max(1, math.ceil(total / cfg.checkpoints_per_run))
    stores = {FLOAT32: root / FLOAT32, DEFAULT: root / DEFAULT}
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        rec_f = stack.enter_context(Recorder(stores[FLOAT32], model, opt, mask_seed=seed, plan=PruningPlan.dense(), value_dtype="float32",
                                                   codec="blosc-lz4"))  # lz4: ~5x cheaper to encode than zstd here
        rec_d = stack.enter_context(Recorder(stores[DEFAULT], model, opt, mask_seed=seed))  # the defaults
        # Checkpoints go into both stores (identical files): each store stands alone.
        cks = [Checkpointer(stores[FLOAT32], model, opt, every=every), Checkpointer(stores[DEFAULT], model, opt, every=every)]
        train(model, data, epochs=setup.epochs, batch_size=setup.batch_size, lr=setup.lr, seed=seed,
              optimizer=opt, recorder=_Fanout([rec_f, rec_d, *cks]), batches=batches)
        for ck in cks:
            ck.close()
    seconds = time.perf_counter() - t0
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    storage = {}
    for name, path in stores.items():
        ck = checkpoint_bytes(path)
        total_bytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        storage[name] = {"store_bytes": total_bytes - ck, "checkpoint_bytes": ck, "checkpoint_every": every}
    n_samples = sum(int(b.numel()) for ep in batches for b in ep)
    return Run(setup, seed, data, true_y, mislabeled, batches, trained, stores, seconds, total, n_samples, storage)


def retrain(run: Run, forget: torch.Tensor) -> tuple[nn.Module, dict]:
    """Same initialisation, same batch order, the forgotten samples dropped from every batch."""
    n = run.data.y_train.numel()
    keep = torch.ones(n, dtype=torch.bool)
    keep[forget] = False
    model = build_model(run.setup.name, in_shape=run.data.in_shape, num_classes=run.data.num_classes, seed=run.seed)
    info = train(model, run.data, epochs=run.setup.epochs, batch_size=run.setup.batch_size, lr=run.setup.lr,
                 seed=run.seed, train_indices=torch.nonzero(keep).flatten(), batches=run.batches)
    samples = sum(int(keep[b].sum()) for ep in run.batches for b in ep)
    return model, {"seconds": info["seconds"], "steps": info["steps"], "sample_gradients": samples}


def shadows(cfg: EfficacyConfig, run: Run) -> dict:
    """``k`` shadow models, each trained (target's recipe, fresh init) on a random half of the training set.

    Returns their logits on train and test and the (k, n_train) IN mask.
    """
    n = run.data.y_train.numel()
    g = torch.Generator().manual_seed(30_000 + run.seed)
    ins, train_logits, test_logits, seconds = [], [], [], 0.0
    for k in range(cfg.shadows):
        half = torch.randperm(n, generator=g)[: n // 2]
        mask = torch.zeros(n, dtype=torch.bool)
        mask[half] = True
        m = build_model(run.setup.name, in_shape=run.data.in_shape, num_classes=run.data.num_classes, seed=1_000 + 97 * run.seed + k)
        info = train(m, run.data, epochs=run.setup.epochs, batch_size=run.setup.batch_size, lr=run.setup.lr,
                     seed=1_000 + 97 * run.seed + k, train_indices=half)
        seconds += info["seconds"]
        ins.append(mask.numpy())
        train_logits.append(predict(m, run.data.x_train))
        test_logits.append(predict(m, run.data.x_test))
    return {"in": np.stack(ins), "train_logits": train_logits, "test_logits": test_logits, "seconds": seconds}
