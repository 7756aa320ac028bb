"""The commit record (FORMAT.md §5): ``commit.json``, replaced atomically after every flush.

``committed_steps`` is the one number that makes steps visible: a step is
committed when its values and index rows are durable and this record covers it.
Since commit version 2 the record also pins the bytes of the manifest (its
sha256), carries the digests of the index objects, and checksums itself, so a
flipped byte anywhere in the record or the manifest is an error, never a
different store.
"""

from __future__ import annotations

import hashlib
import json

from ..errors import CorruptStoreError, StoreNotFoundError

COMMIT_FILE = "commit.json"
INDEX_DIR = "index"
COMMIT_VERSION = 2


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
                 index_digests: dict | None = None, trained: dict | None = None) -> None:
    """Replace the commit record (the last write of every flush).

    ``index_digests``: the JSON digests of every live index object (FORMAT.md §6.2).
    ``trained``: the reference to the trained weights written at close (FORMAT.md §5.1).
    """
    record = {"commit_version": COMMIT_VERSION, "committed_steps": committed_steps, "model_fingerprint": fingerprint,
              "manifest_sha256": manifest_sha256}
    if index_digests is not None:
        record["index_digests"] = dict(sorted(index_digests.items()))
    if trained is not None:
        record["trained"] = dict(trained)
    # Compare-and-swap on the version this writer last read or wrote: on object storage a
    # second writer's commit in between fails this one (CommitConflictError, FORMAT.md §9);
    # locally the writer lock already excludes it and this is an atomic replace.
    io.swap(COMMIT_FILE, json.dumps(with_checksum(record), indent=1, sort_keys=True).encode(), fsync=fsync)


def read_commit(io) -> dict:
    """The commit record, checked: its own checksum (version 2), a sane committed step count.

    Records written before version 2 hold exactly ``committed_steps`` and
    ``model_fingerprint`` and no checksum; they are read as they are. Any other
    record must be version 2 with a valid checksum (so a flip in a key name cannot
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
        if version != COMMIT_VERSION:
            raise CorruptStoreError(f"{where}: expected commit_version 1 or {COMMIT_VERSION}, got {version!r}")
        check_checksum(obj, where)
    return obj


def check_manifest_digest(io, commit: dict, manifest_sha256: str) -> None:
    """CorruptStoreError unless the manifest's bytes are the ones the commit record pins (version 2)."""
    pinned = commit.get("manifest_sha256")
    if "checksum" in commit and pinned != manifest_sha256:
        raise CorruptStoreError(
            f"{io.where('zarr.json')}: expected the manifest {COMMIT_FILE} pins ({str(pinned)[:23]}...), "
            f"got bytes hashing to {manifest_sha256[:23]}... (the manifest was damaged or edited)"
        )
