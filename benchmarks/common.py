"""Shared by every benchmark: machine description, medians, pair-wise ratios, JSON, plots."""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path

import torch


def machine() -> dict:
    """What produced the figures: CPU model, cores, GPU, library versions."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numcodecs
    import numpy
    import pyarrow
    import zarr

    import deltastore

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "versions": {
            "deltastore": deltastore.__version__,
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "zarr": zarr.__version__,
            "numcodecs": numcodecs.__version__,
            "pyarrow": pyarrow.__version__,
        },
    }


def median(values) -> float:
    return float(statistics.median(values))


def drop_page_cache(paths) -> bool:
    """Ask the kernel to forget the files' cached pages (posix_fadvise DONTNEED).

    Returns False where that is not possible; callers then copy the files fresh
    and say so in the row ("cold" = "fresh copy").
    """
    ok = True
    for root in paths:
        for dirpath, _, files in os.walk(root):
            for f in files:
                try:
                    fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
                    try:
                        os.fsync(fd)
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    finally:
                        os.close(fd)
                except (OSError, AttributeError):
                    ok = False
    return ok


def write_json(path: str | Path | None, payload: dict) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=_json_default))


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def print_table(rows: list[dict], columns: list[str], *, title: str | None = None) -> None:
    """A plain aligned table on stdout."""
    if title:
        print(f"\n== {title} ==")
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def plots_dir(path: str | Path | None) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def matplotlib_pyplot():
    """pyplot with a non-interactive backend (benchmarks run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
