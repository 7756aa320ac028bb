"""`deltastore audit | lookup`: what was forgotten, and which steps saw which ids.

``audit STORE`` lists the ledger (every request: kind, ids, steps, fingerprints,
time, force reason) and which requests are live; ``--ids REQUEST`` prints a
request's ids, checked against the digest its entry carries. ``lookup STORE
--samples IDS`` shows, per id, the steps that saw it and which of them the live
requests have subtracted.
"""

from __future__ import annotations

import json
import time

from .cli_commands import STORE_HELP
from .cli_files import load_sample_ids


def register_audit(sub) -> None:
    p = sub.add_parser("audit", help="list the store's forget/restore requests and which are live",
                       description="The store's ledger: every forget and restore request in order, with its ids, steps, "
                                   "model fingerprints before and after, time and force reason, and the model the store expects now.")
    p.add_argument("store", help=STORE_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output: every entry in full, plus the live requests")
    p.add_argument("--ids", metavar="REQUEST", default=None,
                   help="print the ids of this forget request, one per line (checked against the digest in its entry)")
    p.set_defaults(func=_audit_cmd)


def register_lookup(sub) -> None:
    p = sub.add_parser("lookup", help="which steps saw which sample ids, and which of those steps are subtracted now",
                       description="For each id: the committed steps whose batch held it, and which of them the live forget "
                                   "requests have subtracted (and by which request).")
    p.add_argument("store", help=STORE_HELP)
    p.add_argument("--samples", required=True, help="ids to look up: UTF-8 text (one per line), .json list, or .npy")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_lookup_cmd)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _state(entries, trained_fp):
    """(live forget entries, the fingerprint the store expects now, in words)."""
    from .ledger import Ledger

    live = Ledger.live_forgets(entries)
    expected = Ledger.expected_fingerprint(entries, trained_fp)
    if expected is not None and expected == trained_fp:
        # after a purge the store's base is the trained model with the purged requests folded in
        words = "the store's base (trained model minus purged requests)" if any(e.kind == "purge" for e in entries) \
            else "the trained model"
    elif entries:
        words = f"the --out of request {entries[-1].request_id}"
    else:
        words = "unknown (recording was not closed)"
    return live, expected, words


def _audit_cmd(args) -> int:
    from deltastore.cli import check_store_path
    from deltastore.read import StoreReader

    from .ledger import Ledger

    reader = StoreReader(check_store_path(args.store))
    ledger = Ledger(reader.io)
    entries = ledger.entries()
    if args.ids is not None:
        for i in ledger.read_ids(Ledger.forget_entry(entries, args.ids, where=ledger.dir)):
            print(i)
        return 0
    live, expected, words = _state(entries, reader.model_fingerprint)
    live_ids = {r.request_id for r in live}
    if args.json:
        print(json.dumps({"store": str(reader.root), "trained_fingerprint": reader.model_fingerprint,
                          "expected_fingerprint": expected, "live": sorted(live_ids),
                          "entries": [e.to_json() for e in entries]}, indent=1))
        return 0
    print(f"store     {reader.root}: {len(entries)} ledger entries, {len(live)} live forget request(s)")
    print(f"model now {expected} ({words})")
    if not entries:
        return 0
    print(f"{'#':>3}  {'time':<19}  {'kind':<7}  {'request':<28}  {'samples':>7}  {'steps':>5}  state")
    for e in entries:
        if e.kind == "forget":
            purged = Ledger.tombstone(entries, e.request_id)
            state = "live" if e.request_id in live_ids else (f"purged ({purged.request_id})" if purged else "restored")
            steps = len(e.all_steps)
        elif e.kind == "purge":  # a tombstone: the request made final, its steps erased from the store
            state = f"tombstone: {e.purges} erased for good"
            steps = len(e.erased_steps)
        else:
            state = f"undoes {e.restores}"
            steps = len(e.steps)
        print(f"{e.sequence:>3}  {_when(e.created):<19}  {e.kind:<7}  {e.request_id:<28}  {e.sample_count:>7}  {steps:>5}  {state}")
        if e.forced:
            print(f"     forced: {e.force_reason or '(no reason: written before reasons were required)'}")
    print(f"(`deltastore audit {args.store} --ids REQUEST` prints a request's ids; --json has every field)")
    return 0


def _lookup_cmd(args) -> int:
    from deltastore.cli import check_store_path
    from deltastore.read import StoreReader

    from .ledger import Ledger

    reader = StoreReader(check_store_path(args.store))
    ids = load_sample_ids(args.samples, reader.manifest.sample_id_type)
    by_step: dict[int, str] = {}
    for r in Ledger.live_forgets(Ledger(reader.io).entries()):
        for s in r.all_steps:
            by_step.setdefault(s, r.request_id)
    rows = []
    unique = ids.unique()
    for i in (unique.tolist() if hasattr(unique, "tolist") else list(unique)):
        steps, unknown = reader.index.lookup([i])
        steps = [int(s) for s in steps]
        rows.append({"id": i, "recorded": not unknown, "steps": steps,
                     "subtracted": {str(s): by_step[s] for s in steps if s in by_step}})
    if args.json:
        print(json.dumps({"store": str(reader.root), "ids": rows}, indent=1))
        return 0
    for row in rows:
        if not row["recorded"]:
            print(f"{row['id']}: never recorded")
            continue
        sub = row["subtracted"]
        print(f"{row['id']}: {len(row['steps'])} steps {_ranges(row['steps'])}; "
              + (f"{len(sub)} subtracted (by {', '.join(sorted(set(sub.values())))})" if sub else "none subtracted"))
    done = sum(1 for r in rows if r["recorded"] and len(r["subtracted"]) == len(r["steps"]))
    print(f"{len(rows)} ids: {sum(r['recorded'] for r in rows)} recorded, {done} with every step subtracted")
    return 0


def _ranges(steps: list[int]) -> str:
    """[0-3, 7, 9-10]: steps as runs, for reading."""
    out: list[str] = []
    for s in steps:
        if out and isinstance(out[-1], list) and out[-1][1] == s - 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return "[" + ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out) + "]"
