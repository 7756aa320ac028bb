"""Encryption at rest and crypto-shredding (optional: ``pip install deltastore[crypto]``).

A store recorded with ``Recorder(..., encryption_key=...)`` holds no sample data in the
clear: every inner chunk of every rows array is AES-256-GCM encrypted under a random data
key of its step (r = 1 step per chunk), the data keys are wrapped by the store key in small
key objects (``keys/steps-<shard>.bin``), and whole objects that hold sample ids or
weights (index parts and sidecars, trained weights, ledger ids files, checkpoints) are
sealed in envelopes. Shredding a step deletes its wrapped data key: its chunks can never
be decrypted again, in any copy of the shards. Format: docs/FORMAT.md §12.

Modules: :mod:`.keys` (store keys, key id, keygen), :mod:`.envelope` (whole-object
envelopes), :mod:`.io` (:class:`EncryptedStoreIO`, the seam that seals and opens them),
:mod:`.stepkeys` (key objects, :func:`shred_steps`), :mod:`.chunks` (chunk encryption in
shards, the marker codec plain Zarr refuses).
"""

from __future__ import annotations

from .keys import KEY_ENV, KEY_FILE_ENV, StoreKey, generate_key_file, key_from_env, parse_key

__all__ = ["StoreKey", "parse_key", "generate_key_file", "key_from_env", "KEY_ENV", "KEY_FILE_ENV",
           "EncryptedStoreIO", "open_encrypted", "shred_steps", "require_key", "require_store_key"]


def require_store_key(io, manifest) -> None:
    """At open, before anything is read past the manifest: EncryptionKeyError unless ``io`` holds the key the
    store needs (an EncryptedStoreIO with its key for an encrypted store; none for a plain store). Registers the
    marker codec of encrypted arrays with Zarr. Costs nothing for plain stores opened without a key."""
    if manifest.encryption is None and not hasattr(type(io), "new_store_encryption"):
        return
    from .chunks import ensure_registered
    from .io import require_key

    require_key(io, manifest.encryption)
    ensure_registered()


def refuse_plain_writes(io) -> None:
    """EncryptionKeyError when ``io`` is a plain seam on an encrypted store: what it writes (a checkpoint)
    would land in the clear. Nothing happens for a plain store, or where no store exists yet."""
    if hasattr(type(io), "new_store_encryption"):
        return
    from ..errors import DeltaStoreError
    from ..format import read_manifest

    try:
        manifest = read_manifest(io)[0]
    except DeltaStoreError:
        return
    require_store_key(io, manifest)


def __getattr__(name: str):
    # cryptography loads only when an encrypted store is used.
    if name in ("EncryptedStoreIO", "open_encrypted", "require_key"):
        from . import io

        return getattr(io, name)
    if name == "shred_steps":
        from .stepkeys import shred_steps

        return shred_steps
    raise AttributeError(f"module 'deltastore.crypto' has no attribute {name!r}")
