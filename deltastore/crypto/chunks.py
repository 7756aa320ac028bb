"""Chunk encryption inside shards (FORMAT.md §12.2), and the marker codec that keeps plain Zarr from misreading.

An encrypted store's inner chunks hold one step each (r = 1). A chunk is stored as
``nonce(12) | AES-256-GCM(DEK_step, compressed bytes) | tag(16) | crc32c(4)``: the crc32c
covers the encrypted bytes, so damage is found by the crc first, as in every store. The
associated data is ``b"deltastore chunk v1\\0" | store_id(16) | key_id(16) | step (u64 LE) |
column chunk (u64 LE) | array path (UTF-8)``, so a chunk moved to another step, column,
array or store, or replayed, fails authentication instead of decoding to other values.

Each array's ``zarr.json`` lists ``{"name": "deltastore.aes-256-gcm", ...}`` between the
compressor and ``crc32c``. Plain Zarr does not know it and refuses to open the array;
inside this library it is registered with Zarr as a marker whose encode and decode raise,
so Zarr may resize arrays (metadata only) but never reads or writes their chunks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import CorruptStoreError

CODEC_NAME = "deltastore.aes-256-gcm"
NONCE, TAG = 12, 16
OVERHEAD = NONCE + TAG
_AAD = b"deltastore chunk v1\x00"


def codec_json(key_id: str) -> dict:
    return {"name": CODEC_NAME, "configuration": {"key_id": key_id, "scheme_version": 1}}


class ChunkCipher:
    """Encrypts and decrypts the inner chunks of one rows array (``layout``) with per-step data keys."""

    overhead = OVERHEAD

    def __init__(self, io, layout):
        from ..errors import InvalidArgumentError

        if layout.chunk[0] != 1:
            raise InvalidArgumentError(f"{layout.path}: an encrypted array needs one step per inner chunk, the layout has {layout.chunk[0]}")
        self.keys = io.step_keys(layout.shard[0])
        self.path = layout.path
        self.where = io.where
        self._prefix = _AAD + io.store_id + bytes.fromhex(io.key_id)
        self._aead = self.keys.aead  # one cipher per step, shared by every array of the store

    def check_step(self, step: int) -> None:
        """StepErasedError for a shredded step even where its chunk is absent (all zeros): a reader never
        answers zeros for an erased step."""
        self.keys.dek(step)

    def _aad(self, step: int, col: int) -> bytes:
        return self._prefix + struct.pack("<QQ", step, col) + self.path.encode()

    def encrypt(self, data: bytes, step: int, col: int) -> bytes:
        import os

        nonce = os.urandom(NONCE)
        return nonce + self._aead(step).encrypt(nonce, memoryview(data), self._aad(step, col))

    def decrypt(self, data, step: int, col: int, key: str) -> bytes:
        from cryptography.exceptions import InvalidTag

        data = memoryview(data).cast("B")  # the decoder's view of the shard bytes: no copy
        if len(data) < OVERHEAD:
            raise CorruptStoreError(f"{self.where(key)}: encrypted chunk of step {step} is {len(data)} bytes, shorter than nonce and tag",
                                    step=step, tensor=self.path)
        try:
            return self._aead(step).decrypt(bytes(data[:NONCE]), data[NONCE:], self._aad(step, col))
        except InvalidTag:
            raise CorruptStoreError(f"{self.where(key)}: the chunk of step {step} (column chunk {col}) fails authentication "
                                    "(damaged, or moved from another step, array or store)", step=step, tensor=self.path) from None


def _register_marker_codec() -> None:
    from zarr.abc.codec import BytesBytesCodec
    from zarr.registry import register_codec

    @dataclass(frozen=True)
    class DeltastoreAesGcmMarker(BytesBytesCodec):
        """Stands for deltastore's per-chunk AES-GCM in Zarr metadata; never encodes or decodes."""

        key_id: str = ""
        scheme_version: int = 1
        is_fixed_size = False

        @classmethod
        def from_dict(cls, data):
            conf = data.get("configuration") or {}
            return cls(key_id=str(conf.get("key_id", "")), scheme_version=int(conf.get("scheme_version", 1)))

        def to_dict(self):
            return codec_json(self.key_id)

        def _refuse(self):
            raise CorruptStoreError("chunks of an encrypted deltastore array are read and written only by deltastore "
                                    "(StoreReader with the store's key), not through Zarr")

        async def _decode_single(self, chunk_bytes, chunk_spec):
            self._refuse()

        async def _encode_single(self, chunk_bytes, chunk_spec):
            self._refuse()

        def compute_encoded_size(self, input_byte_length, chunk_spec):
            return input_byte_length + OVERHEAD

    register_codec(CODEC_NAME, DeltastoreAesGcmMarker)
    global MarkerCodec
    MarkerCodec = DeltastoreAesGcmMarker


MarkerCodec = None


def marker_codec(key_id: str):
    """The Zarr codec object for an encrypted array's metadata (registers it on first use)."""
    if MarkerCodec is None:
        _register_marker_codec()
    return MarkerCodec(key_id=key_id)


def ensure_registered() -> None:
    if MarkerCodec is None:
        _register_marker_codec()
