"""forget / restore: turn a deletion request into a new model, with a receipt and a ledger entry.

forget(model, store, ids):  index → affected steps (minus those already
subtracted) → ``StoreReader.sum_updates`` streams their stored updates to the
device → one subtraction at the end: w' = w − Σ pruned Δw (paper eq. 7; eq. 4
when the store is dense). Everything that can fail (unknown ids, a corrupted
chunk, a model that does not match) fails *before* the model is touched.
"""

from __future__ import annotations

import os
import time
from typing import Mapping

import torch

from deltastore.errors import (
    EmptyStoreError,
    FingerprintMismatchError,
    InvalidArgumentError,
    LedgerError,
    ModelMismatchError,
    UnknownSampleIdsError,
)
from deltastore.format import model_fingerprint
from deltastore.index import parse_sample_ids
from deltastore.plan import PruningPlan
from deltastore.devices import parse_device
from deltastore.read import StoreReader

from .ledger import Ledger, Receipt, new_request_id, parse_request_id


def _named_tensors(model, reader: StoreReader) -> dict[str, torch.Tensor]:
    """The store's recorded tensors, taken from a module or a state dict."""
    if isinstance(model, torch.nn.Module):
        named = dict(model.named_parameters(remove_duplicate=False))
        named.update(dict(model.named_buffers(remove_duplicate=False)))
    elif isinstance(model, Mapping):
        named = dict(model)
    else:
        raise InvalidArgumentError(f"model: expected a torch.nn.Module or a state dict, got {type(model).__name__}")
    reader.check_model(named)
    out = {}
    for t in reader.manifest.tensors:
        tensor = named[t.name]
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise ModelMismatchError(f"{t.name}: expected a floating-point tensor, got {getattr(tensor, 'dtype', type(tensor).__name__)}")
        out[t.name] = tensor
    return out


def _open(store) -> StoreReader:
    return store if isinstance(store, StoreReader) else StoreReader(store)


def _check_fingerprint(current: str, expected: str | None, force: bool, where: str) -> None:
    if expected is None or current == expected or force:
        return
    raise FingerprintMismatchError(
        f"{where}: the model is not in the state the store expects (expected fingerprint {expected[:23]}..., "
        f"got {current[:23]}...); load the model the store's last request produced, or pass force=True"
    )


def _updated(named: dict[str, torch.Tensor], updates: dict[str, torch.Tensor], sign: float) -> dict[str, torch.Tensor]:
    """The new values of the updated tensors, computed to the side (the model is not touched)."""
    out = {}
    with torch.no_grad():
        for name, upd in updates.items():
            t = named[name]
            upd = upd.to(t.device, non_blocking=True)
            if t.dtype == torch.float32:
                out[name] = torch.add(t, upd, alpha=sign)
            else:  # bf16/fp16 parameters: do the arithmetic in float32, round once
                out[name] = (t.float() + sign * upd).to(t.dtype)
    return out


def _commit(named: dict[str, torch.Tensor], new: dict[str, torch.Tensor], receipt: Receipt, ledger: Ledger, before_commit) -> None:
    """All or nothing: ``before_commit`` (e.g. the CLI's atomic --out) and the durable ledger
    entry first; the model changes in place only once both have succeeded."""
    if before_commit is not None:
        before_commit({**named, **new})
    ledger.append(receipt)
    with torch.no_grad():
        for name, t in new.items():
            named[name].copy_(t)


BUFFER_MODES = ("keep", "subtract")


def _parse_buffers(buffers: str) -> str:
    if buffers not in BUFFER_MODES:
        raise InvalidArgumentError(f"buffers: expected one of {BUFFER_MODES}, got {buffers!r}")
    return buffers


def _weights_only(updates: dict[str, torch.Tensor], reader: StoreReader, buffers: str) -> dict[str, torch.Tensor]:
    """Drop the buffers' summed deltas unless they are to be applied like weights."""
    if buffers == "subtract":
        return updates
    kinds = {t.name: t.kind for t in reader.manifest.tensors}
    return {n: u for n, u in updates.items() if kinds[n] != "buffer"}


def forget(
    model,
    store,
    sample_ids,
    *,
    device=None,
    plan: PruningPlan | None = None,
    buffers: str = "keep",
    request_id: str | None = None,
    allow_unknown: bool = False,
    force: bool = False,
    progress: bool = False,
    lock_timeout: float = 60.0,
    before_commit=None,
) -> Receipt:
    """Forget ``sample_ids``: subtract the stored updates of every step that saw them.

    Parameters
    ----------
    model : nn.Module or state dict (modified in place).
    store : path or an open :class:`StoreReader`.
    sample_ids : ids of the store's declared type (int64 or string).
    device : where updates are accumulated; default the model's device.
    plan : unlearn-time pruning plan (dense stores only): one dense recording
        serves a sweep of rates/modes, equal to recording with that plan.
    allow_unknown : if False (default), ids the index never saw raise
        UnknownSampleIdsError; if True they are listed in the receipt.
    force : skip the fingerprint check (the model must still match names/shapes).
    before_commit : called with the new weights (every recorded tensor, by name)
        after everything that can fail has been checked and computed, before the
        ledger entry is written; if it raises, neither the ledger nor the model
        changes. The model is changed in place only after the entry is durable.
    buffers : "keep" (default) leaves recorded buffers -- BatchNorm running
        statistics -- as they are; "subtract" subtracts their recorded changes like
        weights (exactly undoes those steps' buffer changes, the algebra of the
        dense-sum invariant). Running statistics are moving averages: a step's
        recorded change is not what that step still contributes, and subtracting
        them wrecks the model (ResNet-9 on digits, one sample in 2 steps: test
        accuracy 0.951 -> 0.613 with "subtract", 0.949 with "keep").
    """
    buffers = _parse_buffers(buffers)
    reader = _open(store)
    if reader.committed_steps == 0:
        raise EmptyStoreError(f"{reader.root}: expected a store with committed steps to forget from, got none (was recording closed?)")
    ids = parse_sample_ids(sample_ids, reader.manifest.sample_id_type)
    if len(ids) == 0:
        raise InvalidArgumentError("sample_ids: expected at least one id to forget, got none")
    named = _named_tensors(model, reader)
    first = next(iter(named.values()))
    dev = parse_device(device if device is not None else first.device)
    request_id = parse_request_id(request_id) if request_id is not None else new_request_id()
    steps, unknown = reader.index.lookup(ids)
    if unknown and not allow_unknown:
        shown = list(unknown)[:10]
        raise UnknownSampleIdsError(
            f"sample_ids: {len(unknown)} of {len(ids)} ids were never recorded in {reader.root} (e.g. {shown}); "
            "pass allow_unknown=True to forget the rest and list them in the receipt",
            ids=unknown,
        )
    ledger = Ledger(reader.io)
    t0 = time.perf_counter()
    with ledger.locked(lock_timeout):
        entries = ledger.entries()
        Ledger.require_new_id(entries, request_id)
        before = model_fingerprint(named)
        _check_fingerprint(before, Ledger.expected_fingerprint(entries, reader.model_fingerprint), force, str(reader.root))
        done = Ledger.subtracted_steps(entries)
        todo = [int(s) for s in steps if int(s) not in done]
        skipped = [int(s) for s in steps if int(s) in done]
        result = reader.sum_updates(todo, device=dev, plan=plan, progress=progress)  # may raise: model untouched
        new = _updated(named, _weights_only(result.updates, reader, buffers), -1.0)
        receipt = Receipt(
            request_id=request_id,
            kind="forget",
            sample_count=len(ids),
            unknown_ids=[str(u) if isinstance(u, str) else int(u) for u in unknown],
            steps=todo,
            steps_already_subtracted=skipped,
            bytes_read=result.bytes_read,
            seconds=time.perf_counter() - t0,
            read_seconds=result.seconds,
            fingerprint_before=before,
            fingerprint_after=model_fingerprint({**named, **new}),
            plan=plan.to_json() if plan is not None else None,
            device=str(dev),
            forced=bool(force),
            created=time.time(),
            buffers=buffers,
        )
        _commit(named, new, receipt, ledger, before_commit)
    return receipt


def restore(
    model,
    store,
    request_id: str,
    *,
    device=None,
    force: bool = False,
    progress: bool = False,
    lock_timeout: float = 60.0,
    before_commit=None,
) -> Receipt:
    """Undo a forget request: add its subtracted updates back (with the same plan).

    All or nothing, as :func:`forget` (``before_commit`` likewise).
    """
    reader = _open(store)
    named = _named_tensors(model, reader)
    first = next(iter(named.values()))
    dev = parse_device(device if device is not None else first.device)
    ledger = Ledger(reader.io)
    t0 = time.perf_counter()
    with ledger.locked(lock_timeout):
        entries = ledger.entries()
        target = Ledger.forget_entry(entries, request_id, where=ledger.dir)
        if Ledger.restored(entries, request_id):
            raise LedgerError(f"restore: request {request_id!r} was already restored")
        before = model_fingerprint(named)
        _check_fingerprint(before, Ledger.expected_fingerprint(entries, reader.model_fingerprint), force, str(reader.root))
        plan = PruningPlan.from_json(target.plan) if target.plan else None
        result = reader.sum_updates(target.steps, device=dev, plan=plan, progress=progress)
        new = _updated(named, _weights_only(result.updates, reader, target.buffers), +1.0)  # as the forget did
        receipt = Receipt(
            request_id=new_request_id(),
            kind="restore",
            sample_count=target.sample_count,
            steps=list(target.steps),
            bytes_read=result.bytes_read,
            seconds=time.perf_counter() - t0,
            read_seconds=result.seconds,
            fingerprint_before=before,
            fingerprint_after=model_fingerprint({**named, **new}),
            plan=target.plan,
            device=str(dev),
            restores=request_id,
            forced=bool(force),
            created=time.time(),
            buffers=target.buffers,
        )
        _commit(named, new, receipt, ledger, before_commit)
    return receipt


def audit(store: str | os.PathLike) -> list[Receipt]:
    """Every ledger entry of a store, in order."""
    return Ledger(store).entries()
