"""Purge cost on the ResNet-18-sized store: time and bytes rewritten, one-sample and class requests.

A purge rewrites every shard holding an erased step (whole shards: a shard is one object),
writes a new base (the trained weights with the erased steps folded in) and the index parts
holding the request's ids. So its cost is set by how many shards the erased steps touch
(``steps_per_shard``) more than by the request's size: the figures show both.

    python -m benchmarks purge [--quick] [--json FILE]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch

from deltastore.format import read_commit
from deltastore.read import StoreReader
from deltastore.record import Recorder
from unlearning.forget import forget
from unlearning.models import build_model
from unlearning.purge import purge

BATCH = 16


def _record(store: Path, steps: int, steps_per_shard: int, model_name: str, key: bytes | None = None) -> tuple[dict, dict[int, list[int]]]:
    """``model_name`` (ResNet-18 for the figures) on CIFAR-shaped random batches: (final state, ids of each label)."""
    model = build_model(model_name, in_shape=(3, 32, 32), num_classes=10, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    by_label: dict[int, list[int]] = {}
    with Recorder(store, model, opt, steps_per_shard=steps_per_shard, encryption_key=key) as rec:
        for i in range(steps):
            opt.zero_grad()
            x, y = torch.randn(BATCH, 3, 32, 32, generator=g), torch.randint(0, 10, (BATCH,), generator=g)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            ids = list(range(BATCH * i, BATCH * i + BATCH))
            for sid, label in zip(ids, y.tolist()):
                by_label.setdefault(label, []).append(sid)
            rec.samples(ids)
            opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, by_label


def _one(path: Path, state: dict, ids: list[int], what: str, other: int, buffers: str | None, key: bytes | None = None) -> dict:
    from deltastore.crypto import open_encrypted

    store = path if key is None else open_encrypted(path, key)  # encrypted: the purge shreds data keys instead
    st = {k: v.clone() for k, v in state.items()}
    forget(st, store, [other], request_id="other")  # another live request: the model is re-derived from the new base
    r = forget(st, store, ids, request_id=what)
    before = read_commit(StoreReader(store).io)
    t0 = time.perf_counter()
    res = purge(store, what, st, buffers=buffers)
    seconds = time.perf_counter() - t0
    after = read_commit(StoreReader(store).io)
    old_index = set(before.get("index_digests") or {})
    index_bytes = sum(d["size"] for k, d in (after.get("index_digests") or {}).items() if k not in old_index)
    return {"request": what, "buffers": buffers or f"default: {res.receipt.buffers}", "samples": len(ids), "erased_steps": len(res.receipt.erased_steps), "forget_steps": len(r.all_steps),
            "purge_seconds": seconds, "shard_bytes_rewritten": res.bytes_rewritten, "base_bytes": after["trained"]["size"],
            "index_bytes_written": index_bytes,
            "bytes_written": res.bytes_rewritten + after["trained"]["size"] + index_bytes,
            "max_param_change": res.max_change, "max_buffer_change": res.max_buffer_change}


def run(*, quick: bool = False, device: str = "cpu", plots=None, out=None, model: str = "resnet18") -> dict:
    """``model``: "resnet18" for the figures; the smoke test passes a small one."""
    steps = 4 if quick else 16
    rows = []
    key = bytes(range(32))  # a fixed benchmark key: encrypted stores purge by crypto-shredding
    for sps, enc in ((4, None),) if quick else ((64, None), (4, None), (64, key)):
        with tempfile.TemporaryDirectory() as d:
            master = Path(d) / "master"
            state, by_label = _record(master, steps, sps, model, enc)
            from deltastore.crypto import open_encrypted

            reader = StoreReader(master if enc is None else open_encrypted(master, enc))
            sizes = reader.nbytes_stored()
            values = sizes["total"] - sizes.get("index", 0) - sum(p.stat().st_size for p in (master / "trained").glob("*"))
            # None: purge's default, as the request's forget did (forget keeps buffers by default)
            cases = [("one-sample", [3], None), ("class-0", by_label[0], None)]
            cases += [] if quick or enc else [("class-0", by_label[0], "fold")]
            other = BATCH * steps - 1  # a sample of the last step, not of class 0
            for what, ids, buffers in cases:
                ids = [i for i in ids if i != other]
                store = Path(d) / f"{what}-{buffers}"
                shutil.copytree(master, store)
                row = {"model": model, "encrypted": enc is not None, "steps": steps, "steps_per_shard": reader.manifest.steps_per_shard,
                       "store_bytes": sizes["total"], "update_bytes": values, **_one(store, state, ids, what, other, buffers, enc)}
                shutil.rmtree(store)
                rows.append(row)
                print(f"{model}{' encrypted' if enc else ''} {steps} steps, {row['steps_per_shard']} steps/shard, store {row['store_bytes'] / 1e6:.1f} MB: "
                      f"purge {what:<10} buffers={row['buffers']} ({row['samples']} samples, {row['erased_steps']} steps erased) "
                      f"{row['purge_seconds']:.2f} s; wrote {row['bytes_written'] / 1e6:.1f} MB "
                      f"(shards {row['shard_bytes_rewritten'] / 1e6:.1f}, base {row['base_bytes'] / 1e6:.1f}, "
                      f"index {row['index_bytes_written'] / 1e3:.1f} kB); largest change: parameters "
                      f"{row['max_param_change']:.2g}, buffers {row['max_buffer_change']:.2g}")
    return {"rows": rows}
