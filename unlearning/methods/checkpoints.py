"""Periodic full checkpoints beside a store's updates: weights and optimizer state at chosen steps.

Why: a store holds what every step changed, so the weights at step t are
``checkpoint(c) + Σ_{c ≤ s < t} Δw_s`` for the last checkpoint c ≤ t -- exact for
a dense float32 store, approximate for a pruned or int8 one (the error is
bounded by the steps since the checkpoint). Adam's second moments are not in
the updates at all; sample-precise removal needs them (see ``precise.py``).

Layout (under the store's ``checkpoints/`` prefix, through the storage seam):

* ``checkpoints/step-<t:08d>.safetensors`` -- tensors ``model/<name>`` (every
  floating-point parameter and buffer *before* step t runs) and, for
  optimizers with per-parameter state, ``opt/<name>/<key>`` (e.g.
  ``exp_avg``, ``exp_avg_sq``); string metadata ``step`` and ``optimizer``
  (JSON: class name, hyper-parameters of the first param group, Adam's step
  count).
* ``checkpoints/step-<t:08d>.sha256`` -- hex SHA-256 of the .safetensors
  bytes, written after them. A checkpoint without its digest is an
  unfinished write and is not listed; a digest whose data is missing or does
  not match raises :class:`CorruptStoreError`.

No pickle: safetensors holds tensors and string metadata only.
"""

from __future__ import annotations

import hashlib
import json
import re

import torch
from torch import nn

from deltastore.errors import CorruptStoreError, InvalidArgumentError
from deltastore.storage import open_io

__all__ = ["CHECKPOINT_DIR", "Checkpointer", "Checkpoint", "list_checkpoints", "load_checkpoint", "checkpoint_bytes"]

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})\.sha256$")


def _key(step: int, ext: str) -> str:
    return f"{CHECKPOINT_DIR}/step-{int(step):08d}.{ext}"


def _optimizer_meta(optimizer: torch.optim.Optimizer) -> dict:
    group = optimizer.param_groups[0]
    keep = ("lr", "betas", "eps", "weight_decay", "momentum", "dampening", "nesterov", "amsgrad", "maximize")
    meta = {"type": type(optimizer).__name__}
    meta.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items() if k in keep})
    return meta


class Checkpoint:
    """One loaded checkpoint: ``step``, ``model`` (name -> tensor), ``optimizer_state`` (name -> key -> tensor), ``optimizer`` (dict)."""

    def __init__(self, step: int, model: dict, optimizer_state: dict, optimizer: dict):
        self.step, self.model, self.optimizer_state, self.optimizer = step, model, optimizer_state, optimizer


class Checkpointer:
    """Save ``model`` and ``optimizer`` every ``every`` steps (call :meth:`before_step` right before ``optimizer.step()``).

    It also exposes ``samples(ids, epoch)`` so it can sit beside a Recorder
    in :func:`unlearning.training.train`'s ``recorder=`` slot (ids are ignored;
    the call marks "a step is about to run"). Call :meth:`close` after
    training to save the final state as well.
    """

    def __init__(self, store, model: nn.Module, optimizer: torch.optim.Optimizer, *, every: int):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise InvalidArgumentError(f"every: expected an integer >= 1 (steps between checkpoints), got {every!r}")
        self.io = open_io(store)
        self.model, self.optimizer, self.every = model, optimizer, every
        self.step = 0
        self.bytes_written = 0

    def samples(self, ids=None, epoch: int = 0) -> None:
        self.before_step()

    def before_step(self) -> None:
        if self.step % self.every == 0:
            self.save(self.step)
        self.step += 1

    def close(self) -> None:
        if self.step % self.every != 0 or self.step == 0:
            self.save(self.step)

    def save(self, step: int) -> None:
        from safetensors.torch import save

        names = {id(p): n for n, p in self.model.named_parameters()}
        tensors = {f"model/{n}": t.detach().cpu().contiguous().clone() for n, t in self.model.state_dict().items() if t.is_floating_point()}
        adam_steps = []
        for p, state in self.optimizer.state.items():
            name = names.get(id(p))
            if name is None:
                continue
            for k, v in state.items():
                if k == "step":
                    adam_steps.append(float(v))
                elif isinstance(v, torch.Tensor) and v.is_floating_point():
                    tensors[f"opt/{name}/{k}"] = v.detach().cpu().contiguous().clone()
        meta = _optimizer_meta(self.optimizer)
        meta["step_count"] = int(max(adam_steps)) if adam_steps else 0
        blob = save(tensors, metadata={"step": str(int(step)), "optimizer": json.dumps(meta)})
        if not self.bytes_written:  # an encrypted store's checkpoints are sealed: never written through a plain seam
            from deltastore.crypto import refuse_plain_writes

            refuse_plain_writes(self.io)
        self.io.write(_key(step, "safetensors"), blob)
        self.io.write(_key(step, "sha256"), hashlib.sha256(blob).hexdigest().encode())
        self.bytes_written += len(blob)


def list_checkpoints(store) -> list[int]:
    """Steps that have a complete checkpoint (its digest written), ascending."""
    io = open_io(store)
    out = []
    for key in io.list_dir(CHECKPOINT_DIR):
        m = _NAME.match(key.rsplit("/", 1)[-1])
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


def checkpoint_bytes(store) -> int:
    """Bytes the checkpoints take (data and digests)."""
    io = open_io(store)
    return io.nbytes(CHECKPOINT_DIR)


def load_checkpoint(store, step: int) -> Checkpoint:
    """Read and verify the checkpoint of ``step``; CorruptStoreError if it is damaged or missing its data."""
    from safetensors.torch import load

    io = open_io(store)
    key = _key(step, "safetensors")
    try:
        expected = io.read(_key(step, "sha256")).decode().strip()
        blob = io.read(key)
    except FileNotFoundError as exc:
        raise CorruptStoreError(f"{io.where(key)}: checkpoint of step {step} is missing ({exc})") from exc
    if hashlib.sha256(blob).hexdigest() != expected:
        raise CorruptStoreError(f"{io.where(key)}: checkpoint of step {step} fails its SHA-256 check")
    tensors = load(blob)
    meta = _metadata(blob)
    model, opt = {}, {}
    for k, v in tensors.items():
        kind, rest = k.split("/", 1)
        if kind == "model":
            model[rest] = v
        else:
            name, field = rest.rsplit("/", 1)
            opt.setdefault(name, {})[field] = v
    return Checkpoint(int(meta["step"]), model, opt, json.loads(meta["optimizer"]))


def _metadata(blob: bytes) -> dict:
    # safetensors layout: 8-byte little-endian header length, then the JSON header.
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n]).get("__metadata__", {})
