"""Creating a store, and reopening one to record more steps (the crash tail dropped)."""

from __future__ import annotations

import datetime as _dt
import re
from typing import Sequence

import zarr

from .. import __version__
from ..errors import DeltaStoreError, StoreExistsError
from ..format import (
    INDEX_DIR,
    MANIFEST_KEY,
    Manifest,
    ValueCodec,
    build_groups,
    create_rows_array,
    group_arrays,
    check_manifest_digest,
    read_commit,
    read_manifest,
    read_root,
    remove_consolidated,
    value_codec,
    write_commit,
)
from ..index import STORE_SIDECAR_MIN_ROWS, IndexWriter, digests_to_json
from ..plan import TensorSpec
from .options import RecordOptions


def step_bytes(groups, values: ValueCodec) -> int:
    """Host bytes one buffered step takes (every rows array of every group)."""
    return sum(cols * dt.itemsize for g in groups for cols, dt, _ in group_arrays(g, values).values())


def capacity(groups, values: ValueCodec, buffer_bytes: int) -> int:
    """Steps one half of the double buffer holds under ``buffer_bytes`` (at least 1)."""
    return max(1, buffer_bytes // max(1, 2 * step_bytes(groups, values)))


# The writer rule (FORMAT.md §5): one recording at a time holds this lock from open to close.
WRITER_LOCK = ".writer.lock"
# What creating a store writes before its commit record: a directory holding only these
# (and hidden temporaries) is an interrupted creation, which may be cleared and redone.
_CREATION_NAMES = re.compile(r"^(zarr\.json|g\d{4}|index|\.creating|\..*)$")


def check_creatable(io) -> None:
    """StoreExistsError unless a new store may be created here.

    An empty location is fine. So is what an interrupted creation left -- no commit
    record, a readable deltastore manifest, nothing but the names creation writes --
    which is cleared first: a kill during creation leaves a path that can be used
    again. Anything else is never touched.
    """
    if io.is_empty():
        return
    names = io.list_dir("")
    if "commit.json" not in names and all(_CREATION_NAMES.match(n) for n in names) and _has_our_manifest(io):
        for n in names:
            if n == "zarr.json":
                io.delete(n)
            elif n != WRITER_LOCK:
                io.delete_prefix(n)
        return
    raise StoreExistsError(
        f"{io.url}: expected a new or empty directory for a new store, found existing files; "
        "open it for append (mode='a') or choose another path — deltastore never overwrites"
    )


def _has_our_manifest(io) -> bool:
    try:
        read_manifest(io)
        return True
    except DeltaStoreError:
        return False


def create_store(io, specs: Sequence[TensorSpec], options: RecordOptions) -> tuple[Manifest, str]:
    """Write a new, empty store (manifest, empty arrays, commit record) through ``io``.

    Returns the manifest and the sha256 of its bytes (what commit records pin).
    """
    check_creatable(io)
    groups = build_groups(specs, options.plan)
    # A flush writes one buffer half; when the memory bound holds fewer steps than a
    # shard, shrink the shard to match, so every flush writes whole new shards (the
    # fast path) instead of rewriting part-filled ones through Zarr.
    steps_per_shard = min(options.steps_per_shard, capacity(groups, value_codec(options.value_dtype, options.int8_block), options.buffer_bytes))
    plan = options.plan
    manifest = Manifest(
        tensors=tuple(specs),
        groups=tuple(groups),
        plan=plan,
        mask_seed=plan.seed if plan.seed is not None else options.mask_seed,
        mask_pool=options.mask_pool,
        value_dtype=options.value_dtype,
        int8_block=options.int8_block,
        codec=options.codec,
        codec_level=options.codec_level,
        steps_per_shard=steps_per_shard,
        sample_id_type=options.sample_id_type,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        writer=f"deltastore {__version__}",
        # An EncryptedStoreIO (Recorder(encryption_key=...)) makes an encrypted store (FORMAT.md §12).
        **_encryption_fields(io),
    )
    zstore = io.zarr_store(read_only=False, fsync=options.fsync)
    try:
        root = zarr.open_group(zstore, mode="w-", attributes={MANIFEST_KEY: manifest.to_json()})
        for g in groups:
            sub = root.create_group(g.path, attributes={"tensors": list(g.tensors), "selection": g.selection.name, "k": g.k})
            for name, (cols, dtype, attrs) in manifest.arrays(g).items():
                create_rows_array(sub, name, cols, dtype, manifest.codec, manifest.codec_level, steps_per_shard, attrs,
                                  key_id=manifest.key_id)
    except BaseException:
        zstore.drain()  # Zarr's sibling writes finish before anyone clears this path
        raise
    # The commit record last: its presence is what makes the directory a store. It pins the
    # manifest's bytes as Zarr wrote them.
    digest = read_manifest(io)[1]
    write_commit(io, 0, None, fsync=options.fsync, manifest_sha256=digest, index_digests={})
    return manifest, digest


def _encryption_fields(io) -> dict:
    new = getattr(type(io), "new_store_encryption", None)
    if new is None:
        return {}
    from ..format.manifest import ENCRYPTED_FORMAT_VERSION

    return {"encryption": new(io), "format_version": ENCRYPTED_FORMAT_VERSION}


def open_for_append(io, options: RecordOptions) -> tuple[Manifest, str, int, IndexWriter]:
    """(manifest, its sha256, committed steps, index writer) of an existing store, its uncommitted tail dropped."""
    manifest, root = read_root(io)
    from ..crypto import require_store_key

    require_store_key(io, manifest)
    commit = read_commit(io)
    check_manifest_digest(io, commit, root)
    digest = root.manifest_sha256  # every record this writer writes is version 3 (FORMAT.md §5)
    committed = commit["committed_steps"]
    from ..format.commit import erased_records, pending_erase

    pending = pending_erase(commit)
    if pending is not None:  # its roll-forward (unlearning.purge) must finish before anything else writes
        from ..errors import StoreLockedError

        raise StoreLockedError(f"{io.url}: a purge of request {pending['request']!r} is unfinished; finish it first "
                               f"(`deltastore purge {io.url} --request {pending['request']}`), then record")
    # Plain Zarr must never see stale shapes: the consolidated metadata written at close goes
    # before any array changes (FORMAT.md §2.1); the next close writes it again.
    remove_consolidated(io, digest, fsync=options.fsync)
    index = truncate_uncommitted(io, manifest, commit, digest, fsync=options.fsync)
    # The old fingerprint described the model at close; recording resumes, so it is void.
    write_commit(io, committed, None, fsync=options.fsync, manifest_sha256=digest, index_digests=digests_to_json(index.digests()),
                 erased=erased_records(commit))
    return manifest, digest, committed, index


def open_index(io, manifest: Manifest, commit: dict) -> IndexWriter:
    """The store's index writer, holding the commit record's index digests (None for stores before them)."""
    return IndexWriter(io, manifest.sample_id_type, prefix=INDEX_DIR, sidecar_min_rows=STORE_SIDECAR_MIN_ROWS,
                       digests=commit.get("index_digests"))


def truncate_uncommitted(io, manifest: Manifest, commit: dict, manifest_sha256: str, *, fsync: bool) -> IndexWriter:
    """Drop rows >= committed from every array and the index (the crash tail).

    Returns the index writer, whose digests describe the index that remains.
    """
    committed = commit["committed_steps"]
    group = zarr.open_group(io.zarr_store(read_only=False), mode="r+", use_consolidated=False)
    for g in manifest.groups:
        for name in manifest.arrays(g):
            arr = group[f"{g.path}/{name}"]
            if arr.shape[0] > committed:
                arr.resize((committed, arr.shape[1]))
    index = open_index(io, manifest, commit)

    def record(digests) -> None:  # new parts are recorded before the ones they replace are deleted
        write_commit(io, committed, None, fsync=fsync, manifest_sha256=manifest_sha256, index_digests=digests_to_json(digests),
                     erased=commit.get("erased"))

    index.truncate(committed, fsync=fsync, commit=record)
    return index
