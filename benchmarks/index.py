"""Index benchmark: a synthetic sample index of 10 M rows (1 M with --quick), lookups of 1, 1,000 and 100,000 ids.

Wraps :func:`benchmarks.index_bench.run_index_benchmark`, once with int64 ids
and once with string ids. Each builds the index the way a recorder does (one
part per 64 steps, 128 samples per step, 8 epochs), times lookups, compacts
it into one sorted part (what ``Recorder.close`` does) and times them again,
then once more with the compacted part's sidecar deleted (the pyarrow route
that stores written before sidecars take).

Two cache states per lookup, both with the OS page cache warm (the files
were just written):

* **cold**: a fresh :class:`~deltastore.index.SampleIndex` per lookup (list
  the folder, map every part and sidecar, then look up) -- what a forget
  request pays when it opens the store;
* **warm**: the same lookup again on an open index -- a service that keeps
  the store open.

The headline ``lookup_seconds`` is the compacted int64 index (the layout a
closed recording leaves), cold; ``string`` holds the same figures for string
ids. Target (DESIGN.md): 1,000 ids in a 10 M-row index in <= 50 ms.
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
LAYOUTS = ("compacted", "many_parts", "no_sidecar")
ID_TYPES = ("int64", "string")


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
    id_types: tuple[str, ...] = ID_TYPES,
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
    id_types : which id types to build an index of.
    """
    del device, out  # the index is host-only; nothing to write beside the JSON
    n_rows = int(rows) if rows is not None else (QUICK_ROWS if quick else FULL_ROWS)
    load_before = _load()
    t0 = time.perf_counter()
    raws = {t: run_index_benchmark(n_rows, seed, id_type=t, lookup_sizes=tuple(lookup_sizes), repeats=repeats) for t in id_types}
    wall = time.perf_counter() - t0
    load_after = _load()

    table: list[dict] = []
    for id_type, raw in raws.items():
        for layout in LAYOUTS:
            for k in lookup_sizes:
                pre = f"{layout}.lookup_{k}"
                if f"{pre}_cold_ms" not in raw:
                    continue
                table.append({
                    "id_type": id_type,
                    "layout": layout,
                    "ids_requested": int(k),
                    "ids": min(int(k), int(raw.get("samples", k))),
                    "steps_found": raw.get(f"{pre}_steps"),
                    "cold_ms": raw[f"{pre}_cold_ms"],
                    "cold_min_ms": raw.get(f"{pre}_cold_min_ms"),
                    "warm_ms": raw[f"{pre}_warm_ms"],
                    "warm_min_ms": raw.get(f"{pre}_warm_min_ms"),
                    "parts": raw.get(f"{layout}.parts"),
                    "sidecar_parts": raw.get(f"{layout}.sidecar_parts"),
                    "bytes_per_row": raw.get(f"{layout}.bytes_per_row"),
                })

    def seconds(id_type: str, layout: str, state: str) -> dict[str, float]:
        return {str(r["ids_requested"]): r[f"{state}_ms"] / 1e3 for r in table if r["layout"] == layout and r["id_type"] == id_type}

    def figures(id_type: str) -> dict:
        raw = raws[id_type]
        cold = seconds(id_type, "compacted", "cold")
        target = cold.get(str(TARGET_IDS))
        return {
            "rows": raw.get("rows"),
            "samples": raw.get("samples"),
            "steps": raw.get("steps"),
            "build_seconds": raw.get("build_s"),
            "compact_seconds": raw.get("compact_s"),
            "bytes_per_row": raw.get("compacted.bytes_per_row"),
            "parquet_bytes_per_row": raw.get("compacted.parquet_bytes_per_row"),
            "sidecar_bytes_per_row": raw.get("compacted.sidecar_bytes_per_row"),
            "bytes_per_row_many_parts": raw.get("many_parts.bytes_per_row"),
            "parts_many_parts": raw.get("many_parts.parts"),
            "lookup_seconds": cold,
            "lookup_seconds_cold": cold,
            "lookup_seconds_warm": seconds(id_type, "compacted", "warm"),
            "lookup_seconds_many_parts_cold": seconds(id_type, "many_parts", "cold"),
            "lookup_seconds_many_parts_warm": seconds(id_type, "many_parts", "warm"),
            "lookup_seconds_no_sidecar_cold": seconds(id_type, "no_sidecar", "cold"),
            "lookup_seconds_no_sidecar_warm": seconds(id_type, "no_sidecar", "warm"),
            "open_ms": raw.get("compacted.open_ms"),
            "samples_for_ms": raw.get("compacted.samples_for_ms"),
            "meets_target": None if target is None else bool(target <= TARGET_SECONDS),
            "raw": raw,
        }

    per_type = {t: figures(t) for t in raws}
    head = per_type.get("int64") or next(iter(per_type.values()))
    summary = {
        **head,
        "string": per_type.get("string"),
        "lookup_cache": "lookup_seconds = compacted index, cold (fresh SampleIndex per lookup; OS page cache warm); medians of "
                        f"{repeats}",
        "target_seconds_1000_ids": TARGET_SECONDS,
        "wall_seconds": round(wall, 2),
        "load_before": load_before,
        "load_after": load_after,
    }
    print_table(table, ["id_type", "layout", "ids", "steps_found", "cold_ms", "warm_ms", "cold_min_ms", "warm_min_ms", "parts",
                        "bytes_per_row"],
                title=f"sample index: {summary['rows']:,} rows (load {load_before} -> {load_after})")
    for id_type, fig in per_type.items():
        print(f"{id_type} ids: built in {fig['build_seconds']} s, compacted in {fig['compact_seconds']} s, "
              f"{fig['bytes_per_row']} B/row compacted ({fig['parquet_bytes_per_row']} Parquet + {fig['sidecar_bytes_per_row']} sidecar)")
        target = fig["lookup_seconds"].get(str(TARGET_IDS))
        if target is not None:
            print(f"1,000-id lookup, {id_type} ids (compacted, cold): {target * 1e3:.1f} ms (target <= {TARGET_SECONDS * 1e3:.0f} ms: "
                  f"{'met' if fig['meets_target'] else 'MISSED'})")
    folder = plots_dir(plots)
    if folder is not None and table:
        summary["plot"] = str(_plot(table, folder / "index_lookup.png", summary["rows"]))
    return {"rows": table, "summary": summary}


def _plot(table: list[dict], path, rows) -> str:
    plt = matplotlib_pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for id_type, color in zip(ID_TYPES, ("C0", "C1")):
        for layout, marker in zip(LAYOUTS, ("o", "s", "^")):
            sub = [r for r in table if r["layout"] == layout and r["id_type"] == id_type]
            if not sub:
                continue
            ax.plot([r["ids"] for r in sub], [r["cold_ms"] for r in sub], marker=marker, color=color,
                    label=f"{id_type}, {layout}, cold")
            ax.plot([r["ids"] for r in sub], [r["warm_ms"] for r in sub], marker=marker, color=color, linestyle="--",
                    alpha=0.5)
    ax.axhline(TARGET_SECONDS * 1e3, color="grey", linewidth=0.8, linestyle=":", label="target (1,000 ids)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sample ids looked up")
    ax.set_ylabel("lookup time (ms)")
    ax.set_title(f"sample index lookup, {rows:,} rows")
    ax.legend(fontsize=6, title="dashed: warm", title_fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
