"""EncryptedStoreIO: the storage seam of an encrypted store.

It wraps the store's own StoreIO and, for objects that hold sample ids, weights or data
keys -- keys under ``index/``, ``trained/``, ``ledger/ids/``, ``checkpoints/`` and
``keys/`` -- seals every write in an envelope and opens every read (FORMAT.md §12.3).
Everything else (Zarr metadata, commit record, ledger entries, shards: their chunks are
encrypted one by one by :mod:`.chunks`) passes through unchanged. Because every reader
and writer of the library already takes a StoreIO in place of a path, passing one of
these is how a key reaches forget, restore, verify, audit, lookup and the CLI.

Ranged reads of a sealed object read it whole and authenticate it first: on object
storage an encrypted sidecar costs one GET of the whole file instead of block ranges.
"""

from __future__ import annotations

import contextlib
import io as _io
import json

from ..errors import CorruptStoreError, EncryptionKeyError, InvalidArgumentError
from ..storage import RangeFile, StoreIO, open_io
from . import envelope
from .keys import INFO_DIGEST, INFO_ENVELOPE, INFO_WRAP, StoreKey, parse_key

ALGORITHM = "aes-256-gcm"
SCHEME_VERSION = 1
SEALED_PREFIXES = ("index/", "trained/", "ledger/ids/", "checkpoints/", "keys/")


def is_sealed(key: str) -> bool:
    """Whether the object ``key`` is stored in an envelope (hidden names -- temporaries, locks -- never are)."""
    return key.startswith(SEALED_PREFIXES) and not key.rsplit("/", 1)[-1].startswith(".")


class _PlainRange(RangeFile):
    def __init__(self, data: bytes):
        self._data, self.size = data, len(data)

    def pread(self, length: int, offset: int) -> bytes:
        return self._data[offset : offset + length]


class EncryptedStoreIO(StoreIO):
    """A StoreIO that seals and opens the sealed objects of an encrypted store with ``key``."""

    INFO_WRAP = INFO_WRAP

    def __init__(self, inner: StoreIO, key):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.inner = inner
        self.store_key: StoreKey = parse_key(key)
        self.key_id = self.store_key.key_id
        self._key_id_raw = bytes.fromhex(self.key_id)
        self._aead = AESGCM(self.store_key.subkey(INFO_ENVELOPE))
        self._store_id: bytes | None = None
        self._manifest: dict | None = None
        self._step_keys = None

    # ---- binding to the store's manifest -------------------------------------------
    def new_store_encryption(self) -> dict:
        """The manifest's ``encryption`` object for a store being created with this key."""
        import os

        self._store_id = os.urandom(16)
        return {"algorithm": ALGORITHM, "scheme_version": SCHEME_VERSION, "key_id": self.key_id, "store_id": self._store_id.hex()}

    def bind(self, encryption: dict | None = None, steps_per_shard: int | None = None) -> dict:
        """Read the manifest's ``encryption`` and check this key is the store's; returns (part of) the manifest JSON.

        EncryptionKeyError naming the key id the store needs when it is another key, and
        when the store is not encrypted at all (a key given for it is a mistake).
        ``encryption``: the manifest a reader already parsed (zarr.json is then not read again).
        """
        if self._manifest is not None:
            return self._manifest
        if encryption is not None:
            self._check(encryption)
            self._manifest = {"encryption": encryption, "steps_per_shard": steps_per_shard}
            return self._manifest
        from ..format.manifest import GROUP_METADATA, MANIFEST_KEY

        try:
            meta = json.loads(self.inner.read(GROUP_METADATA))
            manifest = meta["attributes"][MANIFEST_KEY]
        except FileNotFoundError:
            from ..errors import StoreNotFoundError

            raise StoreNotFoundError(f"{self.url}: expected a deltastore store (zarr.json), found none") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptStoreError(f"{self.inner.where(GROUP_METADATA)}: expected a deltastore manifest ({exc!r})") from None
        self._check(parse_encryption(manifest.get("encryption") if isinstance(manifest, dict) else None, self.inner.where(GROUP_METADATA)))
        self._manifest = manifest
        return manifest

    def _check(self, enc: dict | None) -> None:
        if enc is None:
            raise EncryptionKeyError(f"{self.url}: the store is not encrypted, but a key (id {self.key_id}) was given; open it without one")
        if enc["key_id"] != self.key_id:
            raise EncryptionKeyError(f"{self.url}: the store is encrypted with key id {enc['key_id']}; the key given has id "
                                     f"{self.key_id} (wrong key)", key_id=enc["key_id"])
        self._store_id = bytes.fromhex(enc["store_id"])

    @property
    def store_id(self) -> bytes:
        if self._store_id is None:
            self.bind()
        return self._store_id

    def step_keys(self, steps_per_shard: int):
        """The store's per-step data keys (one shared instance, so each key object is read once)."""
        from .stepkeys import StepKeys

        if self._step_keys is None or self._step_keys.S != steps_per_shard:
            self._step_keys = StepKeys(self, steps_per_shard)
        return self._step_keys

    def chunk_cipher(self, layout):
        """The cipher the shard encoder and decoder use for ``layout``'s chunks (see :mod:`.chunks`)."""
        from .chunks import ChunkCipher

        return ChunkCipher(self, layout)

    def keyed_digest(self, key: str, data) -> str:
        """A digest of an object's plaintext that only the key holder can compute (the ledger's ``ids_sha256``
        in encrypted stores): a plain SHA-256 of a request's ids file would let anyone confirm a guessed id list."""
        import hashlib
        import hmac

        mac = hmac.new(self.store_key.subkey(INFO_DIGEST), key.encode() + b"\x00" + bytes(data), hashlib.sha256)
        return "hmac-sha256:" + mac.hexdigest()

    # ---- sealing -------------------------------------------------------------------
    def _seal(self, key: str, data) -> bytes:
        return envelope.seal(self._aead, self._key_id_raw, self.store_id, key, data)

    def _open(self, key: str, blob) -> bytes:
        return envelope.open_sealed(self._aead, self._key_id_raw, self.store_id, key, blob, self.inner.where(key))

    # ---- identity and counters -----------------------------------------------------
    @property
    def url(self) -> str:
        return self.inner.url

    @property
    def bytes_read(self) -> int:
        return self.inner.bytes_read

    @bytes_read.setter
    def bytes_read(self, value: int) -> None:
        self.inner.bytes_read = value

    def __getattr__(self, name: str):  # backend extras (requests, read_threads, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    # ---- reading ------------------------------------------------------------------
    def read(self, key: str) -> bytes:
        data = self.inner.read(key)
        return self._open(key, data) if is_sealed(key) else data

    def open_range(self, key: str) -> RangeFile:
        if is_sealed(key):
            return _PlainRange(self.read(key))
        return self.inner.open_range(key)

    def map(self, key: str):
        return self.read(key) if is_sealed(key) else self.inner.map(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def is_empty(self) -> bool:
        return self.inner.is_empty()

    def size(self, key: str) -> int:
        """The plaintext size of a sealed object (what digests and records name)."""
        n = self.inner.size(key)
        return max(n - envelope.OVERHEAD, 0) if is_sealed(key) else n

    def list_dir(self, prefix: str = "") -> list[str]:
        return self.inner.list_dir(prefix)

    def list_prefix(self, prefix: str = "") -> list[str]:
        return self.inner.list_prefix(prefix)

    def nbytes(self, prefix: str = "") -> int:
        """Bytes stored (ciphertext, envelopes included)."""
        return self.inner.nbytes(prefix)

    # ---- writing ------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self, key: str, *, fsync: bool = False):
        if not is_sealed(key):
            with self.inner.writer(key, fsync=fsync) as f:
                yield f
            return
        buf = _io.BytesIO()
        yield buf
        self.inner.write(key, self._seal(key, buf.getbuffer()), fsync=fsync)

    def write(self, key: str, data, *, fsync: bool = False) -> None:
        self.inner.write(key, self._seal(key, data) if is_sealed(key) else data, fsync=fsync)

    def swap(self, key: str, data, *, fsync: bool = False) -> None:
        if is_sealed(key):
            raise InvalidArgumentError(f"{key}: compare-and-swap of a sealed object is not supported")
        self.inner.swap(key, data, fsync=fsync)

    def create(self, key: str, data, *, fsync: bool = False) -> bool:
        return self.inner.create(key, self._seal(key, data) if is_sealed(key) else data, fsync=fsync)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def delete_prefix(self, prefix: str) -> None:
        self.inner.delete_prefix(prefix)

    def sync(self, keys) -> None:
        self.inner.sync(keys)

    def lock(self, key: str, timeout: float):
        return self.inner.lock(key, timeout)

    def acquire(self, key: str, holder: str):
        return self.inner.acquire(key, holder)


def parse_encryption(obj, where: str) -> dict | None:
    """The manifest's ``encryption`` object checked (None for an unencrypted store)."""
    import re

    from ..errors import FormatVersionError

    if obj is None:
        return None
    if not isinstance(obj, dict) or set(obj) != {"algorithm", "scheme_version", "key_id", "store_id"}:
        raise CorruptStoreError(f"{where}: expected encryption {{algorithm, scheme_version, key_id, store_id}}, got {str(obj)[:200]!r}")
    if obj["algorithm"] != ALGORITHM or obj["scheme_version"] != SCHEME_VERSION:
        raise FormatVersionError(f"{where}: encryption {obj['algorithm']!r} scheme {obj['scheme_version']!r}; this deltastore reads "
                                 f"{ALGORITHM!r} scheme {SCHEME_VERSION}")
    for name in ("key_id", "store_id"):
        if not isinstance(obj[name], str) or not re.fullmatch(r"[0-9a-f]{32}", obj[name]):
            raise CorruptStoreError(f"{where}: expected encryption.{name} of 32 lowercase hex digits, got {str(obj[name])[:40]!r}")
    return obj


def open_encrypted(location, key, storage_options: dict | None = None) -> EncryptedStoreIO:
    """The seam of the encrypted store at ``location`` opened with ``key`` (bytes, hex, a key file Path).

    Pass the result wherever a store is expected (StoreReader, forget, restore, verify_store, ...).
    The key is checked against the manifest here: EncryptionKeyError for another key.
    """
    io = EncryptedStoreIO(open_io(location, storage_options), key)
    io.bind()
    return io


def require_key(io, encryption: dict | None) -> None:
    """At open, before anything is decoded: EncryptionKeyError unless ``io`` holds the key an encrypted
    store needs (or a key was given to a store that is not encrypted)."""
    if encryption is None:
        if isinstance(io, EncryptedStoreIO):
            io.bind()  # raises: a key for an unencrypted store
        return
    if not isinstance(io, EncryptedStoreIO):
        raise EncryptionKeyError(f"{io.url}: the store is encrypted (key id {encryption['key_id']}); open it with its key: "
                                 "encryption_key=... / deltastore.crypto.open_encrypted(path, key), or on the command line "
                                 "--key-file PATH, $DELTASTORE_KEY_FILE or $DELTASTORE_KEY", key_id=encryption["key_id"])
    io.bind(encryption)
