"""The commit record (FORMAT.md §5): ``commit.json``, replaced atomically after every flush.

``committed_steps`` is the one number that makes steps visible: a step is
committed when its values and index rows are durable and this record covers it.
"""

from __future__ import annotations

import json

from ..errors import CorruptStoreError, StoreNotFoundError

COMMIT_FILE = "commit.json"
INDEX_DIR = "index"


def write_json(io, key: str, obj, *, fsync: bool) -> None:
    """Write JSON atomically through the seam: readers see the old or the new object."""
    io.write(key, json.dumps(obj, indent=1, sort_keys=True).encode(), fsync=fsync)


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


def write_commit(io, committed_steps: int, fingerprint: str | None, *, fsync: bool) -> None:
    write_json(io, COMMIT_FILE, {"committed_steps": committed_steps, "model_fingerprint": fingerprint}, fsync=fsync)


def read_commit(io) -> dict:
    expected = "JSON with a non-negative integer committed_steps"
    obj = read_json(io, COMMIT_FILE, expected)
    try:
        n = obj["committed_steps"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"committed_steps={n!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptStoreError(f"{io.where(COMMIT_FILE)}: expected {expected}, got {exc!r}") from exc
    return obj
