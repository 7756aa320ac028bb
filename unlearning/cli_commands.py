"""`deltastore demo | forget | restore`: registered through the deltastore.commands entry points.

Models travel as safetensors files (or PyTorch files read with
``torch.load(weights_only=True)``): never pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from deltastore.errors import InvalidArgumentError, SampleIdTypeError, StoreExistsError


def register_demo(sub) -> None:
    p = sub.add_parser("demo", help="train the paper's MLP on digits, record, forget, restore (about a minute on CPU)")
    p.add_argument("--store", default="demo-store", help="directory of the default store (created; '<store>-dense' for the dense one)")
    p.add_argument("--dense-store", default=None, help="directory of the dense float32 store (default: <store>-dense)")
    p.add_argument("--json", default=None, help="write the figures as JSON here")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--overwrite", action="store_true", help="replace stores left by an earlier demo run")

    def run(args):
        from .demo import demo_main

        return demo_main(args)

    p.set_defaults(func=run)


def register_forget(sub) -> None:
    p = sub.add_parser("forget", help="subtract the stored updates of the steps that saw some samples")
    p.add_argument("store")
    p.add_argument("--model", required=True, help="model weights (.safetensors, or .pt/.pth read with weights_only=True)")
    p.add_argument("--samples", required=True, help="ids to forget: text (one per line), .json list, or .npy")
    p.add_argument("--out", required=True, help="where to write the new weights (.safetensors or .pt); never overwritten")
    p.add_argument("--device", default="cpu")
    p.add_argument("--request-id", default=None)
    p.add_argument("--allow-unknown", action="store_true", help="forget the known ids and list unknown ones instead of failing")
    p.add_argument("--force", action="store_true", help="skip the model fingerprint check")
    p.add_argument("--buffers", choices=("keep", "subtract"), default="keep",
                   help="recorded buffers (BatchNorm statistics): keep them (default) or subtract their changes like weights")
    p.add_argument("--receipt", default=None, help="also write the receipt as JSON here")
    p.set_defaults(func=_forget_cmd)


def register_restore(sub) -> None:
    p = sub.add_parser("restore", help="add back the updates a forget request subtracted")
    p.add_argument("store")
    p.add_argument("--model", required=True)
    p.add_argument("--request", required=True, help="request id of the forget to undo")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true")
    p.add_argument("--receipt", default=None)
    p.set_defaults(func=_restore_cmd)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise InvalidArgumentError(f"--model: expected a weights file, {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InvalidArgumentError(f"--model: expected a state dict of tensors in {path}, got {type(obj).__name__}")
    return obj


def save_weights(weights: dict[str, torch.Tensor], path: str | Path) -> None:
    path = Path(path)
    if path.exists():
        raise StoreExistsError(f"--out: {path} already exists; choose a new path (outputs are never overwritten)")
    cpu = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(cpu, str(path))
    else:
        torch.save(cpu, str(path))


def load_sample_ids(path: str | Path, id_type: str):
    path = Path(path)
    if not path.exists():
        raise InvalidArgumentError(f"--samples: expected a file of sample ids, {path} does not exist")
    if path.suffix == ".npy":
        raw = np.load(path, allow_pickle=False)
        values = raw.tolist()
    elif path.suffix == ".json":
        values = json.loads(path.read_text())
        if not isinstance(values, list):
            raise InvalidArgumentError(f"--samples: expected a JSON list of ids in {path}, got {type(values).__name__}")
    else:
        values = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if id_type == "int64":
            try:
                values = [int(v) for v in values]
            except ValueError as exc:
                raise SampleIdTypeError(f"--samples: this store has integer sample ids, {path} holds {exc}") from None
    return values


def _write_receipt(receipt, path) -> None:
    if path:
        Path(path).write_text(json.dumps(receipt.to_json(), indent=1))


def _forget_cmd(args) -> int:
    from deltastore.read import StoreReader

    from .forget import forget

    reader = StoreReader(args.store)
    weights = load_weights(args.model)
    ids = load_sample_ids(args.samples, reader.manifest.sample_id_type)
    if Path(args.out).exists():
        raise StoreExistsError(f"--out: {args.out} already exists; choose a new path (outputs are never overwritten)")
    receipt = forget(weights, reader, ids, device=args.device, request_id=args.request_id, allow_unknown=args.allow_unknown, force=args.force,
                     buffers=args.buffers)
    save_weights(weights, args.out)
    _write_receipt(receipt, args.receipt)
    print(f"forgot {receipt.sample_count} samples: {len(receipt.steps)} steps subtracted "
          f"({len(receipt.steps_already_subtracted)} already subtracted), {receipt.bytes_read:,} B read, {receipt.seconds:.2f} s")
    if receipt.unknown_ids:
        print(f"{len(receipt.unknown_ids)} ids were unknown to the store: {receipt.unknown_ids[:10]}")
    print(f"request {receipt.request_id}; model {receipt.fingerprint_before[:19]}... -> {receipt.fingerprint_after[:19]}...; wrote {args.out}")
    return 0


def _restore_cmd(args) -> int:
    from deltastore.read import StoreReader

    from .forget import restore

    reader = StoreReader(args.store)
    weights = load_weights(args.model)
    if Path(args.out).exists():
        raise StoreExistsError(f"--out: {args.out} already exists; choose a new path (outputs are never overwritten)")
    receipt = restore(weights, reader, args.request, device=args.device, force=args.force)
    save_weights(weights, args.out)
    _write_receipt(receipt, args.receipt)
    print(f"restored request {args.request}: {len(receipt.steps)} steps added back, {receipt.seconds:.2f} s; wrote {args.out}")
    return 0
