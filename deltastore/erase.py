"""Erasing steps for good (the engine half of a purge, FORMAT.md §5.2).

A purge replaces the trained weights by a new base with the purged steps folded in,
drops the purged samples' rows from the index, and overwrites the purged steps' rows
with the fill value. The one commit point is the commit record naming the new base,
the new index parts and a ``pending`` purge record; before it the store is exactly as
it was (what was written is unreferenced and deleted by the next run), after it the
rest is idempotent roll-forward (:func:`finish_erase`), which any later purge, forget
or restore runs first. The ledger side (tombstone, ids file, checkpoints) is
``unlearning.purge``'s.

Every byte goes through the storage seam; shards are re-encoded with
:class:`~deltastore.format.shards.ShardEncoder`, so a shard whose rows are all fill
becomes its index alone (FORMAT.md §5).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch

from .errors import InvalidArgumentError
from .format import ShardEncoder, ShardLayout, read_commit, read_manifest
from .format.manifest import read_root
from .format.commit import erased_records, pending_erase, update_commit
from .format.shards import ShardDecoder
from .format.trained import delete_stale_trained, write_trained
from .index import digests_to_json

# Called with (io, pending record) before the erased rows are destroyed (a test hook; crypto-shredding
# of encrypted stores is built in, finish_erase).
BeforeRewrite = Callable[[object, dict], None]


@contextlib.contextmanager
def writer_lease(io, what: str = "purge"):
    """Hold the store's writer lock (no recording may run while steps are erased)."""
    from .record.store import WRITER_LOCK

    lease = io.acquire(WRITER_LOCK, f"deltastore {what} (pid {os.getpid()} on {socket.gethostname()})")
    try:
        yield lease
    finally:
        lease.release()


def _clear_unreferenced(io, manifest, commit, *, fsync: bool):
    """Delete the trained files and index parts the commit record does not name (what a purge
    interrupted before its commit point left, or what a committed one replaced; no reader uses
    either). Returns the store's index writer."""
    from .record.store import open_index

    delete_stale_trained(io, commit["trained"]["key"])
    index = open_index(io, manifest, commit)
    index.collect_garbage(fsync=fsync)
    return index


def commit_erase(io, *, request: str, purge: str, steps: Iterable[int], sample_ids, base: Mapping[str, torch.Tensor],
                 fingerprint: str, extra: dict | None = None, fsync: bool = False) -> dict:
    """Write the new base and index parts, then the commit point. Returns the pending record.

    ``steps``: the steps to erase (not erased before); ``sample_ids``: the ids whose index rows
    go (a SampleIds or a list of the store's type); ``base``: every recorded tensor of the new
    base, whose fingerprint is ``fingerprint``; ``extra``: what the roll-forward needs besides
    (the ledger side's tombstone). The caller holds the writer lock.
    """
    steps = sorted({int(s) for s in steps})
    commit = read_commit(io)
    if pending_erase(commit) is not None:
        raise InvalidArgumentError(f"{io.url}: a purge is pending; finish it before starting another")
    if not commit.get("trained") or not isinstance(commit.get("index_digests"), dict):
        raise InvalidArgumentError(f"{io.url}: expected a store with trained weights and index digests (closed by a current recorder)")
    manifest, root = read_root(io)
    if commit.get("commit_version", 1) < 3 and not root.exact:
        raise InvalidArgumentError(f"{io.url}: expected a root zarr.json holding only the manifest (so the commit record can "
                                   "be upgraded to version 3 before a purge); this one holds more, so it was not written "
                                   "by deltastore")
    committed = commit["committed_steps"]
    if steps and (steps[0] < 0 or steps[-1] >= committed):
        raise InvalidArgumentError(f"steps: expected committed steps in [0, {committed}), got {steps[0]}..{steps[-1]}")
    index = _clear_unreferenced(io, manifest, commit, fsync=fsync)  # what an interrupted purge left before its commit point
    ref = write_trained(io, base, fsync=fsync)
    wanted = set(steps)
    parts = [k for k, d in commit["index_digests"].items() if k.endswith(".parquet") and _part_holds(k, wanted)]
    index.drop_ids(sample_ids, parts, fsync=fsync)
    record = {"request": request, "purge": purge, "state": "pending", "steps": steps, **(extra or {})}
    # A purged store's record is version 3 (re-pinning the manifest by its JSON, FORMAT.md §5):
    # deltastore from before version 3 refuses it, instead of ignoring ``erased`` and deriving
    # models from the new base with the erased steps still counted.
    pin = {"manifest_sha256": root.manifest_sha256} if commit.get("commit_version", 1) < 3 else {}
    # The commit point: readers see the old store (old base, old parts, no record) or the new one.
    update_commit(io, commit, {"model_fingerprint": fingerprint, "trained": ref,
                               "index_digests": digests_to_json(index.digests()),
                               "erased": erased_records(commit) + [record], **pin}, fsync=fsync)
    return record


def _part_holds(key: str, steps: set[int]) -> bool:
    from .index.parts import parse_part_name

    rng = parse_part_name(key.rpartition("/")[2])
    return rng is not None and any(rng[0] <= s < rng[1] for s in steps)


def rewrite_shards(io, manifest, committed: int, steps: Iterable[int], *, fsync: bool = False) -> int:
    """Overwrite the rows of ``steps`` in every array with the fill value; returns bytes written.

    Each shard holding such a row is read whole (checked through the decoder), the rows
    zeroed and the shard re-encoded and replaced atomically: idempotent.
    """
    per = manifest.steps_per_shard
    by_shard: dict[int, list[int]] = {}
    for s in sorted({int(s) for s in steps}):
        by_shard.setdefault(s // per, []).append(s)
    written = 0
    for g in manifest.groups:
        for name, (cols, dtype, _) in manifest.arrays(g).items():
            lay = ShardLayout.of(f"{g.path}/{name}", cols, dtype, manifest.codec, manifest.codec_level, per,
                                 encrypted=manifest.encryption is not None)  # encrypted stores: deltastore.crypto
            dec = ShardDecoder(io, lay, rows=committed, require_shards=True)
            enc = ShardEncoder(io, lay)
            for shard, rows in by_shard.items():
                lo, hi = shard * per, min((shard + 1) * per, committed)
                block = dec.read(np.arange(lo, hi, dtype=np.int64))
                block[np.asarray(rows, dtype=np.int64) - lo] = 0
                for c0 in range(0, cols, lay.shard[1]):
                    blob = enc.encode_shard(np.ascontiguousarray(block[:, c0 : c0 + lay.shard[1]]), shard, c0 // lay.shard[1])
                    io.write(lay.key(shard, c0 // lay.shard[1]), blob, fsync=fsync)
                    written += len(blob)
    return written


def finish_erase(io, *, before_rewrite: BeforeRewrite | None = None, fsync: bool = False) -> dict | None:
    """Roll a pending purge forward, engine side: rewrite the erased rows, delete the old base
    and the replaced index parts. Idempotent. Returns the pending record (None: nothing pending).
    Does not mark it done: the ledger side appends its tombstone first (:func:`mark_erase_done`)."""
    commit = read_commit(io)
    record = pending_erase(commit)
    if record is None:
        return None
    manifest, _ = read_manifest(io)
    if before_rewrite is not None:
        before_rewrite(io, record)
    record = dict(record)
    if manifest.encryption is not None:
        # Crypto-shredding (FORMAT.md §12.4): every step has its own data key, so destroying the
        # erased steps' keys makes their chunks unreadable here and in every copy of the shards;
        # no shard needs rewriting. Idempotent: a shredded key stays shredded.
        from .crypto.stepkeys import shred_steps

        keys = shred_steps(io, record["steps"], steps_per_shard=manifest.steps_per_shard, fsync=fsync)
        record["bytes_rewritten"] = sum(io.size(k) for k in keys)
    else:
        record["bytes_rewritten"] = rewrite_shards(io, manifest, commit["committed_steps"], record["steps"], fsync=fsync)
    _clear_unreferenced(io, manifest, commit, fsync=fsync)  # the old base, the replaced index parts
    return record


def mark_erase_done(io, purge: str, *, keep: Iterable[str] = (), fsync: bool = False) -> None:
    """The last write of a purge: its record becomes ``done`` and keeps only
    ``request``, ``purge``, ``state``, ``steps`` (and the keys in ``keep``)."""
    commit = read_commit(io)
    out = []
    for r in erased_records(commit):
        if r["purge"] == purge and r["state"] == "pending":
            r = {k: v for k, v in r.items() if k in ("request", "purge", "steps") or k in set(keep)}
            r["state"] = "done"
        out.append(r)
    update_commit(io, commit, {"erased": out}, fsync=fsync)


def check_erased(reader) -> tuple[list[tuple[int, str, str]], list[str]]:
    """(problems, notes) for verify: every row of a done purge's steps must decode to the fill
    value; a pending purge is a note naming the command that finishes it."""
    problems, notes = [], []
    recs = erased_records(reader.commit, reader.io.where("commit.json"))
    done = sorted({s for r in recs if r["state"] == "done" for s in r["steps"] if s < reader.committed_steps})
    for r in recs:
        if r["state"] == "pending":
            notes.append(f"a purge of request {r['request']!r} is pending (its commit point passed; the erased rows may still "
                         f"hold data): finish it with `deltastore purge {reader.root} --request {r['request']}`")
    if not done:
        return problems, notes
    if reader.manifest.encryption is not None:  # erased by crypto-shredding: their data keys must be gone
        from .crypto.stepkeys import check_step_keys

        shredded = set(check_step_keys(reader.io, reader.committed_steps, reader.manifest.steps_per_shard))
        for s in done:
            if s not in shredded:
                problems.append((s, None, "a purged step's data key is still present (expected it shredded)"))
        return problems, notes
    for g in reader.manifest.groups:
        for name, dec in reader._decoders[g.id].items():
            for batch in reader.shard_batches(done):
                try:
                    rows = dec.read(np.asarray(batch, dtype=np.int64))
                except Exception as exc:  # damage is reported by verify's own read of every chunk
                    problems.append((batch[0], g.label, f"erased rows unreadable ({exc})"))
                    continue
                for s, row in zip(batch, rows):
                    if row.any():
                        problems.append((s, g.label, f"{name}: a purged step's row holds data (expected only the fill value)"))
    return problems, notes
