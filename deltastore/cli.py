"""The ``deltastore`` command: info and verify here; demo, forget, restore as plugins.

Subcommands that need the unlearning layer register themselves through the
``deltastore.commands`` entry-point group, so the engine never imports it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from importlib.metadata import entry_points

from .errors import DeltaStoreError

# Used only when running from a source tree that is not installed (no entry points).
_FALLBACK_PLUGINS = ("unlearning.cli_commands:register_demo", "unlearning.cli_commands:register_forget", "unlearning.cli_commands:register_restore")


def _cmd_info(args) -> int:
    from .read import StoreReader

    r = StoreReader(args.store)
    m = r.manifest
    sizes = r.nbytes_stored()
    info = {
        "path": str(r.root),
        "format_version": m.format_version,
        "committed_steps": r.committed_steps,
        "model_fingerprint": r.model_fingerprint,
        "plan": m.plan.to_json(),
        "value_dtype": m.value_dtype,
        "codec": m.codec,
        "codec_level": m.codec_level,
        "mask": {"seed": m.mask_seed, "pool": m.mask_pool},
        "steps_per_shard": m.steps_per_shard,
        "sample_id_type": m.sample_id_type,
        "params": m.num_params,
        "kept_per_step": m.kept_per_step,
        "tensors": [
            {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "kind": t.kind, "group": m.group_of(t.name).path,
             "selection": m.group_of(t.name).selection.name, "k": m.group_of(t.name).k}
            for t in m.tensors
        ],
        "bytes": sizes,
        "index_rows": r.index.num_rows,
    }
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"store        {info['path']} (format v{m.format_version}, written by {m.writer})")
    print(f"steps        {r.committed_steps} committed, {info['index_rows']} index rows")
    print(f"plan         {m.plan.describe()}, values {m.value_dtype}, codec {m.codec} (level {m.codec_level}) + crc32c")
    print(f"parameters   {m.num_params:,}; kept per step {m.kept_per_step:,} ({m.kept_per_step / max(1, m.num_params):.1%})")
    print(f"fingerprint  {r.model_fingerprint}")
    print(f"bytes        {sizes['total']:,} total, index {sizes['index']:,}")
    for t in info["tensors"]:
        g = m.group_of(t["name"])
        b = sum(v for k, v in sizes.items() if k.startswith(g.path + "/"))
        print(f"  {t['name']:<40} {str(t['shape']):<18} {t['selection']:<9} k={t['k']:<9} {g.path} {b:,} B")
    return 0


def _cmd_verify(args) -> int:
    from .verify import verify_store

    rep = verify_store(args.store, progress=not args.quiet)
    if rep.ok:
        print(f"OK: {rep.committed_steps} committed steps, {rep.chunks_checked} chunk groups and {rep.index_rows} index rows checked")
        return 0
    for p in rep.problems:
        print(f"BAD: {p}", file=sys.stderr)
    print(f"{len(rep.problems)} problem(s) in {rep.path}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deltastore", description="Record pruned training updates; forget data by subtracting them.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="manifest, steps and bytes per array")
    p.add_argument("store")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("verify", help="check every checksum and that index and values agree")
    p.add_argument("store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_verify)
    for register in _plugins():
        register(sub)
    return parser


def _plugins():
    found = list(entry_points(group="deltastore.commands"))
    if found:
        return [ep.load() for ep in sorted(found, key=lambda e: e.name)]
    out = []
    for spec in _FALLBACK_PLUGINS:
        mod, _, attr = spec.partition(":")
        try:
            out.append(getattr(importlib.import_module(mod), attr))
        except (ImportError, AttributeError):
            pass
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DeltaStoreError as exc:
        print(f"deltastore {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
