"""Forgetting latency and store size: the default store against the same store encrypted (deltastore.crypto).

``python -m benchmarks latency --encrypt``. One training run is recorded twice at once
(two recorders on one optimizer): the default store (layer-wise plan, int8, Blosc-lz4) and
the same settings with ``encryption_key=`` (AES-256-GCM per inner chunk, one step per
chunk, sealed index and trained weights). Then the same forget requests (one sample, one
class) are timed on both, warm (an open StoreReader, page cache warm), interleaved request
by request so a slow phase of the machine hits both: ``forget`` end to end and
``sum_updates`` alone, medians of ``repeats``. Also: bytes stored, and the time to open a
reader (the encrypted one also authenticates the manifest's key id).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from deltastore.crypto import open_encrypted
from deltastore.read import StoreReader
from deltastore.record import Recorder
from unlearning.demo import _Both
from unlearning.forget import forget
from unlearning.ledger import LEDGER_DIR
from unlearning.models import build_model
from unlearning.training import train

from .common import median, print_table
from .latency import FULL, QUICK, Config, _dataset, _load, _requests

__all__ = ["run"]


def record_pair(cfg: Config, folder: Path, key: bytes) -> dict:
    data = _dataset(cfg)
    model = build_model(cfg.model, in_shape=data.in_shape, num_classes=data.num_classes, seed=cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    plain, enc = folder / "plain", folder / "encrypted"
    with Recorder(plain, model, opt) as a, Recorder(enc, model, opt, encryption_key=key) as b:
        stats = train(model, data, epochs=cfg.epochs, batch_size=cfg.batch, lr=cfg.lr, seed=cfg.seed, optimizer=opt, recorder=_Both(a, b))
    return {"data": data, "model": model, "trained": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "plain": plain, "encrypted": enc, "steps": stats["steps"], "params": sum(p.numel() for p in model.parameters())}


def run(*, quick: bool, device: str = "cpu", plots: str | None = None, out: str | None = None, encrypt: bool = True,
        configs=None, repeats: int | None = None) -> dict:
    del plots, out, encrypt
    configs = tuple(configs) if configs is not None else (QUICK if quick else FULL)
    repeats = int(repeats) if repeats is not None else (2 if quick else 5)
    key = os.urandom(32)
    base = Path(tempfile.mkdtemp(prefix="crypto-latency-"))
    rows = []
    try:
        for cfg in configs:
            folder = base / cfg.name
            folder.mkdir()
            r = record_pair(cfg, folder, key)
            stores = {"plain": r["plain"], "encrypted": open_encrypted(r["encrypted"], key)}
            t = {}
            for kind, store in stores.items():
                t0 = time.perf_counter()
                StoreReader(store).close()
                t[kind] = time.perf_counter() - t0
            readers = {kind: StoreReader(store) for kind, store in stores.items()}
            sizes = {kind: readers[kind].nbytes_stored() for kind in stores}
            model, trained = r["model"].to(device), {k: v.to(device) for k, v in r["trained"].items()}
            for request, ids in _requests(r["data"], cfg.seed).items():
                if request == "1% of samples":
                    continue
                steps: list[int] = []
                times = {k: {"forget": [], "sum": []} for k in stores}
                for k in stores:  # untimed warm-up: page cache, masks, index
                    _forget(model, trained, readers[k], r[k], ids, device)
                for _ in range(repeats):
                    for k in stores:  # interleaved: plain, encrypted, plain, ...
                        times[k]["forget"].append(_forget(model, trained, readers[k], r[k], ids, device))
                        steps = sorted(set(int(s) for s in readers[k].index.lookup(ids)[0].tolist()))
                        t0 = time.perf_counter()
                        readers[k].sum_updates(steps, device=device)
                        times[k]["sum"].append(time.perf_counter() - t0)
                row = {"model": cfg.name, "params": r["params"], "steps_recorded": r["steps"], "request": request,
                       "samples": int(len(ids)), "steps": len(steps), "repeats": repeats, "device": device,
                       "load_avg_1m": _load()}
                for k in stores:
                    row[f"forget_s_{k}"] = median(times[k]["forget"])
                    row[f"sum_s_{k}"] = median(times[k]["sum"])
                    row[f"store_bytes_{k}"] = sizes[k]["total"]
                    row[f"open_s_{k}"] = t[k]
                row["forget_ratio"] = row["forget_s_encrypted"] / row["forget_s_plain"]
                row["sum_ratio"] = row["sum_s_encrypted"] / row["sum_s_plain"]
                row["bytes_ratio"] = row["store_bytes_encrypted"] / row["store_bytes_plain"]
                rows.append(row)
            for rd in readers.values():
                rd.close()
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print_table(rows, ["model", "request", "samples", "steps", "forget_s_plain", "forget_s_encrypted", "forget_ratio",
                       "sum_s_plain", "sum_s_encrypted", "sum_ratio", "store_bytes_plain", "store_bytes_encrypted", "bytes_ratio",
                       "load_avg_1m"],
                title=f"forget latency ({device}, warm): default store vs the same store encrypted")
    micro = cipher_micro()
    return {"rows": rows, "cipher": micro, "summary": {f"{r['model']}/{r['request']}": {"forget_ratio": r["forget_ratio"], "sum_ratio": r["sum_ratio"],
                                                                         "bytes_ratio": r["bytes_ratio"]} for r in rows}}


def cipher_micro(repeats: int = 5) -> list[dict]:
    """What the cipher itself costs, free of the pipeline: a chunk's encrypt and decrypt through
    ChunkCipher (AAD built, one AES-GCM call, copies), and a whole-object envelope, per size."""
    import tempfile as _tf

    import numpy as np

    from deltastore.crypto import EncryptedStoreIO
    from deltastore.crypto.envelope import open_sealed, seal
    from deltastore.format import ShardLayout
    from deltastore.storage import LocalStoreIO

    rows = []
    with _tf.TemporaryDirectory() as d:
        io = EncryptedStoreIO(LocalStoreIO(d), os.urandom(32))
        io.new_store_encryption()
        keys = io.step_keys(4)
        keys.prepare(0, 4, fsync=False)
        for nbytes in (4096, 65536, 45 * 2**20):
            data = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8).tobytes()
            if nbytes <= 65536:
                cipher = io.chunk_cipher(ShardLayout.of("g0000/values", nbytes, "uint8", "none", 0, 4, encrypted=True))
                n = max(1, 2**24 // nbytes)
                enc = [cipher.encrypt(data, 1, 0) for _ in range(8)]
                t_enc, t_dec = [], []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    for _ in range(n):
                        cipher.encrypt(data, 1, 0)
                    t_enc.append((time.perf_counter() - t0) / n)
                    t0 = time.perf_counter()
                    for i in range(n):
                        cipher.decrypt(enc[i % 8], 1, 0, "k")
                    t_dec.append((time.perf_counter() - t0) / n)
                what = "chunk"
            else:
                blob = seal(io._aead, io._key_id_raw, io.store_id, "trained/m", data)
                t_enc, t_dec = [], []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    seal(io._aead, io._key_id_raw, io.store_id, "trained/m", data)
                    t_enc.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    open_sealed(io._aead, io._key_id_raw, io.store_id, "trained/m", blob, "m")
                    t_dec.append(time.perf_counter() - t0)
                what = "envelope"
            e, dd = min(t_enc), min(t_dec)
            rows.append({"object": what, "bytes": nbytes, "encrypt_us": 1e6 * e, "decrypt_us": 1e6 * dd,
                         "encrypt_GBps": nbytes / e / 1e9, "decrypt_GBps": nbytes / dd / 1e9})
    print_table(rows, ["object", "bytes", "encrypt_us", "decrypt_us", "encrypt_GBps", "decrypt_GBps"],
                title="AES-256-GCM through deltastore.crypto (fastest of repeats, one thread)")
    return rows


def _forget(model, trained, reader, path: Path, ids, device) -> float:
    model.load_state_dict(trained)
    shutil.rmtree(Path(path) / LEDGER_DIR, ignore_errors=True)  # an empty ledger: the whole request each time
    t0 = time.perf_counter()
    forget(model, reader, ids, device=device)
    return time.perf_counter() - t0
