"""Hugging Face Trainer integration: record a ``Trainer.train()`` run with one callback.

    train = add_sample_ids(train)                       # if the dataset has no id column yet
    trainer = Trainer(model=model, args=args, train_dataset=train,
                      callbacks=[DeltaStoreCallback("run.ds", id_column="sample_id")])
    trainer.train()

How the ids travel, with the Trainer's defaults (``remove_unused_columns=True``):

1. When the Trainer is built (``on_init_end``) the callback lets the model's
   ``forward`` signature, as ``inspect`` sees it, list the id column, so the Trainer
   keeps that column (it drops every column ``forward`` does not name). Only the
   signature is extended; ``forward`` itself is called as before.
2. When training starts, the data loader's collate function is wrapped: ids are
   taken out of each example before the Trainer's own collator runs (any collator,
   int or string ids) and put back beside the batch as a plain list.
3. A forward pre-hook on the model takes them out of the call's keyword arguments:
   they never reach ``forward``. In training mode it hands them to the
   :class:`~deltastore.Recorder` (``samples``): every micro-batch of a gradient
   accumulation belongs to the next real step; evaluation batches are ignored.
4. The recorder hooks the torch optimizer inside accelerate's
   ``AcceleratedOptimizer``: it steps only on real steps, so steps the Trainer skips
   (accumulation, a GradScaler's inf/NaN skip) record nothing.

Under DDP (torchrun) every rank's callback builds its Recorder; rank 0 writes, the
others send their ids (see :mod:`deltastore.distributed`). With PEFT/LoRA only the
trainable (adapter) parameters are recorded. Requires ``pip install deltastore[hf]``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Sequence

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("deltastore.hf needs transformers: pip install 'deltastore[hf]'") from exc

import numpy as np
import torch

from .errors import InvalidArgumentError, MissingSampleIdsError
from .record import Recorder


def add_sample_ids(dataset, column: str = "sample_id", ids: Sequence | None = None):
    """``dataset`` (a ``datasets.Dataset``) with an id column: ``ids`` (ints or strings), or the row numbers.

    Row numbers are stable only as long as the dataset is: if it is regenerated,
    shuffled or filtered before training, pass ids that belong to the samples.
    """
    if column in dataset.column_names:
        raise InvalidArgumentError(f"column: expected a name the dataset does not use, got {column!r} (it has {dataset.column_names})")
    if ids is None:
        values: Any = np.arange(len(dataset), dtype=np.int64)
    else:
        values = list(ids)
        if len(values) != len(dataset):
            raise InvalidArgumentError(f"ids: expected one id per row ({len(dataset)}), got {len(values)}")
    return dataset.add_column(column, values)


class _ForwardSignature:
    """``forward`` as before, with a signature that also names the id column (for the Trainer's column filter)."""

    def __init__(self, forward, column: str):
        self._forward = forward
        sig = inspect.signature(forward)
        params = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
        extra = inspect.Parameter(column, inspect.Parameter.KEYWORD_ONLY, default=None)
        var_kw = [p for p in sig.parameters.values() if p.kind == inspect.Parameter.VAR_KEYWORD]
        self.__signature__ = sig.replace(parameters=params + [extra] + var_kw)
        self.__doc__ = getattr(forward, "__doc__", None)

    def __call__(self, *args, **kwargs):
        return self._forward(*args, **kwargs)


class _CollateWithIds:
    """Takes the id column out of each example before the Trainer's collator, puts the ids back beside the batch."""

    def __init__(self, collate, column: str):
        self.collate = collate
        self.column = column

    def __call__(self, features):
        ids = None
        if features and isinstance(features[0], Mapping) and self.column in features[0]:
            ids = [f[self.column] for f in features]
            ids = [i.item() if isinstance(i, (torch.Tensor, np.generic)) else i for i in ids]
            features = [{k: v for k, v in f.items() if k != self.column} for f in features]
        batch = self.collate(features)
        if ids is not None:
            batch[self.column] = ids
        return batch


def _wrap_collate(loader, column: str) -> None:
    """Wrap the collate function of the torch DataLoader that iterates (accelerate keeps it as ``base_dataloader``)."""
    while isinstance(getattr(loader, "__dict__", {}).get("base_dataloader"), torch.utils.data.DataLoader):
        loader = loader.__dict__["base_dataloader"]
    if not isinstance(loader.collate_fn, _CollateWithIds):
        loader.collate_fn = _CollateWithIds(loader.collate_fn, column)


def _model_to_inspect(model):
    """The module whose ``forward`` the Trainer inspects for column names (PEFT: the base model)."""
    try:
        from peft import PeftModel

        if isinstance(model, PeftModel):
            return model.get_base_model()
    except ImportError:
        pass
    return model


class DeltaStoreCallback(TrainerCallback):
    """Record every real optimizer step of a ``transformers.Trainer`` run into a deltastore store.

    Parameters
    ----------
    store : path (or StoreIO) of the store; created when training starts.
    id_column : dataset column holding each sample's id (int or string); see
        :func:`add_sample_ids` for datasets without one.
    **recorder_options : passed to :class:`~deltastore.Recorder` (``plan=``,
        ``value_dtype=``, ``mode="a"`` to resume, ...).

    Pass the callback to ``Trainer(callbacks=[...])`` (not ``add_callback`` after the
    Trainer is built: the column filter is set up in ``on_init_end``).
    """

    def __init__(self, store, id_column: str = "sample_id", **recorder_options):
        if not isinstance(id_column, str) or not id_column:
            raise InvalidArgumentError(f"id_column: expected a non-empty column name, got {id_column!r}")
        self.store = store
        self.id_column = id_column
        self.recorder_options = recorder_options
        self.recorder: Recorder | None = None
        self._inspected = None
        self._hook = None
        self._epoch = 0

    # ---- Trainer events -----------------------------------------------------
    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        target = _model_to_inspect(model)
        if isinstance(target.__dict__.get("forward"), _ForwardSignature):  # a second Trainer on the same model
            self._inspected = target
            if self.id_column in inspect.signature(target.forward).parameters:
                return
        if self.id_column in inspect.signature(target.forward).parameters:
            raise InvalidArgumentError(f"id_column: {self.id_column!r} is an argument of {type(target).__name__}.forward; choose another name")
        target.forward = _ForwardSignature(target.forward, self.id_column)
        self._inspected = target

    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
        if self._inspected is None:
            raise InvalidArgumentError("DeltaStoreCallback: expected to be passed in Trainer(callbacks=[...]), "
                                       "got added after the Trainer was built (the id column would have been dropped)")
        if train_dataloader is not None:
            _wrap_collate(train_dataloader, self.id_column)
        self._epoch = int(round(state.epoch or 0))
        self.recorder = Recorder(self.store, model, optimizer, **self.recorder_options)
        self._hook = model.register_forward_pre_hook(self._take_ids, with_kwargs=True)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._epoch = int(round(state.epoch or 0))

    def on_train_end(self, args, state, control, **kwargs):
        self._release(fingerprint=True)

    # ---- the id path -----------------------------------------------------------
    def _take_ids(self, module, args, kwargs):
        ids = kwargs.pop(self.id_column, None)
        if module.training and torch.is_grad_enabled() and self.recorder is not None and not self.recorder.closed:
            if ids is None:
                raise MissingSampleIdsError(
                    f"training batch: expected the column {self.id_column!r} with each sample's id, got keys {sorted(kwargs)}; "
                    "add one with deltastore.hf.add_sample_ids(dataset)")
            self.recorder.samples(ids, epoch=self._epoch)
        return args, kwargs

    def _release(self, fingerprint: bool) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.recorder is not None and not self.recorder.closed:
            self.recorder.close(fingerprint=fingerprint)
