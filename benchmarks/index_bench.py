"""Sample-index benchmark: build a synthetic index, time lookups before and after compaction.

The shape follows a real run: ``rows / epochs`` samples, reshuffled every
epoch, ``batch`` samples per optimizer step, a part flushed every
``steps_per_part`` steps (as a recorder would), then one compaction.

"Cold" means a fresh :class:`~deltastore.index.SampleIndex` (listing the
index, mapping every part and sidecar, then the lookup); the OS page cache is
warm, since the files were just written. "Warm" is the same call again on the
same reader. After the compacted figures, the compacted part's sidecar is
deleted and the lookups timed again (``no_sidecar.*``): the pyarrow route that
stores written before sidecars take.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from deltastore.index import IndexWriter, SampleIndex, digests_to_json, list_index
from deltastore.storage import LocalStoreIO, StoreIO

__all__ = ["run_index_benchmark"]

PREFIX = "index"


def _timed(fn, repeats: int) -> tuple[float, float, object]:
    """(min seconds, median seconds, last result) of ``repeats`` calls."""
    times = []
    result = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times)), result


def _lookup_figures(io: StoreIO, id_type: str, committed: int, queries: dict[int, object], repeats: int, digests) -> dict:
    out: dict[str, float] = {}
    for k, q in queries.items():
        def cold(q=q):
            return SampleIndex(io, id_type, committed, prefix=PREFIX, digests=digests).lookup(q)

        cmin, cmed, (steps, unknown) = _timed(cold, repeats)
        index = SampleIndex(io, id_type, committed, prefix=PREFIX, digests=digests)
        index.lookup(q)
        wmin, wmed, _ = _timed(lambda q=q: index.lookup(q), repeats)
        out[f"lookup_{k}_cold_ms"] = round(cmed * 1e3, 2)
        out[f"lookup_{k}_cold_min_ms"] = round(cmin * 1e3, 2)
        out[f"lookup_{k}_warm_ms"] = round(wmed * 1e3, 3)
        out[f"lookup_{k}_warm_min_ms"] = round(wmin * 1e3, 3)
        out[f"lookup_{k}_steps"] = int(len(steps))
        if unknown:  # every query id was recorded: a miss is a bug, not a figure
            raise RuntimeError(f"index lost {len(unknown)} recorded ids")
    t0 = time.perf_counter()
    index = SampleIndex(io, id_type, committed, prefix=PREFIX, digests=digests)
    _ = index.num_parts
    out["open_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
    step = committed // 2
    smin, smed, ids = _timed(lambda: index.samples_for(step), repeats)
    out["samples_for_ms"] = round(smed * 1e3, 2)
    out["samples_for_len"] = len(ids)
    return out


def _sizes(io: StoreIO, index: SampleIndex) -> dict:
    """Parts, parts with a sidecar, and bytes per row: all, Parquet parts only, sidecars only."""
    rows = max(1, index.num_rows)
    parquet = sum(io.size(k) for k in index.part_keys)
    total = index.nbytes
    return {
        "parts": index.num_parts,
        "sidecar_parts": index.num_sidecar_parts,
        "bytes_per_row": round(total / rows, 2),
        "parquet_bytes_per_row": round(parquet / rows, 2),
        "sidecar_bytes_per_row": round((total - parquet) / rows, 2),
    }


def run_index_benchmark(
    rows: int,
    seed: int = 0,
    *,
    id_type: str = "int64",
    compression: str | None = "zstd",
    epochs: int = 8,
    batch: int = 128,
    steps_per_part: int = 64,
    row_group_size: int = 65536,
    lookup_sizes: tuple[int, ...] = (1, 1000, 100_000),
    repeats: int = 3,
    directory: str | Path | None = None,
    no_sidecar: bool = True,
    digests: bool = True,
) -> dict:
    """Build a synthetic sample index of about ``rows`` rows and return figures.

    Parameters
    ----------
    rows
        Target row count; ``rows // epochs`` samples each appear once per epoch.
    seed
        Seeds the epoch shuffles and the query draws.
    id_type, compression, row_group_size
        Passed to :class:`~deltastore.index.IndexWriter`. String ids are
        ``f"sample-{i:09d}"``.
    epochs, batch, steps_per_part
        Run shape: samples per step and steps per flushed part.
    lookup_sizes
        Numbers of distinct known ids per timed lookup (capped at the sample count).
    repeats
        Timed repetitions; medians are reported (plus the minimum for lookups).
    directory
        Where to build the store (a temporary directory, removed afterwards, when None).
    no_sidecar
        Also time the compacted part with its sidecar deleted (the pyarrow route).
        That layout is read without digests, as a store written before them is.
    digests
        Build and read the index as a store does: the writer keeps the digests
        of its parts and the reader checks every part against them (the commit
        record's ``index_digests``, FORMAT.md §6.2). False: no digests at all.

    Returns
    -------
    dict
        Plain numbers: row and part counts, build and compaction seconds,
        bytes per row, and for the uncompacted (``many_parts.*``), the
        compacted (``compacted.*``) and the sidecar-less compacted
        (``no_sidecar.*``) index: cold and warm lookup milliseconds per
        lookup size, open time, ``samples_for`` time.
    """
    rng = np.random.default_rng(seed)
    n_samples = max(1, rows // epochs)
    own_dir = directory is None
    root = Path(tempfile.mkdtemp(prefix="index-bench-")) if own_dir else Path(directory)
    io = LocalStoreIO(root)

    def ident(ids: np.ndarray):
        if id_type == "int64":
            return ids
        return [f"sample-{i:09d}" for i in ids.tolist()]

    try:
        # digests={}: the writer starts from an (empty) commit record, as in a store
        writer = IndexWriter(io, id_type, prefix=PREFIX, row_group_size=row_group_size, compression=compression,
                             digests={} if digests else None)
        step = 0
        t0 = time.perf_counter()
        for epoch in range(epochs):
            perm = rng.permutation(n_samples).astype(np.int64)
            for start in range(0, n_samples, batch):
                writer.add(step, epoch, ident(perm[start : start + batch]))
                step += 1
                if step % steps_per_part == 0:
                    writer.flush()
        writer.flush()
        build_s = time.perf_counter() - t0
        committed = step

        queries = {
            k: ident(np.sort(rng.choice(n_samples, size=min(k, n_samples), replace=False)))
            for k in lookup_sizes
        }
        def record():
            return digests_to_json(writer.digests()) if digests else None

        fresh = SampleIndex(io, id_type, committed, prefix=PREFIX, digests=record())
        result: dict = {
            "rows": fresh.num_rows,
            "samples": n_samples,
            "steps": committed,
            "id_type": id_type,
            "compression": compression,
            "digests": digests,
            "row_group_size": row_group_size,
            "build_s": round(build_s, 2),
            "build_rows_per_s": round(fresh.num_rows / build_s),
        }
        layouts = {"many_parts": None, "compacted": None} | ({"no_sidecar": None} if no_sidecar else {})
        for layout in layouts:
            if layout == "compacted":
                t0 = time.perf_counter()
                writer.compact(committed)
                result["compact_s"] = round(time.perf_counter() - t0, 2)
            elif layout == "no_sidecar":
                for name in io.list_dir(PREFIX):
                    if name.endswith(".ids"):
                        io.delete(f"{PREFIX}/{name}")
                assert not list_index(io, PREFIX).sidecars
            layout_digests = None if layout == "no_sidecar" else record()
            index = SampleIndex(io, id_type, committed, prefix=PREFIX, digests=layout_digests)
            for key, value in _sizes(io, index).items():
                result[f"{layout}.{key}"] = value
            for key, value in _lookup_figures(io, id_type, committed, queries, repeats, layout_digests).items():
                result[f"{layout}.{key}"] = value
        return result
    finally:
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)
