"""forget / restore: turn a deletion request into a new model, with a receipt and a ledger entry.

The model is a function of the set of *live* requests (forgets not restored):

    W(live) = W_trained − Σ_{s ∈ steps(live)} u_s

``W_trained`` is the trained weights the recorder keeps in the store at close
(FORMAT.md §5.1); ``u_s`` the stored (pruned) update of step s (paper eq. 7; eq. 4
when the store is dense); the sum runs over the sorted set of steps in a fixed order
(``StoreReader.sum_updates``: each element gets its additions in step order, whatever
the threads), and parameters in bf16/fp16 are computed in float32 and rounded once.
So the result does not depend on the order requests were made or undone, bit for
bit; undoing every request gives the trained model exactly, and a step shared by two
requests is subtracted once. Stores closed before trained weights were kept fall
back to the incremental rule (w − u, then + u on restore; float rounding
accumulates, the receipt says ``derived_from="model"``).

A purge (:func:`purge`, :mod:`unlearning.purge`) makes a request final: its steps are
folded into a new base that replaces ``W_trained`` and are left out of every later sum
(FORMAT.md §5.2).

Everything that can fail (unknown ids, a corrupted chunk, a model that does not
match) fails *before* the model is touched.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import time
from typing import Mapping

import torch

from deltastore.devices import parse_device
from deltastore.errors import (
    EmptyStoreError,
    FingerprintMismatchError,
    InvalidArgumentError,
    LedgerError,
    ModelMismatchError,
    UnknownSampleIdsError,
)
from deltastore.format import model_fingerprint
from deltastore.format import read_commit
from deltastore.format.commit import erased_steps, pending_erase
from deltastore.format.trained import has_trained, read_trained
from deltastore.index import parse_sample_ids
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader

from .ledger import Ledger, Receipt, new_request_id, parse_request_id
from .methods.api import MethodOptions, apply_method, parse_method

# How messages name the options a caller can pass: Python keywords by default, the
# CLI's flags while the CLI runs a command (``option_names``).
_OPTION_NAMES: contextvars.ContextVar[dict] = contextvars.ContextVar("deltastore_option_names", default={})
_PY_NAMES = {"allow_unknown": "allow_unknown=True", "force": 'force="<reason>"', "sample_ids": "sample_ids"}


@contextlib.contextmanager
def option_names(**names: str):
    """Within the block, errors name options as given (e.g. ``force="--force REASON"``)."""
    token = _OPTION_NAMES.set({**_OPTION_NAMES.get(), **names})
    try:
        yield
    finally:
        _OPTION_NAMES.reset(token)


def _opt(name: str) -> str:
    return _OPTION_NAMES.get().get(name, _PY_NAMES[name])


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


def _finish_pending(reader: StoreReader, lock_timeout: float) -> StoreReader:
    """A purge interrupted after its commit point is finished before any other request (FORMAT.md §5.2)."""
    if pending_erase(reader.commit) is None:
        return reader
    from .purge import finish_pending

    finish_pending(reader.io, lock_timeout=lock_timeout)
    return StoreReader(reader.io)


def _force_reason(force) -> str | None:
    """None (no force) or the reason recorded in the ledger; a bare True is refused."""
    if force is None or force is False:
        return None
    if isinstance(force, str) and force.strip():
        return force.strip()
    raise InvalidArgumentError(f"{_opt('force').split('=')[0].split(' ')[0]}: expected a reason for skipping the fingerprint check "
                               f"(a non-empty text recorded in the ledger), got {force!r}")


# ---- why a model is not the one the store expects -------------------------------------------
def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def explain_mismatch(named: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor] | None, manifest, limit: int = 6) -> list[str]:
    """One line per recorded tensor that differs from ``expected``: dtype, shape or values.

    Without ``expected`` (a store that keeps no trained weights) only dtypes can be
    compared, against the manifest. Buffers (BatchNorm running statistics) get a hint:
    a forward pass in train mode changes them.
    """
    lines = []
    for spec in manifest.tensors:
        t = named[spec.name].detach()
        want_dtype = _dtype_name(expected[spec.name]) if expected is not None else spec.dtype
        if _dtype_name(t) != want_dtype:
            lines.append(f"{spec.name}: dtype {_dtype_name(t)}, expected {want_dtype}")
            continue
        if expected is None:
            continue
        e = expected[spec.name].detach().to(t.device)
        if tuple(t.shape) != tuple(e.shape):
            lines.append(f"{spec.name}: shape {list(t.shape)}, expected {list(e.shape)}")
            continue
        if model_fingerprint({"t": t}) == model_fingerprint({"t": e}):
            continue
        differ = int((t != e).sum())
        if differ:
            gap = float((t.float() - e.float()).abs().max())
            line = f"{spec.name}: {differ:,} of {t.numel():,} values differ (max |diff| {gap:.3g})"
        else:
            line = f"{spec.name}: equal values with other bits (signed zeros or NaN payloads)"
        if spec.kind == "buffer":
            line += (" -- a buffer: BatchNorm running statistics change in every forward pass in train mode; "
                     "call model.eval() before evaluating, or load the saved weights")
        lines.append(line)
    if len(lines) > limit:
        lines = lines[:limit] + [f"... {len(lines) - limit} more tensors differ"]
    return lines


def _check_fingerprint(current: str, expected_fp: str | None, force: str | None, reader: StoreReader, named, expected_state,
                       known: Mapping[str, str] = {}) -> None:
    """FingerprintMismatchError naming the tensors that differ, unless forced.

    ``expected_state``: a callable giving the expected tensors (None for a store without
    trained weights); called only when the fingerprints differ.
    """
    if expected_fp is None or current == expected_fp or force is not None:
        return
    expected = expected_state() if expected_state is not None else None
    lines = explain_mismatch(named, expected, reader.manifest)
    if current == reader.model_fingerprint:
        lines.insert(0, "the model given is the trained model, but live requests are in force (the store expects the last request's result)")
    elif current in known:
        said = known[current]
        lines.insert(0, said if said.startswith("the model given") else f"the model given is the result of {said}, not of the last request")
    if not lines and expected is None:
        lines = ["this store keeps no trained weights (closed before deltastore kept them), so the tensors that differ cannot be named"]
    raise FingerprintMismatchError(
        f"{reader.root}: the model is not in the state the store expects (expected fingerprint {expected_fp[:23]}..., "
        f"got {current[:23]}...): " + "; ".join(lines) + ". Load the model the store's last request produced "
        f"(`deltastore audit` lists them; with every request restored it is the trained model), or pass {_opt('force')}"
    )


# ---- summing -----------------------------------------------------------------------------------
BUFFER_MODES = ("keep", "subtract")


def _parse_buffers(buffers: str) -> str:
    if buffers not in BUFFER_MODES:
        raise InvalidArgumentError(f"buffers: expected one of {BUFFER_MODES}, got {buffers!r}")
    return buffers


def _plan_key(plan_json) -> str:
    return json.dumps(plan_json, sort_keys=True)


def _check_same_plan(live: list[Receipt], plan_json, what: str) -> None:
    """Live requests must share one unlearn-time plan: a step they share is then subtracted one way."""
    for r in live:
        if _plan_key(r.plan) != _plan_key(plan_json):
            raise InvalidArgumentError(
                f"plan: {what} uses {'the store' if plan_json is None else 'an unlearn-time'} plan, the live request "
                f"{r.request_id!r} used {'the store' if r.plan is None else 'an unlearn-time'} plan {r.plan!r}; "
                "live requests must share one plan (restore it first, or repeat its plan)"
            )


def _step_sets(requests: list[Receipt], erased: set[int] = frozenset()) -> tuple[list[int], list[int]]:
    """(steps to subtract from parameters, from buffers) for a set of forget requests.

    Steps a purge erased are left out: they are folded into the store's base (FORMAT.md §5.2)."""
    weights: set[int] = set()
    buffers: set[int] = set()
    for r in requests:
        weights.update(r.all_steps)
        if r.buffers == "subtract":
            buffers.update(r.all_steps)
    return sorted(weights - erased), sorted(buffers - erased)


class _Sums:
    """Σ u_s per recorded tensor over two step sets (parameters, buffers), with what it cost."""

    def __init__(self, reader: StoreReader, wsteps: list[int], bsteps: list[int], plan_json, dev, progress: bool):
        plan = PruningPlan.from_json(plan_json) if plan_json else None
        self.bytes_read = 0
        self.seconds = 0.0
        w = self._sum(reader, wsteps, plan, dev, progress)
        b = w if bsteps == wsteps else self._sum(reader, bsteps, plan, dev, progress)
        self.updates: dict[str, torch.Tensor | None] = {}
        for t in reader.manifest.tensors:
            src = b if t.kind == "buffer" else w
            self.updates[t.name] = None if src is None else src[t.name]

    def _sum(self, reader, steps, plan, dev, progress):
        if not steps:
            return None
        result = reader.sum_updates(steps, device=dev, plan=plan, progress=progress)  # may raise: model untouched
        self.bytes_read += result.bytes_read
        self.seconds += result.seconds
        return result.updates


def _minus(w: torch.Tensor, u: torch.Tensor | None, sign: float = -1.0) -> torch.Tensor:
    """w ± u, rounded once into w's dtype (computed to the side: w is not changed)."""
    if u is None:
        return w.clone()
    u = u.to(w.device, non_blocking=True)
    with torch.no_grad():
        if w.dtype in (torch.float32, torch.float64):
            return torch.add(w, u.to(w.dtype), alpha=sign)
        return (w.float() + sign * u).to(w.dtype)  # bf16/fp16 parameters: float32 arithmetic, one rounding


def _derive(reader: StoreReader, trained: dict[str, torch.Tensor], live: list[Receipt], dev, progress: bool) -> tuple[dict, _Sums]:
    """W(live) = W_trained − Σ_{s ∈ steps(live) − erased} u_s for every recorded tensor, on ``dev``
    (``W_trained``: the store's base, the trained weights or, after a purge, their replacement)."""
    wsteps, bsteps = _step_sets(live, erased_steps(reader.commit))
    sums = _Sums(reader, wsteps, bsteps, live[0].plan if live else None, dev, progress)
    return {name: _minus(trained[name].to(dev), sums.updates[name]) for name in trained}, sums


def _commit(named: dict[str, torch.Tensor], new: dict[str, torch.Tensor], receipt: Receipt, ledger: Ledger, before_commit,
            ids=None) -> None:
    """All or nothing: ``before_commit`` (e.g. the CLI's atomic --out), the request's ids file
    and the durable ledger entry first; the model changes in place only once all succeeded.
    (An ids file whose entry never made it names no request: readers go from entries to files.)"""
    if before_commit is not None:
        before_commit({**named, **new})
    if ids is not None:
        receipt.ids_file, receipt.ids_sha256 = ledger.write_ids(receipt.request_id, ids)
    ledger.append(receipt)
    with torch.no_grad():
        for name, t in new.items():
            named[name].copy_(t)


def _check_tombstones(reader: StoreReader, ledger: Ledger, entries: list[Receipt]) -> None:
    """Every finished purge the commit record lists has its tombstone: a missing one would make
    the purged request look live (its steps are folded into the base, FORMAT.md §5.2)."""
    from deltastore.errors import CorruptStoreError
    from deltastore.format.commit import erased_records

    from .ledger import LEDGER_DIR

    for rec in erased_records(reader.commit, reader.io.where("commit.json")):
        if rec["state"] != "done":
            continue
        tomb = Ledger.tombstone(entries, rec["request"])
        if tomb is None or tomb.request_id != rec["purge"]:
            raise CorruptStoreError(f"{reader.io.where(LEDGER_DIR)}/NNNNNNNN-{rec['purge']}.json: expected the tombstone of purge "
                                    f"{rec['purge']!r} (request {rec['request']!r}, named by commit.json), the ledger has none "
                                    "(deleted or replaced)")


class _Context:
    """What forget and restore both read under the ledger lock."""

    def __init__(self, reader: StoreReader, ledger: Ledger, named, dev, progress: bool):
        if read_commit(reader.io) != reader.commit:  # a purge (or close) committed since the reader opened
            reader = StoreReader(reader.io)
        self.reader, self.ledger, self.named, self.dev, self.progress = reader, ledger, named, dev, progress
        self.erased = erased_steps(reader.commit)
        self.entries = ledger.entries()
        _check_tombstones(reader, ledger, self.entries)
        self.live = Ledger.live_forgets(self.entries)
        self.exact = has_trained(reader.commit)
        self._trained = None

    @property
    def trained(self) -> dict[str, torch.Tensor]:
        if self._trained is None:
            self._trained = read_trained(self.reader.io, self.reader.commit, self.reader.manifest)
        return self._trained

    def check_model(self, force: str | None) -> str:
        """The model's fingerprint, after checking it is the state the ledger says (unless forced)."""
        before = model_fingerprint(self.named)
        expected = Ledger.expected_fingerprint(self.entries, self.reader.model_fingerprint)
        state = (lambda: _derive(self.reader, self.trained, self.live, self.dev, False)[0]) if self.exact else None
        known = {e.fingerprint_after: f"ledger entry {e.sequence} ({e.kind} {e.request_id})" for e in self.entries if e.fingerprint_after}
        last = self.entries[-1] if self.entries else None
        if last is not None and last.kind == "purge" and last.fingerprint_before:
            known[last.fingerprint_before] = (
                f"the model given is the state before purge {last.request_id} (ledger entry {last.sequence}), which derived the "
                "model from a new base (float rounding; buffers folded in): use the state the purge returned, or pass "
                f"{_opt('force')} (the result is derived from the base either way)")
        _check_fingerprint(before, expected, force, self.reader, self.named, state, known)
        return before

    def result(self, live_after: list[Receipt], incremental: tuple[list[int], list[int], float, object]) -> tuple[dict, _Sums]:
        """The new recorded tensors: derived from the trained weights, or (old stores) the
        model plus ``sign`` × the sums over the incremental step sets."""
        if self.exact:
            return _derive(self.reader, self.trained, live_after, self.dev, self.progress)
        wsteps, bsteps, sign, plan_json = incremental
        sums = _Sums(self.reader, wsteps, bsteps, plan_json, self.dev, self.progress)
        return {name: _minus(t, sums.updates[name], sign) for name, t in self.named.items() if sums.updates[name] is not None}, sums


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
    force: str | None = None,
    progress: bool = False,
    lock_timeout: float = 60.0,
    before_commit=None,
    method: str = "amnesiac",
    method_options: MethodOptions | None = None,
) -> Receipt:
    """Forget ``sample_ids``: subtract the stored updates of every step that saw them.

    Parameters
    ----------
    model : nn.Module or state dict (modified in place). It must be the model the
        store expects now (the trained model, or the last request's result): its
        fingerprint is checked, and a mismatch names the tensors that differ.
    store : path or an open :class:`StoreReader`.
    sample_ids : ids of the store's declared type (int64 or string).
    device : where updates are accumulated; default the model's device.
    plan : unlearn-time pruning plan (dense stores only): one dense recording
        serves a sweep of rates/modes, equal to recording with that plan. Live
        requests must share one plan.
    allow_unknown : if False (default), ids the index never saw raise
        UnknownSampleIdsError; if True they are listed in the receipt.
    force : a reason (text, recorded in the ledger) to skip the fingerprint check;
        the model must still match names/shapes. On a store with trained weights the
        result is derived from them anyway; on an older store it is computed from
        the given model, which then becomes the store's reference.
    before_commit : called with the new weights (every recorded tensor, by name)
        after everything that can fail has been checked and computed, before the
        ledger entry is written; if it raises, neither the ledger nor the model
        changes. The model is changed in place only after the entry is durable.
    buffers : "keep" (default) leaves recorded buffers -- BatchNorm running
        statistics -- at their trained values; "subtract" subtracts their recorded
        changes like weights (exactly undoes those steps' buffer changes, the algebra
        of the dense-sum invariant). Running statistics are moving averages: a step's
        recorded change is not what that step still contributes, and subtracting
        them wrecks the model (ResNet-9 on digits, one sample in 2 steps: test
        accuracy 0.951 -> 0.613 with "subtract", 0.949 with "keep").
    method : "amnesiac" (default; subtraction only) or "amnesiac+repair" (then
        ``method_options.repair_steps`` Adam steps on ``method_options.retained``;
        needs retained data, an nn.Module and a store with trained weights).
        Recorded in the ledger entry with its parameters; see
        :mod:`unlearning.methods.api` and benchmarks/EFFICACY.md.
    """
    buffers = _parse_buffers(buffers)
    options = method_options if method_options is not None else MethodOptions()
    method = parse_method(method, options, model)
    reason = _force_reason(force)
    reader = _finish_pending(_open(store), lock_timeout)
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
            f"{_opt('sample_ids')}: {len(unknown)} of {len(ids)} ids were never recorded in {reader.root} (e.g. {shown}); "
            f"pass {_opt('allow_unknown')} to forget the rest and list them in the receipt",
            ids=unknown,
        )
    plan_json = plan.to_json() if plan is not None else None
    ledger = Ledger(reader.io)
    t0 = time.perf_counter()
    with ledger.locked(lock_timeout):
        ctx = _Context(reader, ledger, named, dev, progress)
        Ledger.require_new_id(ctx.entries, request_id)
        _check_same_plan(ctx.live, plan_json, f"request {request_id!r}")
        before = ctx.check_model(reason)
        steps = sorted(int(s) for s in steps)
        if method != "amnesiac" and not ctx.exact:  # a restore would add the steps back onto the repaired model
            raise InvalidArgumentError(f"method={method!r}: expected a store with trained weights (closed by a current recorder), {reader.root} has none")
        live_w, live_b = (set(s) | ctx.erased for s in _step_sets(ctx.live))  # erased steps stay subtracted
        todo = [s for s in steps if s not in live_w]
        skipped = [s for s in steps if s in live_w]
        # Unknown ids are kept only in the ids file (which a purge deletes), counted here.
        receipt = Receipt(request_id=request_id, kind="forget", sample_count=len(ids), unknown_count=len(unknown),
                          steps=todo, steps_already_subtracted=skipped, plan=plan_json, buffers=buffers)
        new_b = [s for s in steps if s not in live_b] if buffers == "subtract" else []
        new, sums = ctx.result(ctx.live + [receipt], (todo, new_b, -1.0, plan_json))
        new, receipt.method_params = apply_method(method, options, model, named, new)
        receipt.method = method
        _fill(receipt, ctx, sums, before, {**named, **new}, reason, dev, t0)
        _commit(named, new, receipt, ledger, before_commit, ids=ids)
    receipt.unknown_ids = [str(u) if isinstance(u, str) else int(u) for u in unknown]  # for the caller only, not in the ledger
    return receipt


def _fill(receipt: Receipt, ctx: _Context, sums: _Sums, before: str, after_state, reason, dev, t0: float) -> None:
    receipt.bytes_read = sums.bytes_read
    receipt.read_seconds = sums.seconds
    receipt.fingerprint_before = before
    receipt.fingerprint_after = model_fingerprint(after_state)
    receipt.device = str(dev)
    receipt.forced = reason is not None
    receipt.force_reason = reason
    receipt.derived_from = "trained" if ctx.exact else "model"
    receipt.created = time.time()
    receipt.seconds = time.perf_counter() - t0


def restore(
    model,
    store,
    request_id: str,
    *,
    device=None,
    force: str | None = None,
    progress: bool = False,
    lock_timeout: float = 60.0,
    before_commit=None,
) -> Receipt:
    """Undo a forget request: the model of the live requests without it.

    On a store with trained weights the result is W_trained − Σ over the remaining live
    requests' steps, bit for bit what it would be had the request never been made.
    All or nothing, as :func:`forget` (``force`` and ``before_commit`` likewise).
    """
    reason = _force_reason(force)
    reader = _finish_pending(_open(store), lock_timeout)
    named = _named_tensors(model, reader)
    first = next(iter(named.values()))
    dev = parse_device(device if device is not None else first.device)
    ledger = Ledger(reader.io)
    t0 = time.perf_counter()
    with ledger.locked(lock_timeout):
        ctx = _Context(reader, ledger, named, dev, progress)
        target = Ledger.forget_entry(ctx.entries, request_id, where=ledger.dir)
        tomb = Ledger.tombstone(ctx.entries, request_id)
        if tomb is not None:
            raise LedgerError(f"restore: request {request_id!r} was purged for good (tombstone: ledger entry {tomb.sequence}, "
                              f"purge {tomb.request_id!r}); its stored updates and ids are erased, it cannot be restored")
        if Ledger.restored(ctx.entries, request_id):
            raise LedgerError(f"restore: request {request_id!r} was already restored")
        before = ctx.check_model(reason)
        live_after = [r for r in ctx.live if r.request_id != request_id]
        # Steps a purge erased stay subtracted: a request sharing them gets back only the rest.
        (w0, b0), (w1, b1) = _step_sets(ctx.live, ctx.erased), _step_sets(live_after, ctx.erased)
        back_w = sorted(set(w0) - set(w1))
        back_b = sorted(set(b0) - set(b1))
        new, sums = ctx.result(live_after, (back_w, back_b, +1.0, target.plan))
        receipt = Receipt(request_id=new_request_id(), kind="restore", sample_count=target.sample_count, steps=back_w,
                          plan=target.plan, restores=request_id, buffers=target.buffers)
        _fill(receipt, ctx, sums, before, {**named, **new}, reason, dev, t0)
        _commit(named, new, receipt, ledger, before_commit)
    return receipt


def audit(store: str | os.PathLike) -> list[Receipt]:
    """Every ledger entry of a store, in order."""
    return Ledger(store).entries()


def live_requests(store) -> list[Receipt]:
    """The forget requests in force now (made and not restored), in ledger order."""
    return Ledger.live_forgets(audit(store) if not isinstance(store, StoreReader) else Ledger(store.io).entries())


def purge(store, request_id: str, model=None, **kwargs):
    """Make a forget request final: :func:`unlearning.purge.purge` (erases its updates and ids from the store)."""
    from .purge import purge as _purge

    return _purge(store, request_id, model, **kwargs)
