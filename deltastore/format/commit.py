"""The commit record (FORMAT.md §5): ``commit.json``, replaced atomically after every flush.

``committed_steps`` is the one number that makes steps visible: a step is
committed when its values and index rows are durable and this record covers it.
Since commit version 2 the record also pins the manifest (version 2: the sha256 of
the root zarr.json's bytes; version 3: of the manifest attribute's canonical JSON, so
the root may carry Zarr's consolidated metadata, FORMAT.md §2.1), carries the digests
of the index objects, and checksums itself, so a flipped byte anywhere in the record
or the manifest is an error, never a different store.
"""

from __future__ import annotations

import hashlib
import json

from ..errors import CorruptStoreError, StoreNotFoundError

COMMIT_FILE = "commit.json"
INDEX_DIR = "index"
COMMIT_VERSION = 3  # 3: manifest_sha256 pins the manifest's canonical JSON, not the root file's bytes
CHECKSUMMED_VERSIONS = (2, 3)


def read_json(io, key: str, expected: str):
    """A JSON document of the store: StoreNotFoundError if absent, CorruptStoreError naming the file if not JSON."""
    try:
        raw = io.read(key)
    except FileNotFoundError:
        raise StoreNotFoundError(f"{io.url}: expected a deltastore store with {key}, found none") from None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise CorruptStoreError(f"{io.where(key)}: expected {expected}, could not parse it ({exc})") from exc


def canonical(obj) -> bytes:
    """The bytes a checksum covers: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def with_checksum(obj: dict) -> dict:
    """``obj`` plus ``checksum``: the sha256 of its canonical JSON without that field."""
    body = {k: v for k, v in obj.items() if k != "checksum"}
    return {**body, "checksum": sha256_of(canonical(body))}


def check_checksum(obj: dict, where: str) -> None:
    """CorruptStoreError unless ``obj["checksum"]`` covers the rest of ``obj``."""
    if not isinstance(obj, dict) or obj.get("checksum") != with_checksum(obj)["checksum"]:
        got = obj.get("checksum") if isinstance(obj, dict) else None
        raise CorruptStoreError(f"{where}: expected its content to match its checksum {str(got)[:80]!r}; it does not (damaged or edited)")


def write_json(io, key: str, obj, *, fsync: bool) -> None:
    """Write JSON atomically through the seam: readers see the old or the new object."""
    io.write(key, json.dumps(obj, indent=1, sort_keys=True).encode(), fsync=fsync)


def write_commit(io, committed_steps: int, fingerprint: str | None, *, fsync: bool, manifest_sha256: str,
                 index_digests: dict | None = None, trained: dict | None = None, erased: list | None = None) -> None:
    """Replace the commit record (the last write of every flush).

    ``index_digests``: the JSON digests of every live index object (FORMAT.md §6.2).
    ``trained``: the reference to the trained weights written at close (FORMAT.md §5.1).
    ``erased``: the purge records (FORMAT.md §5.2); every writer carries them forward unchanged.
    """
    record = {"commit_version": COMMIT_VERSION, "committed_steps": committed_steps, "model_fingerprint": fingerprint,
              "manifest_sha256": manifest_sha256}
    if index_digests is not None:
        record["index_digests"] = dict(sorted(index_digests.items()))
    if trained is not None:
        record["trained"] = dict(trained)
    if erased:
        record["erased"] = [dict(e) for e in erased]
    # Compare-and-swap on the version this writer last read or wrote: on object storage a
    # second writer's commit in between fails this one (CommitConflictError, FORMAT.md §9);
    # locally the writer lock already excludes it and this is an atomic replace.
    io.swap(COMMIT_FILE, json.dumps(with_checksum(record), indent=1, sort_keys=True).encode(), fsync=fsync)


def update_commit(io, commit: dict, changes: dict, *, fsync: bool) -> dict:
    """Replace the commit record with ``commit`` (as read) plus ``changes`` (a None value removes
    the key), by compare-and-swap; keys this module does not know are carried over. Returns it."""
    record = {k: v for k, v in commit.items() if k != "checksum"}
    for k, v in changes.items():
        if v is None:
            record.pop(k, None)
        else:
            record[k] = v
    # The record's own version stays (at least 2, for the checksum): the manifest pin carried
    # over was made by that version's rule (2: the root's bytes, 3: the manifest's JSON).
    record["commit_version"] = commit.get("commit_version", 2) if "manifest_sha256" not in changes else COMMIT_VERSION
    record = with_checksum(record)
    io.swap(COMMIT_FILE, json.dumps(record, indent=1, sort_keys=True).encode(), fsync=fsync)
    return record


def read_commit(io) -> dict:
    """The commit record, checked: its own checksum (versions 2 and 3), a sane committed step count.

    Records written before version 2 hold exactly ``committed_steps`` and
    ``model_fingerprint`` and no checksum; they are read as they are. Any other
    record must be version 2 or 3 with a valid checksum (so a flip in a key name cannot
    pass a new record off as an old one).
    """
    expected = "JSON with a non-negative integer committed_steps"
    where = io.where(COMMIT_FILE)
    obj = read_json(io, COMMIT_FILE, expected)
    try:
        n = obj["committed_steps"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"committed_steps={n!r}")
        version = obj.get("commit_version", 1)
        fp = obj.get("model_fingerprint")
        if fp is not None and not isinstance(fp, str):
            raise ValueError(f"model_fingerprint={fp!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptStoreError(f"{where}: expected {expected}, got {exc!r}") from exc
    if set(obj) - {"committed_steps", "model_fingerprint"}:
        if version not in CHECKSUMMED_VERSIONS:
            raise CorruptStoreError(f"{where}: expected commit_version 1, 2 or 3, got {version!r}")
        check_checksum(obj, where)
    return obj


def check_manifest_digest(io, commit: dict, root) -> None:
    """CorruptStoreError unless the root ``zarr.json`` holds the manifest the commit record pins.

    ``root``: the :class:`~deltastore.format.manifest.RootDigests` of the file as read.
    Version 2 pins the file's bytes; version 3 the canonical JSON of its manifest
    attribute, and requires the rest of the file, consolidated metadata aside (which no
    reader uses, FORMAT.md §2.1), to be exactly the group zarr writes. Version 1 pins nothing.
    """
    if "checksum" not in commit:
        return
    pinned = commit.get("manifest_sha256")
    v3 = commit.get("commit_version") == 3
    got = root.manifest_sha256 if v3 else root.file_sha256
    if pinned != got:
        raise CorruptStoreError(
            f"{io.where('zarr.json')}: expected the manifest {COMMIT_FILE} pins ({str(pinned)[:23]}...), "
            f"got {'a manifest' if v3 else 'bytes'} hashing to {got[:23]}... (the manifest was damaged or edited)"
        )
    if v3 and not root.exact:
        raise CorruptStoreError(f"{io.where('zarr.json')}: expected a Zarr group whose only attribute is the manifest "
                                "(and, optionally, consolidated metadata); found other content (damaged or edited)")


# ---- purges (FORMAT.md §5.2) ---------------------------------------------------------------
def erased_records(commit: dict, where: str = COMMIT_FILE) -> list[dict]:
    """The commit record's purge records, checked for shape (the record's checksum covers them)."""
    recs = commit.get("erased") if isinstance(commit, dict) else None
    if recs is None:
        return []
    ok = isinstance(recs, list) and all(
        isinstance(r, dict) and isinstance(r.get("request"), str) and isinstance(r.get("purge"), str)
        and r.get("state") in ("pending", "done") and isinstance(r.get("steps"), list)
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in r["steps"])
        for r in recs)
    if not ok:
        raise CorruptStoreError(f"{where}: expected erased = a list of {{request, purge, state: pending|done, steps}}, got {str(recs)[:200]!r}")
    return recs


def erased_steps(commit: dict) -> set[int]:
    """Every step a purge erased (pending ones included: from their commit point on they are gone)."""
    return {int(s) for r in erased_records(commit) for s in r["steps"]}


def pending_erase(commit: dict) -> dict | None:
    """The purge whose commit point passed but whose roll-forward has not finished, or None."""
    return next((r for r in erased_records(commit) if r["state"] == "pending"), None)
