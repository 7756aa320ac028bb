"""Index benchmark: a synthetic sample index of 10 M rows (1 M with --quick), lookups of 1, 1,000 and 100,000 ids.

Wraps :func:`benchmarks.index_bench.run_index_benchmark`, which builds the
index the way a recorder does (one part per 64 steps, 128 samples per step,
8 epochs), times lookups, compacts it into one sorted part (what
``Recorder.close`` does) and times them again.

Two cache states per lookup, both with the OS page cache warm (the files
were just written):

* **cold**: a fresh :class:`~deltastore.index.SampleIndex` per lookup (list
  the folder, map and parse every part's footer, then look up) -- what a
  forget request pays when it opens the store;
* **warm**: the same lookup again on an open index -- a service that keeps
  the store open.

The headline ``lookup_seconds`` is the compacted index (the layout a closed
recording leaves), cold. Target (DESIGN.md): 1,000 ids in a 10 M-row index
in <= 50 ms.
"""

from __future__ import annotations

import os
import time

from .common import matplotlib_pyplot, plots_dir, print_table
from .index_bench import run_index_benchmark

FULL_ROWS = 10_000_000
QUICK_ROWS = 1_000_000
LOOKUP_SIZES = (1, 1000, 100_000)
TARGET_IDS = 1000
TARGET_SECONDS = 0.050
LAYOUTS = ("compacted", "many_parts")


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run(
    *,
    quick: bool,
    device: str = "cpu",
    plots: str | None = None,
    out: str | None = None,
    rows: int | None = None,
    lookup_sizes: tuple[int, ...] = LOOKUP_SIZES,
    repeats: int = 5,
    seed: int = 0,
) -> dict:
    """Build the index, time lookups, print a table; return {"rows": [...], "summary": {...}}.

    Parameters
    ----------
    quick : 1 M rows instead of 10 M (unless ``rows`` is given).
    device : unused (the index lives on the host); accepted for the common interface.
    plots : folder for ``index_lookup.png`` (lookup time against ids), or None.
    out : unused.
    rows : index rows to build (overrides ``quick``).
    lookup_sizes : numbers of distinct ids per timed lookup.
    repeats : timed repetitions per lookup (medians reported, minimum too).
    seed : seeds the synthetic shuffles and the query draws.
    """
    del device, out  # the index is host-only; nothing to write beside the JSON
    n_rows = int(rows) if rows is not None else (QUICK_ROWS if quick else FULL_ROWS)
    load_before = _load()
    t0 = time.perf_counter()
    raw = run_index_benchmark(n_rows, seed, lookup_sizes=tuple(lookup_sizes), repeats=repeats)
    wall = time.perf_counter() - t0
    load_after = _load()

    table: list[dict] = []
    for layout in LAYOUTS:
        for k in lookup_sizes:
            pre = f"{layout}.lookup_{k}"
            if f"{pre}_cold_ms" not in raw:
                continue
            table.append({
                "layout": layout,
                "ids_requested": int(k),
                "ids": min(int(k), int(raw.get("samples", k))),
                "steps_found": raw.get(f"{pre}_steps"),
                "cold_ms": raw[f"{pre}_cold_ms"],
                "cold_min_ms": raw.get(f"{pre}_cold_min_ms"),
                "warm_ms": raw[f"{pre}_warm_ms"],
                "warm_min_ms": raw.get(f"{pre}_warm_min_ms"),
                "parts": raw.get(f"{layout}.parts"),
                "bytes_per_row": raw.get(f"{layout}.bytes_per_row"),
            })

    def seconds(layout: str, state: str) -> dict[str, float]:
        return {str(r["ids_requested"]): r[f"{state}_ms"] / 1e3 for r in table if r["layout"] == layout}

    cold = seconds("compacted", "cold")
    target = cold.get(str(TARGET_IDS))
    summary = {
        "rows": raw.get("rows"),
        "samples": raw.get("samples"),
        "steps": raw.get("steps"),
        "build_seconds": raw.get("build_s"),
        "compact_seconds": raw.get("compact_s"),
        "bytes_per_row": raw.get("compacted.bytes_per_row"),
        "bytes_per_row_many_parts": raw.get("many_parts.bytes_per_row"),
        "parts_many_parts": raw.get("many_parts.parts"),
        "lookup_seconds": cold,
        "lookup_seconds_cold": cold,
        "lookup_seconds_warm": seconds("compacted", "warm"),
        "lookup_seconds_many_parts_cold": seconds("many_parts", "cold"),
        "lookup_seconds_many_parts_warm": seconds("many_parts", "warm"),
        "lookup_cache": "lookup_seconds = compacted index, cold (fresh SampleIndex per lookup; OS page cache warm); medians of "
                        f"{repeats}",
        "open_ms": raw.get("compacted.open_ms"),
        "samples_for_ms": raw.get("compacted.samples_for_ms"),
        "target_seconds_1000_ids": TARGET_SECONDS,
        "meets_target": None if target is None else bool(target <= TARGET_SECONDS),
        "wall_seconds": round(wall, 2),
        "load_before": load_before,
        "load_after": load_after,
        "raw": raw,
    }
    print_table(table, ["layout", "ids", "steps_found", "cold_ms", "warm_ms", "cold_min_ms", "warm_min_ms", "parts", "bytes_per_row"],
                title=f"sample index: {summary['rows']:,} rows, built in {summary['build_seconds']} s, "
                      f"{summary['bytes_per_row']} B/row compacted (load {load_before} -> {load_after})")
    if target is not None:
        print(f"1,000-id lookup (compacted, cold): {target * 1e3:.1f} ms (target <= {TARGET_SECONDS * 1e3:.0f} ms: "
              f"{'met' if summary['meets_target'] else 'MISSED'})")
    folder = plots_dir(plots)
    if folder is not None and table:
        summary["plot"] = str(_plot(table, folder / "index_lookup.png", summary["rows"]))
    return {"rows": table, "summary": summary}


def _plot(table: list[dict], path, rows) -> str:
    plt = matplotlib_pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for layout, marker in zip(LAYOUTS, ("o", "s")):
        sub = [r for r in table if r["layout"] == layout]
        if not sub:
            continue
        ax.plot([r["ids"] for r in sub], [r["cold_ms"] for r in sub], marker=marker, label=f"{layout}, cold")
        ax.plot([r["ids"] for r in sub], [r["warm_ms"] for r in sub], marker=marker, linestyle="--", label=f"{layout}, warm")
    ax.axhline(TARGET_SECONDS * 1e3, color="grey", linewidth=0.8, linestyle=":", label="target (1,000 ids)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sample ids looked up")
    ax.set_ylabel("lookup time (ms)")
    ax.set_title(f"sample index lookup, {rows:,} rows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
