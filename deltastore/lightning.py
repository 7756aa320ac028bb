"""Lightning integration: record a `Trainer.fit` run with one callback (optional extra).

    trainer = Trainer(callbacks=[DeltaStoreCallback("run.ds")])

Batches must carry their sample ids: by default the callback takes
``batch["ids"]`` for dict batches and the last element of tuple/list batches;
pass ``ids_from=`` to say otherwise. Requires ``pip install deltastore[lightning]``.

Rank-aware: under the DDP strategy every rank's callback builds its Recorder with
the same arguments; rank 0 alone opens the store and writes, the other ranks send
their batches' ids each step (tensor collectives, no pickle). See
:mod:`deltastore.distributed`.
"""

from __future__ import annotations

from typing import Any, Callable

try:
    from lightning.pytorch.callbacks import Callback
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("deltastore.lightning needs Lightning: pip install 'deltastore[lightning]'") from exc

from .errors import InvalidArgumentError, MissingSampleIdsError
from .record import Recorder


def default_ids(batch: Any):
    if isinstance(batch, dict):
        if "ids" not in batch:
            raise MissingSampleIdsError(f"batch: expected a dict with key 'ids', got keys {sorted(batch)}; pass ids_from=")
        return batch["ids"]
    if isinstance(batch, (tuple, list)) and batch:
        return batch[-1]
    raise MissingSampleIdsError(f"batch: expected a dict or a tuple whose last element is the ids, got {type(batch).__name__}; pass ids_from=")


class DeltaStoreCallback(Callback):
    """Attach a :class:`~deltastore.Recorder` to the (single) optimizer of a fit."""

    def __init__(self, store, *, ids_from: Callable[[Any], Any] = default_ids, **recorder_kwargs):
        super().__init__()
        self.store = store
        self.ids_from = ids_from
        self.recorder_kwargs = recorder_kwargs
        self.recorder: Recorder | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        if len(trainer.optimizers) != 1:
            raise InvalidArgumentError(f"DeltaStoreCallback: expected exactly one optimizer, got {len(trainer.optimizers)}")
        # Lightning steps once per accumulate_grad_batches micro-batches: the recorder charges
        # every micro-batch's ids to the next real step by itself.
        self.recorder = Recorder(self.store, pl_module, trainer.optimizers[0], **self.recorder_kwargs)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.recorder.samples(self.ids_from(batch), epoch=trainer.current_epoch)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.recorder is not None:
            self.recorder.close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self.recorder is not None and not self.recorder.closed:
            self.recorder.close(fingerprint=False)
