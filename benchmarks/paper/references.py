"""Table 1's other columns: retraining (the reference), SISA and FMUL (without repair)."""

from __future__ import annotations

import time

import torch

from unlearning.baselines import SISAEnsemble, fmul_unlearn, retrain
from unlearning.data import Dataset

from .config import PaperConfig
from .metrics import class_metrics
from .runs import Run


def retrain_without(cfg: PaperConfig, run: Run, positions: torch.Tensor):
    """A model trained from the run's initial weights, in the run's batch order, minus ``positions``."""
    return retrain(
        run.data, positions, model_name=run.model_name, epochs=cfg.epochs, batch_size=run.batch_size, lr=cfg.lr,
        seed=run.seed, device=run.device, regime=run.regime, batches=run.batches,
    )


def retrain_class(cfg: PaperConfig, run: Run) -> dict:
    t0 = time.perf_counter()
    model = retrain_without(cfg, run, run.data.positions_of_class(cfg.target_class))
    seconds = time.perf_counter() - t0
    return {**class_metrics(model, run.data, cfg.target_class, device=run.device), "seconds": seconds}


def fmul_class(cfg: PaperConfig, run: Run) -> dict:
    """FMUL / UNSIR impair step only (no repair), the module's defaults, seeded by the run."""
    t0 = time.perf_counter()
    model = fmul_unlearn(run.fresh_model(), run.data, cfg.target_class, repair=False, seed=run.seed, device=run.device)
    seconds = time.perf_counter() - t0
    return {**class_metrics(model, run.data, cfg.target_class, device=run.device), "seconds": seconds}


def sisa_class(cfg: PaperConfig, data: Dataset, model_name: str, batch_size: int, seed: int, *, device: str) -> dict:
    """SISA (8 shards x 4 slices): train, then forget the targeted class by retraining affected shards.

    SISA has its own data order (seeded shards, shuffled batches inside each
    slice); it does not depend on the batch regime of the amnesiac runs.
    """
    t0 = time.perf_counter()
    ens = SISAEnsemble(device=device).train(
        data, shards=cfg.sisa_shards, slices=cfg.sisa_slices, model_name=model_name, epochs=cfg.epochs,
        batch_size=batch_size, lr=cfg.lr, seed=seed,
    )
    train_seconds = time.perf_counter() - t0
    before = class_metrics(ens.module(), data, cfg.target_class, device=device)
    checkpoint_bytes = ens.storage_bytes()
    info = ens.unlearn(data.positions_of_class(cfg.target_class))
    after = class_metrics(ens.module(), data, cfg.target_class, device=device)
    return {
        **after,
        "before": before,
        "checkpoint_bytes": checkpoint_bytes,
        "shards_retrained": len(info.shards),
        "slice_trainings": info.slice_trainings,
        "train_seconds": train_seconds,
        "seconds": info.seconds,
    }
