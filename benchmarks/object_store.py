"""Local directory vs object storage (``--store-url s3://...``): recording overhead and forget latency.

``python -m benchmarks latency --store-url s3://bucket/prefix`` and ``overhead --store-url``
run this comparison (the local-only benchmarks run without the option). The same small
recording (the paper's MLP on digits, the default plan) goes to a temporary local directory
and to ``<url>/overhead-<uuid>``; then the same forget requests run against both.

Rows: per-step recording time (training with the recorder, flushes paid), forget seconds,
bytes read and the number of requests by kind, for both: ``LocalStoreIO`` counts its
operations under the same names (``GET``, ``GET range``, ``map``, ``PUT``, ``HEAD``, ``LIST``,
``DELETE``; a mapped file's bytes are not in ``bytes_read``). A local server (moto) has no network
latency and serves each request in ~5 ms of Python, so the moto figure is *not* an S3
figure: it shows the request count and bytes, which do carry over. The real-S3 estimate is
``requests on the critical path x first-byte latency`` (assumed 20 ms per request, the usual
S3 Standard first-byte time inside a region): shard reads on 16 threads, two dependent GETs
per shard (index, then chunks), every other request in sequence; plus bytes / 100 MB/s per
stream. The all-serial figure (every request one after another) is the upper bound.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

import torch

FIRST_BYTE_S = 0.020  # typical S3 Standard time to first byte, same region (assumption, stated in RESULTS.md)
STREAM_BPS = 100e6  # bytes/s of one GET stream
THREADS = 16  # StoreReader's default on object storage (ObjectStoreIO.read_threads)


def _record(store, epochs: int, quick: bool) -> dict:
    from deltastore.record import Recorder
    from unlearning.data import load_digits_split
    from unlearning.models import build_model
    from unlearning.training import train

    data = load_digits_split(seed=0)
    model = build_model("mlp", in_shape=data.in_shape, num_classes=data.num_classes, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    with Recorder(store, model, opt) as rec:
        train(model, data, epochs=epochs, batch_size=64, lr=1e-3, seed=0, optimizer=opt, recorder=rec)
        steps = rec.writer.next_step
        io = rec.writer.io
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    train(build_model("mlp", in_shape=data.in_shape, num_classes=data.num_classes, seed=0), data, epochs=epochs,
          batch_size=64, lr=1e-3, seed=0)
    plain = time.perf_counter() - t1
    requests = dict(getattr(io, "requests", None).by_kind) if hasattr(io, "requests") else None
    return {"steps": steps, "record_seconds": seconds, "plain_seconds": plain, "ms_per_step": 1e3 * seconds / steps,
            "overhead": seconds / plain - 1.0, "write_requests": requests, "model": model, "data": data}


def _forget(store, model, data, ids, rid, modelled: bool) -> dict:
    from deltastore.read import StoreReader
    from unlearning.forget import forget

    reader = StoreReader(store)
    io = reader.io
    before = dict(io.requests.by_kind) if hasattr(io, "requests") else None
    b0 = io.bytes_read
    t0 = time.perf_counter()
    receipt = forget(model, reader, ids, request_id=rid)
    seconds = time.perf_counter() - t0
    row = {"seconds": seconds, "bytes_read": io.bytes_read - b0, "steps": len(receipt.steps)}
    row["open_requests"] = sum(before.values()) if before is not None else None  # StoreReader's open
    if before is not None:
        after = io.requests.by_kind
        row["requests"] = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) - before.get(k, 0)}
        req = row["requests"]
        if not modelled:  # local: the counts side by side, no latency model
            return row
        # Model of real S3 (every request pays one first-byte latency): shard reads run on
        # THREADS reader threads, each unit two dependent GETs (its index, then its chunks, the
        # chunks concurrently); everything else (metadata, index sidecars, ledger) in sequence.
        units = req.get("GET tail", 0)
        serial = sum(v for k, v in req.items() if k not in ("GET tail", "GET range"))
        row["modelled_real_s3_seconds"] = ((serial + 2 * -(-units // THREADS)) * FIRST_BYTE_S
                                           + row["bytes_read"] / (STREAM_BPS * THREADS))
        row["modelled_real_s3_seconds_all_serial"] = sum(req.values()) * FIRST_BYTE_S + row["bytes_read"] / STREAM_BPS
    return row


def _index_rows(url: str, local: Path, quick: bool) -> list[dict]:
    """A cold 1-id and 1,000-id lookup in one index part (200 k rows quick, 2 M full), local vs object
    storage, sidecar version 1 (read whole) vs 2: as its size decides (whole under
    ``RANGED_FROM``), and by ranges (header and block table, then the blocks the search touches)."""
    import numpy as np

    from deltastore.index import IndexWriter, SampleIndex
    from deltastore.index import sidecar as sidecar_module
    from deltastore.storage import open_io

    n_ids, epochs, per_step = (25_000, 8, 1_000) if quick else (250_000, 8, 1_000)
    rng = np.random.default_rng(0)
    batches = [rng.permutation(n_ids).reshape(-1, per_step) for _ in range(epochs)]
    queries = {1: [int(batches[0][0][0])], 1000: np.sort(rng.choice(n_ids, 1000, replace=False))}
    rows = []
    defaults, ranged_from = dict(sidecar_module.write_sidecar.__kwdefaults__), sidecar_module.RANGED_FROM
    try:
        # v2 read as its size says (whole under RANGED_FROM), and always by ranges.
        for version, mode in ((1, "whole"), (2, "default"), (2, "ranged")):
            sidecar_module.write_sidecar.__kwdefaults__["version"] = version
            sidecar_module.RANGED_FROM = 0 if mode == "ranged" else ranged_from
            for where, store in (("local", str(local) + f"-index-{version}{mode}"), ("object", f"{url}/index-{version}{mode}")):
                w = IndexWriter(open_io(store), "int64")
                step = 0
                for epoch in batches:
                    for b in epoch:
                        w.add(step, 0, b)
                        step += 1
                w.flush()
                digests = w.digests()
                size = sum(d.size for k, d in digests.items() if k.endswith(".ids"))
                for k, q in queries.items():
                    io = open_io(store)
                    t0 = time.perf_counter()
                    steps, unknown = SampleIndex(io, "int64", step, digests=digests).lookup(q)
                    seconds = time.perf_counter() - t0
                    assert not unknown
                    req = dict(io.requests.by_kind)
                    rows.append({"benchmark": "index lookup", "where": where, "sidecar_version": version, "read": mode, "ids": k,
                                 "rows": step * per_step, "sidecar_bytes": size, "seconds": seconds,
                                 "bytes_read": io.bytes_read, "requests": req})
                    print(f"lookup  {k:5d} ids  v{version} {mode:7s} {where:6s} {step * per_step:,} rows: {1e3 * seconds:7.2f} ms, "
                          f"{io.bytes_read:,} of {size:,} sidecar B read, {sum(req.values())} requests {req}")
    finally:
        sidecar_module.write_sidecar.__kwdefaults__.update(defaults)
        sidecar_module.RANGED_FROM = ranged_from
    return rows


def run(*, quick: bool = False, device: str = "cpu", plots=None, out=None, store_url: str | None = None, kind: str = "both") -> dict:
    if not store_url:
        raise SystemExit("--store-url s3://bucket/prefix is required for the object-storage comparison")
    from deltastore.storage import is_url

    if not is_url(store_url):
        raise SystemExit(f"--store-url: expected s3://bucket/prefix, got {store_url!r}")
    epochs = 1 if quick else 3
    url = store_url.rstrip("/") + f"/overhead-{uuid.uuid4().hex[:8]}"
    local = Path(tempfile.mkdtemp(prefix="ds-objstore-")) / "store"
    rows = []
    recs = {}
    for where, store in (("local", local), ("object", url)):
        r = _record(store, epochs, quick)
        recs[where] = r
        rows.append({"benchmark": "overhead", "where": where, "store": str(store), "steps": r["steps"],
                     "ms_per_step": r["ms_per_step"], "overhead_vs_plain": r["overhead"], "write_requests": r["write_requests"]})
        print(f"record  {where:6s} {r['steps']} steps: {r['ms_per_step']:.2f} ms/step, overhead {r['overhead']:+.1%}"
              + (f", {sum(r['write_requests'].values())} requests {r['write_requests']}" if r["write_requests"] else ""))
    data = recs["local"]["data"]
    # A class request (many steps) and a 1 % sample request (few steps), as in the demo.
    requests = {"samples": data.ids_train[:: 100], "class": data.ids_train[data.y_train == 3]}
    for name, ids in requests.items():
        for where, store in (("local", local), ("object", url)):
            model = recs[where]["model"]
            row = _forget(store, model, data, ids, f"bench-{name}", modelled=where == "object")
            rows.append({"benchmark": "latency", "request": name, "where": where, **row})
            extra = f", {sum(row['requests'].values())} requests {row['requests']}" if "requests" in row else ""
            if "modelled_real_s3_seconds" in row:
                extra += (f", modelled real S3 {row['modelled_real_s3_seconds']:.2f} s"
                          f" (all serial {row['modelled_real_s3_seconds_all_serial']:.2f} s)")
            print(f"forget  {name:7s} {where:6s} {row['steps']} steps: {row['seconds']:.3f} s, {row['bytes_read']:,} B read{extra}")
    rows += _index_rows(url, local, quick)
    return {"rows": rows, "store_url": url, "assumptions": {"first_byte_s": FIRST_BYTE_S, "stream_bytes_per_s": STREAM_BPS,
                                                            "threads": THREADS}}
