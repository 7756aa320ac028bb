"""`deltastore demo | forget | restore`: registered through the deltastore.commands entry points.

Files in and out (ids, weights, receipts) are :mod:`unlearning.cli_files`; ``audit``
and ``lookup`` are :mod:`unlearning.cli_audit`. ``forget`` and ``restore`` are all or
nothing: the new weights reach ``--out`` atomically (temporary file, fsync, rename)
from the engine's ``before_commit`` hook, so a failed write leaves neither a ledger
entry nor a file at ``--out``. Errors name the CLI's flags (``--force``,
``--allow-unknown``), not the Python keywords.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from deltastore.errors import InvalidArgumentError, LedgerError

from .cli_files import (  # noqa: F401  (re-exported: the CLI's file helpers lived here)
    MAX_ID_FILE_BYTES,
    SAFETENSORS_SUFFIXES,
    TORCH_SUFFIXES,
    WEIGHT_SUFFIXES,
    check_model,
    check_output_path,
    load_sample_ids,
    load_weights,
    save_weights,
    write_receipt,
)

STORE_HELP = "the store directory (what Recorder wrote; `deltastore info STORE` describes it)"
MODEL_HELP = ("the model the store expects now, as .safetensors (or .pt/.pth/.bin, read with weights_only=True): the trained "
              "model, or the --out of the store's last request (`deltastore audit STORE` shows which)")
OUT_HELP = "where to write the new weights (.safetensors, .pt, .pth or .bin); never overwritten"
DEVICE_HELP = "where stored updates are summed: cpu (default), cuda or cuda:N"
FORCE_HELP = ("skip the model fingerprint check, for the reason given (recorded in the ledger). On a store with trained "
              "weights the result is derived from them anyway; on an older store the given model becomes the reference")
QUIET_HELP = "no progress bar (it is drawn only when stderr is a terminal anyway)"


def _cli_names():
    from .forget import option_names

    return option_names(allow_unknown="--allow-unknown", force="--force REASON", sample_ids="--samples")


def register_demo(sub) -> None:
    p = sub.add_parser("demo", help="train the paper's MLP on digits, record, forget, restore (about a minute on CPU)",
                       description="Train the paper's MLP on scikit-learn's digits while recording two stores, then forget "
                                   "class 3, restore it and forget 1 %% of the samples. Leaves the stores, the trained model and "
                                   "the model after each request (safetensors) and the requests' id files for the CLI.")
    p.add_argument("--store", default="demo-store", help="directory of the default store (created; default: demo-store)")
    p.add_argument("--dense-store", default=None, help="directory of the dense float32 store (default: <store>-dense)")
    p.add_argument("--out-dir", default=None,
                   help="where the models (.safetensors) and id files go (default: <store>-out)")
    p.add_argument("--json", default=None, help="write the figures as JSON here")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--epochs", type=int, default=8, help="training epochs (default 8; the figures in the README use 8)")
    p.add_argument("--overwrite", action="store_true", help="replace stores and outputs left by an earlier demo run")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)

    def run(args):
        from .demo import demo_main

        return demo_main(args)

    p.set_defaults(func=run)


def register_forget(sub) -> None:
    p = sub.add_parser("forget", help="subtract the stored updates of the steps that saw some samples",
                       description="Forget samples: the new model is the trained model minus the stored updates of every step "
                                   "that saw a sample of a live request. Writes --out, then a ledger entry in the store.")
    _add_model_arguments(p)
    p.add_argument("--samples", required=True, help="ids to forget: UTF-8 text (one per line), .json list, or .npy (at most 1 GiB)")
    p.add_argument("--request-id", default=None,
                   help="name of the request in the ledger (1-80 of A-Z a-z 0-9 _ . -; default: time and a random suffix)")
    p.add_argument("--allow-unknown", action="store_true", help="forget the known ids and list unknown ones instead of failing")
    p.add_argument("--buffers", choices=("keep", "subtract"), default="keep",
                   help="recorded buffers (BatchNorm statistics): keep them (default) or subtract their changes like weights")
    p.set_defaults(func=_forget_cmd)


def register_restore(sub) -> None:
    p = sub.add_parser("restore", help="undo a forget request: the model of the other live requests",
                       description="Undo a forget request. On a store with trained weights the result is bit for bit the model "
                                   "the other live requests give (the trained model when none is left).")
    _add_model_arguments(p)
    p.add_argument("--request", required=True, help="request id of the forget to undo (`deltastore audit STORE` lists them)")
    p.set_defaults(func=_restore_cmd)


def register_purge(sub) -> None:
    p = sub.add_parser("purge", help="make a forget final: erase its stored updates and sample ids from the store",
                       description="Purge a forget request: the stored updates of every step it subtracted are overwritten (on an "
                                   "encrypted store: their data keys are destroyed), its "
                                   "sample ids leave the index and the ledger (a tombstone stays), and the trained weights are "
                                   "replaced by a base with those steps folded in. It can no longer be restored. Also finishes "
                                   "a purge that was interrupted.")
    p.add_argument("store", help=STORE_HELP)
    p.add_argument("--request", required=True, help="request id of the forget to make final (`deltastore audit STORE` lists them)")
    p.add_argument("--model", default=None,
                   help="optional: the model the store expects now (as for forget); with --out, the new weights are written "
                        "there (the model changes by float rounding, and by the erased steps' buffer changes with --buffers fold)")
    p.add_argument("--out", default=None, help="with --model: " + OUT_HELP)
    p.add_argument("--buffers", choices=("fold", "keep"), default=None,
                   help="recorded buffers (BatchNorm statistics) in the new base: fold the erased steps' changes in like weights "
                        "(they carry the batches' data) or keep them as they are; default: as the request's forget did "
                        "(fold if it subtracted buffers, keep if it kept them)")
    p.add_argument("--purge-id", default=None, help="name of the tombstone in the ledger (1-80 of A-Z a-z 0-9 _ . -; default: time and a random suffix)")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.add_argument("--force", metavar="REASON", default=None, help=FORCE_HELP)
    p.add_argument("--receipt", default=None, help="also write the tombstone as JSON here (never overwritten)")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(func=_purge_cmd)


def _purge_cmd(args) -> int:
    from deltastore.cli import check_store_path
    from deltastore.devices import parse_device
    from deltastore.format import read_commit
    from deltastore.read import StoreReader

    from .ledger import parse_request_id
    from .purge import purge

    parse_request_id(args.request)
    if (args.model is None) != (args.out is None):
        raise InvalidArgumentError("--model and --out: expected both (to write the new weights) or neither, got only "
                                   + ("--model" if args.out is None else "--out"))
    parse_device(args.device)
    out = check_output_path(args.out, "--out", WEIGHT_SUFFIXES) if args.out else None
    receipt_path = check_output_path(args.receipt, "--receipt") if args.receipt else None
    reader = StoreReader(check_store_path(args.store))
    weights = None
    if args.model is not None:
        weights = load_weights(args.model)
        check_model(weights, reader.manifest, args.model)

    def passed() -> bool:  # the commit point: the commit record names this purge
        return any(e.get("request") == args.request for e in read_commit(reader.io).get("erased") or [])

    run = lambda hook: purge(reader, args.request, weights, device=args.device, force=args.force, purge_id=args.purge_id,
                             progress=not args.quiet, before_commit=hook, buffers=args.buffers)
    with _cli_names():
        if out is not None:
            result = _run_committing(run, _OutWriter(weights, out, passed))
            if not out.exists():  # a pending purge finished: its new state
                save_weights({**weights, **result.state}, out)
        else:
            result = run(None)
    t = result.receipt
    if receipt_path is not None:
        write_receipt(t, receipt_path)
    print(f"purged request {t.purges}: {len(t.erased_steps)} steps erased, ids file and {len(t.deleted) - 1} checkpoint file(s) "
          f"deleted, {result.bytes_rewritten:,} B of shards (or data keys) rewritten; tombstone {t.request_id} (ledger entry {t.sequence})")
    if t.redacted:
        print(f"redacted: the purged ids removed from the ids files of request(s) {', '.join(sorted(t.redacted))}")
    if result.max_change == result.max_change:  # not NaN: this run made the new base
        print(f"model {t.fingerprint_before[:19]}... -> {t.fingerprint_after[:19]}... (largest change {result.max_change:.3g} in parameters, {result.max_buffer_change:.3g} in buffers)"
              + (f"; wrote {out}" if out is not None else ""))
    for line in t.unredacted:
        print(f"not redacted: {line}")
    return 0


def _add_model_arguments(p) -> None:
    """What forget and restore share: the store, the model in and out, the device, --force, the receipt."""
    p.add_argument("store", help=STORE_HELP)
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--out", required=True, help=OUT_HELP)
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.add_argument("--force", metavar="REASON", default=None, help=FORCE_HELP)
    p.add_argument("--receipt", default=None, help="also write the receipt as JSON here (never overwritten)")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)


# ---- commands --------------------------------------------------------------------------------
def _check_outputs(args) -> tuple[Path, Path | None]:
    out = check_output_path(args.out, "--out", WEIGHT_SUFFIXES)
    receipt = check_output_path(args.receipt, "--receipt") if args.receipt else None
    if receipt is not None and receipt.resolve() == out.resolve():
        raise InvalidArgumentError(f"--receipt: expected a path other than --out, both are {out}")
    return out, receipt


class _OutWriter:
    """The ``before_commit`` hook: writes the whole input state dict, with the engine's new
    values in place of the recorded tensors, to ``--out`` before the ledger entry is written.

    ``committed()`` says whether the ledger holds the request's entry: asked only when the
    command fails after ``--out`` was written, to take the file back unless the entry made it.
    """

    def __init__(self, weights: dict[str, torch.Tensor], out: Path, committed: Callable[[], bool]):
        self.weights = weights
        self.out = out
        self.committed = committed
        self.written = False

    def __call__(self, new: dict[str, torch.Tensor]) -> None:
        save_weights({**self.weights, **new}, self.out)  # keys the store does not record pass through unchanged
        self.written = True

    def undo(self) -> None:
        """All or nothing: remove --out unless the ledger entry was committed after all."""
        if not self.written:
            return
        try:
            keep = self.committed()
        except Exception:  # cannot tell: keeping a file beats losing the only copy of a committed model
            keep = True
        if not keep:
            self.out.unlink(missing_ok=True)
            self.written = False


def _prepare(args):
    """Everything a forget/restore can check before reading stored updates."""
    from deltastore.cli import check_store_path
    from deltastore.devices import parse_device
    from deltastore.read import StoreReader

    out, receipt_path = _check_outputs(args)
    parse_device(args.device)
    reader = StoreReader(check_store_path(args.store))
    weights = load_weights(args.model)
    check_model(weights, reader.manifest, args.model)
    return reader, weights, out, receipt_path


def _run_committing(op, writer: _OutWriter):
    try:
        return op(writer)
    except BaseException:
        writer.undo()
        raise


def _finish_receipt(receipt, path: Path | None, out: Path) -> None:
    if path is None:
        return
    try:
        write_receipt(receipt, path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OSError(exc.errno, f"{reason}; the request {receipt.request_id} is committed (in the ledger) and {out} was written") from exc


def _forget_cmd(args) -> int:
    from .forget import forget
    from .ledger import Ledger, new_request_id, parse_request_id

    # Chosen here (as the engine would) so a failure can ask the ledger whether the entry made it.
    request_id = parse_request_id(args.request_id) if args.request_id is not None else new_request_id()
    reader, weights, out, receipt_path = _prepare(args)
    Ledger.require_new_id(Ledger(reader.io).entries(), request_id)  # before any work; the engine checks again under the lock
    ids = load_sample_ids(args.samples, reader.manifest.sample_id_type)
    writer = _OutWriter(weights, out, lambda: any(e.request_id == request_id for e in Ledger(reader.io).entries()))
    with _cli_names():
        receipt = _run_committing(lambda hook: forget(weights, reader, ids, device=args.device, request_id=request_id,
                                                      allow_unknown=args.allow_unknown, force=args.force, buffers=args.buffers,
                                                      progress=not args.quiet, before_commit=hook), writer)
    _finish_receipt(receipt, receipt_path, out)
    print(f"forgot {receipt.sample_count} samples: {len(receipt.steps)} steps subtracted "
          f"({len(receipt.steps_already_subtracted)} already subtracted), {receipt.bytes_read:,} B read, {receipt.seconds:.2f} s")
    if receipt.unknown_ids:
        print(f"{len(receipt.unknown_ids)} ids were unknown to the store: {receipt.unknown_ids[:10]}")
    print(f"request {receipt.request_id}; model {receipt.fingerprint_before[:19]}... -> {receipt.fingerprint_after[:19]}...; wrote {out}")
    return 0


def _restore_cmd(args) -> int:
    from .forget import restore
    from .ledger import Ledger, parse_request_id

    parse_request_id(args.request)
    reader, weights, out, receipt_path = _prepare(args)
    # Unknown or already restored: say so before taking the lock (the engine checks again under it).
    ledger = Ledger(reader.io)
    entries = ledger.entries()
    Ledger.forget_entry(entries, args.request, where=ledger.dir)
    if Ledger.restored(entries, args.request):
        raise LedgerError(f"--request: {args.request!r} was already restored")
    # A request is restored at most once, so a restore entry naming it is this command's.
    writer = _OutWriter(weights, out, lambda: Ledger.restored(ledger.entries(), args.request))
    with _cli_names():
        receipt = _run_committing(lambda hook: restore(weights, reader, args.request, device=args.device, force=args.force,
                                                       progress=not args.quiet, before_commit=hook), writer)
    _finish_receipt(receipt, receipt_path, out)
    print(f"restored request {args.request}: {len(receipt.steps)} steps added back, {receipt.seconds:.2f} s; wrote {out}")
    return 0
