"""The corruption matrix (issue 9, DESIGN invariant 6): every kind of file a store holds,
flipped, truncated or deleted. Each case must give a library error -- with the model
untouched -- or, where the damage cannot change the answer, the very same model. Never a
different model. verify_store never raises, and reports every damage that changes bytes
a reader uses.
"""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import pytest
import torch

from deltastore.errors import DeltaStoreError
from deltastore.plan import PruningPlan
from deltastore.verify import verify_store
from tests.helpers import record
from unlearning.forget import forget

IDS = [3, 17]  # the request forgotten from every damaged copy


def _kind(rel: str) -> str:
    parts = rel.split("/")
    if rel == "zarr.json":
        return "manifest"
    if rel == "commit.json":
        return "commit record"
    if parts[0] == "ledger":
        return "ledger ids" if parts[1] == "ids" else "ledger entry"
    if parts[0] == "trained":
        return "trained weights"
    if parts[0] == "index":
        return "index sidecar" if parts[-1].endswith(".ids") else "index part"
    if parts[-1] == "zarr.json":
        return "group metadata" if len(parts) == 2 else "array metadata"
    return "shard"


DAMAGES = {
    "flip first byte": lambda b: bytes([b[0] ^ 0x01]) + b[1:] if b else None,
    "flip middle byte": lambda b: b[: len(b) // 2] + bytes([b[len(b) // 2] ^ 0x10]) + b[len(b) // 2 + 1 :] if b else None,
    "flip last byte": lambda b: b[:-1] + bytes([b[-1] ^ 0x80]) if b else None,
    "truncate to half": lambda b: b[: len(b) // 2] if len(b) > 1 else None,
    "truncate to nothing": lambda b: b"" if b else None,
    "delete": lambda b: "delete",
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    store = root / "s"
    model, _, _ = record(store, steps=6, batch=8, plan=PruningPlan.layerwise(0.8, 0.4), value_dtype="int8", steps_per_shard=2)
    forget(model, store, [40])  # a ledger entry to damage too
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    expected = {k: v.clone() for k, v in state.items()}
    shutil.copytree(store, root / "probe")
    forget(expected, root / "probe", IDS)
    return store, state, expected


def _files(store: Path) -> list[str]:
    """Every file but locks; shards of two groups only (one pruned weight, one dense vector):
    every shard has the same format, and the matrix stays under a minute."""
    out = []
    for p in sorted(store.rglob("*")):
        rel = str(p.relative_to(store))
        if not p.is_file() or p.name.startswith("."):
            continue
        if _kind(rel) == "shard" and rel.split("/")[0] not in ("g0000", "g0001"):
            continue
        out.append(rel)
    return out


def test_every_file_kind_under_every_damage(source, tmp_path):
    store, state, expected = source
    files = _files(store)
    kinds = collections.Counter(_kind(f) for f in files)
    assert {"manifest", "commit record", "ledger entry", "ledger ids", "trained weights", "index part", "group metadata", "array metadata",
            "shard"} <= set(kinds)
    tally = collections.defaultdict(collections.Counter)
    for rel in files:
        for name, damage in DAMAGES.items():
            raw = (store / rel).read_bytes()
            new = damage(raw)
            if new is None:
                continue
            copy = tmp_path / "c"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(store, copy)
            if new == "delete":
                (copy / rel).unlink()
            else:
                (copy / rel).write_bytes(new)
            kind = _kind(rel)
            report = verify_store(copy)  # never raises
            model = {k: v.clone() for k, v in state.items()}
            try:
                forget(model, copy, IDS)
            except DeltaStoreError:
                assert all(torch.equal(model[k], state[k]) for k in state), (rel, name, "model changed by a failed forget")
                tally[kind]["error"] += 1
            else:
                same = all(torch.equal(model[k], expected[k]) for k in expected)
                assert same, (rel, name, "a damaged store gave a different model")
                tally[kind]["same answer"] += 1
            if not kind.startswith("ledger"):  # the ledger is the unlearning layer's: forget checks it, verify does not
                assert not report.ok or (new != "delete" and _harmless(raw, new)), (rel, name, "verify missed the damage")
            tally[kind]["cases"] += 1
    print({k: dict(v) for k, v in tally.items()})
    assert sum(t["cases"] for t in tally.values()) > 250


def _harmless(raw: bytes, new: bytes) -> bool:
    """Damage a JSON reader cannot see (whitespace that stays whitespace)."""
    import json

    try:
        return json.loads(raw) == json.loads(new)
    except ValueError:
        return False


def test_a_crafted_commit_record_claiming_10_to_the_12_steps_is_refused_before_allocation(source, tmp_path):
    import json

    from deltastore.errors import CorruptStoreError
    from deltastore.format import with_checksum
    from deltastore.read import StoreReader

    store, _, _ = source
    shutil.copytree(store, tmp_path / "c")
    commit = tmp_path / "c" / "commit.json"
    obj = json.loads(commit.read_bytes())
    obj["committed_steps"] = 10**12  # checksums are no defence against a crafted store: validation is
    commit.write_text(json.dumps(with_checksum(obj)))
    with pytest.raises(CorruptStoreError, match="expected at least 1000000000000 rows"):
        StoreReader(tmp_path / "c")
    assert not verify_store(tmp_path / "c").ok
