"""Whole-object envelopes (FORMAT.md §12.3): index parts, sidecars, trained weights, ids files, checkpoints, key objects.

Layout (all sizes in bytes)::

    0   6   magic "DSENC\\0"
    6   1   envelope version (1)
    7   1   zero
    8   16  key id (raw bytes of the manifest's hex key id)
    24  12  nonce (random)
    36  n   AES-256-GCM ciphertext of the n plaintext bytes
    36+n 16 GCM tag

The cipher key is the store key's envelope subkey (keys.INFO_ENVELOPE). The associated
data is ``b"deltastore envelope v1\\0" + header[0:36] + store_id (16 raw bytes) + the
object's store key (UTF-8)``: an envelope moved to another key, another store or
replayed under another name fails authentication.
"""

from __future__ import annotations

import os
import struct

from ..errors import CorruptStoreError, EncryptionKeyError

MAGIC = b"DSENC\x00"
VERSION = 1
NONCE = 12
TAG = 16
HEADER = 36
OVERHEAD = HEADER + TAG
_AAD_TAG = b"deltastore envelope v1\x00"


def _aad(header: bytes, store_id: bytes, key: str) -> bytes:
    return _AAD_TAG + header + store_id + key.encode()


def seal(aead, key_id: bytes, store_id: bytes, key: str, plaintext) -> bytes:
    """The envelope of ``plaintext`` stored under ``key``. ``aead``: an AESGCM of the envelope subkey."""
    header = MAGIC + struct.pack("<BB", VERSION, 0) + key_id + os.urandom(NONCE)
    # No copy of the plaintext before the cipher (it takes any buffer): trained weights are ~45 MB.
    return header + aead.encrypt(header[24:36], memoryview(plaintext), _aad(header, store_id, key))


def open_sealed(aead, key_id: bytes, store_id: bytes, key: str, blob, where: str) -> bytes:
    """The plaintext of an envelope; CorruptStoreError naming ``where`` for damage, EncryptionKeyError for another key."""
    from cryptography.exceptions import InvalidTag

    blob = memoryview(blob).cast("B")  # slices below are views, not copies
    if len(blob) < OVERHEAD or blob[:6] != MAGIC:
        raise CorruptStoreError(f"{where}: expected an encrypted object (magic {MAGIC!r}, at least {OVERHEAD} bytes), "
                                f"got {len(blob)} bytes starting {bytes(blob[:6])!r}")
    version, zero = struct.unpack_from("<BB", blob, 6)
    if version != VERSION or zero != 0:
        raise CorruptStoreError(f"{where}: expected envelope version {VERSION}, got {version} (byte 7 = {zero})")
    if bytes(blob[8:24]) != key_id:
        raise EncryptionKeyError(f"{where}: sealed with key id {blob[8:24].hex()}, but the store's key id is {key_id.hex()} "
                                 "(the object was damaged or belongs to another store)", key_id=key_id.hex())
    try:
        return aead.decrypt(bytes(blob[24:36]), blob[HEADER:], _aad(bytes(blob[:HEADER]), store_id, key))
    except InvalidTag:
        raise CorruptStoreError(f"{where}: encrypted object fails authentication (damaged, truncated, or moved from another "
                                "name or store)") from None
