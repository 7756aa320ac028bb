"""python -m benchmarks <name> --json FILE [--plots DIR] [--device cpu|cuda] [--quick]

Names: storage, overhead, latency, index, paper, values, gpu, stages, efficacy, exact, integrations, listing, purge, all. Each benchmark module has
``run(*, quick, device, plots, out) -> dict`` returning {"rows": [...], ...};
this entry point adds the machine description and writes the JSON.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from .common import machine, write_json

BENCHMARKS = {
    "storage": "benchmarks.storage",
    "overhead": "benchmarks.overhead",
    "latency": "benchmarks.latency",
    "index": "benchmarks.index",
    "paper": "benchmarks.paper",
    "values": "benchmarks.values",
    "gpu": "benchmarks.gpu",
    "stages": "benchmarks.stages",
    "efficacy": "benchmarks.efficacy",
    "exact": "benchmarks.exact",
    "integrations": "benchmarks.integrations",
    "listing": "benchmarks.listing",
    "purge": "benchmarks.purge",
}
ALL = ("storage", "overhead", "latency", "index")  # `all`: the storage-engine figures; `paper` runs on its own


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(BENCHMARKS) + ["all"])
    parser.add_argument("--json", default=None, help="write figures here (for `all`: one file per benchmark beside it)")
    parser.add_argument("--plots", default=None, help="write PNG plots into this folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes, same code path (<= 60 s each on 2 cores)")
    parser.add_argument("--out", default=None, help="output folder (paper: REPORT.md and results.json)")
    parser.add_argument("--store-url", default=None,
                        help="latency/overhead: also record and forget on object storage (s3://bucket/prefix), local vs URL rows")
    parser.add_argument("--encrypt", action="store_true",
                        help="latency/overhead: also an encrypted store (deltastore.crypto), figures side by side")
    args = parser.parse_args(argv)
    names = ALL if args.name == "all" else (args.name,)
    info = machine()
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        t0 = time.perf_counter()
        if args.store_url and name in ("latency", "overhead"):  # local vs object storage: benchmarks/object_store.py
            module = importlib.import_module("benchmarks.object_store")
            result = module.run(quick=args.quick, device=args.device, plots=args.plots, out=args.out, store_url=args.store_url)
        elif args.encrypt and name in ("latency", "overhead"):
            if name == "latency":  # encrypted vs plain forget latency: benchmarks/crypto.py
                module = importlib.import_module("benchmarks.crypto")
            result = module.run(quick=args.quick, device=args.device, plots=args.plots, out=args.out, encrypt=True)
        else:
            result = module.run(quick=args.quick, device=args.device, plots=args.plots, out=args.out)
        # Every row carries the machine, the versions and the run's mode, so rows stay
        # comparable when they are pulled out of their file.
        for row in result.get("rows", []):
            row.setdefault("machine", info)
            row.setdefault("quick", args.quick)
            row.setdefault("device", args.device)
        result = {"benchmark": name, "quick": args.quick, "device": args.device, "machine": info,
                  "seconds": time.perf_counter() - t0, **result}
        path = args.json
        if path is not None and args.name == "all":
            p = Path(path)
            path = p.with_name(f"{p.stem}-{name}{p.suffix or '.json'}")
        write_json(path, result)
        print(f"[{name}] done in {result['seconds']:.1f} s" + (f", wrote {path}" if path else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
