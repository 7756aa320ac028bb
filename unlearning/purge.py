"""purge: make a forget request final -- erase its stored updates and ids from the store.

A forget subtracts stored updates from the model but leaves them in the store (that is
what makes ``restore`` possible). A purge removes them for good (FORMAT.md §5.2, §7.2):

* the store's base is replaced: B' = round(float32(B) − Σ_{s ∈ E} u_s) over the steps E
  the request subtracted that no earlier purge erased, for parameters *and* buffers
  (BatchNorm statistics carry the batch's data, whatever the request's ``buffers``
  choice). Keeping the old base would leak the purged sum (B − x = Σ u_s). From then on
  every model is x(L) = round(float32(B') − Σ over the live requests' steps minus every
  erased step), still a function of the live set;
* every row (values, scales, indices) of the steps in E is overwritten with the fill
  value; steps in E shared with another live request Q stay subtracted for good: Q's
  later restore gives back only its other steps;
* the index parts holding the request's ids are rewritten without them, its ids file
  and every checkpoint taken after the first erased step are deleted;
* the ledger gets a tombstone (kind ``"purge"``: request, time, step count, digests,
  no ids), and ``restore`` of the request is refused naming it.

Crash safety: the new base and index parts are written unreferenced, then one commit
record names them with a ``pending`` purge record (the commit point); the rest is
idempotent roll-forward that any later purge, forget or restore finishes first.
The writer lock (no recording meanwhile) and the ledger lock are held throughout.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch

from deltastore.devices import parse_device
from deltastore.erase import BeforeRewrite, commit_erase, finish_erase, mark_erase_done, writer_lease
from deltastore.errors import CorruptStoreError, InvalidArgumentError, LedgerError
from deltastore.format import model_fingerprint, read_commit
from deltastore.format.commit import erased_steps
from deltastore.format.trained import has_trained
from deltastore.read import StoreReader

from .ledger import IDS_DIR, Ledger, Receipt, entry_key, ids_key, new_request_id, parse_request_id

_CHECKPOINT = re.compile(r"^step-(\d{8})\.(safetensors|sha256)$")


@dataclass
class PurgeResult:
    """What a purge did: its tombstone, the new state of the recorded tensors, what changed."""

    receipt: Receipt  # the tombstone (ledger entry of kind "purge")
    state: dict  # every recorded tensor of the model of the live requests, derived from the new base
    max_change: float  # largest |new − old| over the recorded parameters (float rounding)
    max_buffer_change: float  # the same over recorded buffers (their erased changes are folded in, whatever the request kept)
    bytes_rewritten: int  # shard bytes written to erase the rows (0 when only roll-forward ran elsewhere)


def _sum(reader: StoreReader, steps: list[int], plan_json, dev) -> dict | None:
    from deltastore.plan import PruningPlan

    if not steps:
        return None
    plan = PruningPlan.from_json(plan_json) if plan_json else None
    return reader.sum_updates(steps, device=dev, plan=plan).updates


def _checkpoints_after(io, first: int) -> list[str]:
    """Checkpoint keys taken after step ``first`` ran (they hold its influence): digest first."""
    out = []
    for name in io.list_dir("checkpoints"):
        m = _CHECKPOINT.match(name)
        if m and int(m.group(1)) > first:
            out.append(f"checkpoints/{name}")
    return sorted(out, key=lambda k: (k.rsplit(".", 1)[0], not k.endswith(".sha256")))


def _others_with_ids(entries: list[Receipt], request_id: str) -> list[Receipt]:
    """The other forget requests whose ids files a purge of ``request_id`` may have to redact."""
    return [e for e in entries if e.kind == "forget" and e.request_id != request_id and e.ids_file
            and not Ledger.tombstone(entries, e.request_id)]


def _redact_other_ids(ledger: Ledger, entries: list[Receipt], request_id: str, tomb: Receipt) -> dict:
    """Rewrite, without the purged ids, every other unpurged forget request's ids file that holds any.
    (purge checked every such file before its commit point; one damaged since is left and reported.)"""
    wanted = set(ledger.read_ids(Ledger.forget_entry(entries, request_id), entries))
    out = {}
    for e in _others_with_ids(entries, request_id):
        try:
            ids = ledger.read_ids(e, entries)
        except CorruptStoreError as exc:
            tomb.unredacted.append(f"{e.ids_file}: not redacted, unreadable ({exc})")
            continue
        if wanted.intersection(ids):
            out[e.request_id] = ledger.write_redacted_ids(e.request_id, [i for i in ids if i not in wanted], tomb.request_id)
    return out


def _superseded_ids(io, redacted: dict) -> list[str]:
    """The ids files of the redacted requests other than their new copies (the original, earlier copies)."""
    keep = {r["key"] for r in redacted.values()}
    out = []
    for request_id in redacted:
        for name in io.list_dir(IDS_DIR):
            key = f"{IDS_DIR}/{name}"
            if key not in keep and (key == ids_key(request_id) or name.startswith(f"{request_id}.redacted-")):
                out.append(key)
    return out


def _roll_forward(io, ledger: Ledger, before_rewrite: BeforeRewrite | None = None) -> tuple[Receipt | None, int]:
    """Finish a purge past its commit point (locks held): rows, old files, tombstone, done."""
    record = finish_erase(io, before_rewrite=before_rewrite, fsync=True)
    if record is None:
        return None, 0
    entries = ledger.entries()
    tomb = Ledger.tombstone(entries, record["request"])
    if tomb is None:
        commit = read_commit(io)
        tomb = Receipt.from_json(record["tombstone"])
        # Other requests' ids files holding purged ids: copies without them, under new keys
        # (the files they replace stay valid until this tombstone names the copies).
        tomb.redacted = _redact_other_ids(ledger, entries, record["request"], tomb)
        tomb.trained_key = commit["trained"]["key"]
        tomb.trained_sha256 = commit["trained"]["sha256"]
        tomb.created = time.time()
        ledger.append(tomb)  # create-if-absent, fsynced
    # After the tombstone: the request's ids file, later checkpoints, and the files the redacted copies replace.
    for key in record.get("delete", []) + _superseded_ids(io, tomb.redacted):
        io.delete(key)
    mark_erase_done(io, record["purge"], fsync=True)
    return tomb, record.get("bytes_rewritten", 0)


def finish_pending(store, *, lock_timeout: float = 60.0) -> Receipt | None:
    """Finish a purge interrupted after its commit point (what forget and restore call first).
    Returns its tombstone, or None when nothing was pending."""
    reader = store if isinstance(store, StoreReader) else StoreReader(store)
    ledger = Ledger(reader.io)
    with writer_lease(reader.io, "purge roll-forward"), ledger.locked(lock_timeout):
        return _roll_forward(reader.io, ledger)[0]


def _unredacted(entries: list[Receipt], target: Receipt, ids: list) -> list[str]:
    """What the purge cannot redact: inline ids of older entries (other requests' ids files are
    rewritten without the purged ids, :func:`_redact_other_ids`)."""
    out = []
    if target.unknown_ids:
        out.append(f"{entry_key(target.sequence, target.request_id)}: {len(target.unknown_ids)} unknown ids inline "
                   "(written before entries kept only a count; entries are hash-chained and never rewritten)")
    wanted = set(ids)
    for e in entries:
        if e.kind != "forget" or e.request_id == target.request_id:
            continue
        if e.unknown_ids and wanted & set(e.unknown_ids):
            out.append(f"{entry_key(e.sequence, e.request_id)}: holds purged ids inline")
    return out


def purge(
    store,
    request_id: str,
    model=None,
    *,
    device=None,
    force: str | None = None,
    purge_id: str | None = None,
    progress: bool = False,
    lock_timeout: float = 60.0,
    before_commit=None,
    before_rewrite: BeforeRewrite | None = None,
    buffers: str | None = None,
) -> PurgeResult:
    """Make the forget request ``request_id`` final: erase its updates and ids from the store.

    Parameters
    ----------
    store : path, ``s3://`` URL or an open :class:`StoreReader`. Needs trained weights
        (a store closed by a current recorder) and index digests.
    model : optional nn.Module or state dict, the model the store expects now (checked by
        fingerprint as :func:`forget` does, unless ``force``); the new state is loaded
        into it. The state changes by float rounding (derived from the new base) and by
        the request's buffer changes if it kept buffers.
    purge_id : the tombstone's request id (default: time and a random suffix).
    before_commit : called with the new state before the commit point; if it raises,
        nothing changes (the CLI writes ``--out`` here).
    before_rewrite : called with (io, pending record) after the commit point and before
        any shard is rewritten (crypto-shredding plugs in here).
    buffers : None (default) does what the request's forget did: a request forgotten with
        ``buffers="subtract"`` has its buffer changes folded into the new base, one forgotten
        with ``"keep"`` (forget's default) leaves the base's buffers as they are, so the model
        changes only by float rounding. "fold" folds the erased steps' changes to recorded
        buffers (BatchNorm running statistics, which carry the batches' data) into the new
        base whatever the request chose; "keep" never does. The stored rows are erased
        either way; kept running statistics keep a decayed trace of the purged batches.
        Folding moves the statistics towards their initial values, by as much as the erased
        steps changed them (ResNet-18, a class over 12 of 16 steps: up to 2.4; RESULTS.md "purge").

    Returns a :class:`PurgeResult`; raises LedgerError for a request that is unknown,
    restored or already purged (naming its tombstone).
    """
    from .forget import _Context, _force_reason, _minus, _named_tensors, _step_sets

    reason = _force_reason(force)
    if buffers not in (None, "fold", "keep"):
        raise InvalidArgumentError(f"buffers: expected 'fold', 'keep' or None (as the request), got {buffers!r}")
    reader = store if isinstance(store, StoreReader) else StoreReader(store)
    io = reader.io
    request_id = parse_request_id(request_id)
    purge_id = parse_request_id(purge_id) if purge_id is not None else new_request_id()
    ledger = Ledger(io)
    t0 = time.perf_counter()
    with writer_lease(io) as lease, ledger.locked(lock_timeout):
        finished, rewritten = _roll_forward(io, ledger)  # an earlier purge interrupted after its commit point
        reader = StoreReader(io)  # fresh: the commit record may have changed
        if finished is not None and finished.purges == request_id:  # this very request: finishing it is the job
            return _finished(reader, ledger, finished, model, rewritten, device)
        if not has_trained(reader.commit) or not isinstance(reader.commit.get("index_digests"), dict):
            raise InvalidArgumentError(f"{reader.root}: purge needs the trained weights kept in the store (closed by a current "
                                       "recorder); this store has none, so the purged updates cannot be folded into a new base")
        named = _named_tensors(model, reader) if model is not None else None
        dev = parse_device(device if device is not None else (next(iter(named.values())).device if named else "cpu"))
        ctx = _Context(reader, ledger, named or {}, dev, progress)
        target = Ledger.forget_entry(ctx.entries, request_id, where=ledger.dir)
        tomb = Ledger.tombstone(ctx.entries, request_id)
        if tomb is not None:
            raise LedgerError(f"purge: request {request_id!r} was already purged "
                              f"(tombstone: ledger entry {tomb.sequence}, {tomb.request_id!r})")
        if Ledger.restored(ctx.entries, request_id):
            raise LedgerError(f"purge: request {request_id!r} was restored; its updates are in the model again. "
                              "Forget its samples again, then purge that request")
        Ledger.require_new_id(ctx.entries, purge_id)
        if target.ids_file is None:
            raise LedgerError(f"purge: request {request_id!r} keeps no ids (written before deltastore kept them); "
                              "its index rows cannot be found to erase")
        ids = ledger.read_ids(target, ctx.entries)
        for e in _others_with_ids(ctx.entries, request_id):  # a damaged ids file could not be redacted after the commit point
            ledger.read_ids(e, ctx.entries)
        if buffers is None:  # as the request's forget: its buffer changes are in the model iff it subtracted them
            buffers = "fold" if target.buffers == "subtract" else "keep"
        expected = Ledger.expected_fingerprint(ctx.entries, reader.model_fingerprint)
        if named is not None:
            before = ctx.check_model(reason)
            old = {n: t.detach() for n, t in named.items()}
        else:
            before = expected
            old = None
        erased_before = erased_steps(reader.commit)
        new_steps = sorted(set(target.all_steps) - erased_before)
        base_old = ctx.trained
        folded = _sum(reader, new_steps, target.plan, dev)  # parameters and buffers alike
        kinds = {t.name: t.kind for t in reader.manifest.tensors}
        fold = {n for n in base_old if folded is not None and (buffers == "fold" or kinds[n] != "buffer")}
        base = {n: _minus(t.to(dev), folded[n] if n in fold else None).cpu() for n, t in base_old.items()}
        live_after = [r for r in ctx.live if r.request_id != request_id]
        wsteps, bsteps = _step_sets(live_after, erased_before | set(new_steps))
        plan_json = live_after[0].plan if live_after else None
        w = _sum(reader, wsteps, plan_json, dev)
        b = w if bsteps == wsteps else _sum(reader, bsteps, plan_json, dev)
        state = {}
        for n, t in base.items():
            src = b if kinds[n] == "buffer" else w
            state[n] = _minus(t.to(dev), None if src is None else src[n])
        if old is None:
            from .forget import _derive

            old = _derive(reader, base_old, ctx.live, dev, False)[0]
        gap = {n: float((state[n].double() - old[n].to(dev).double()).abs().max()) for n in state if state[n].numel()}
        max_change = max((v for n, v in gap.items() if kinds[n] != "buffer"), default=0.0)
        max_buffer_change = max((v for n, v in gap.items() if kinds[n] == "buffer"), default=0.0)
        fp_after = model_fingerprint(state)
        if before_commit is not None:
            before_commit({**(named or {}), **state})
        copy = Ledger.redaction(ctx.entries, request_id)  # an earlier purge may have redacted this request's ids file
        delete = [copy["key"] if copy else ids_key(request_id)] + (_checkpoints_after(io, new_steps[0]) if new_steps else [])
        tomb = Receipt(request_id=purge_id, kind="purge", purges=request_id, sample_count=target.sample_count,
                       erased_steps=new_steps, ids_sha256=target.ids_sha256, fingerprint_before=before, fingerprint_after=fp_after,
                       plan=target.plan, buffers="subtract" if buffers == "fold" else "keep", device=str(dev),
                       forced=reason is not None, force_reason=reason, derived_from="trained",
                       deleted=delete, unredacted=_unredacted(ctx.entries, target, ids),
                       seconds=time.perf_counter() - t0)
        lease.check()  # object storage: still ours (renewed in time), so no other writer can be in between
        commit_erase(io, request=request_id, purge=purge_id, steps=new_steps, sample_ids=ids, base=base,
                     fingerprint=model_fingerprint(base), extra={"tombstone": tomb.to_json(), "delete": delete}, fsync=True)
        tomb, rewritten = _roll_forward(io, ledger, before_rewrite)
    if named is not None:
        with torch.no_grad():
            for n, t in state.items():
                named[n].copy_(t)
    return PurgeResult(receipt=tomb, state=state, max_change=max_change, max_buffer_change=max_buffer_change,
                       bytes_rewritten=rewritten)


def _finished(reader: StoreReader, ledger: Ledger, tomb: Receipt, model, rewritten: int, device) -> PurgeResult:
    """The result of finishing a pending purge: the state now; a model given must be the
    state before the purge (it gets the new one) or already the new one."""
    from deltastore.errors import FingerprintMismatchError

    from .forget import _Context, _derive, _named_tensors

    named = _named_tensors(model, reader) if model is not None else None
    dev = parse_device(device if device is not None else "cpu")
    ctx = _Context(reader, ledger, named or {}, dev, False)
    state = _derive(ctx.reader, ctx.trained, ctx.live, dev, False)[0]
    if named is not None:
        fp = model_fingerprint(named)
        if fp not in (tomb.fingerprint_before, tomb.fingerprint_after):
            raise FingerprintMismatchError(f"{reader.root}: the model is neither the state before the purge {tomb.request_id!r} "
                                           "nor after it; the purge was finished, load the state it returns")
        with torch.no_grad():
            for n, t in state.items():
                named[n].copy_(t)
    return PurgeResult(receipt=tomb, state=state, max_change=float("nan"), max_buffer_change=float("nan"), bytes_rewritten=rewritten)
