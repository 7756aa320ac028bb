"""Store keys: 32 random bytes (AES-256), given as bytes, 64 hex characters or a key file.

The manifest names a store's key by its *key id*, never the key: the first 16 bytes of
HKDF-SHA256(key, salt = none, info = "deltastore key id v1"), as 32 hex digits. HKDF is a
one-way PRF of the key, so the id reveals nothing of it, and it is a different function
from the subkeys derived for encryption (their own ``info`` strings): knowing the id
never helps decrypt. Subkeys (FORMAT.md §12.1): "deltastore envelope v1" seals whole
objects, "deltastore step-key wrap v1" wraps the per-step data keys.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidArgumentError

KEY_BYTES = 32
KEY_ID_BYTES = 16
KEY_FILE_ENV = "DELTASTORE_KEY_FILE"  # a file holding 64 hex characters
KEY_ENV = "DELTASTORE_KEY"  # the key itself, 64 hex characters
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")

INFO_KEY_ID = b"deltastore key id v1"
INFO_ENVELOPE = b"deltastore envelope v1"
INFO_WRAP = b"deltastore step-key wrap v1"
INFO_DIGEST = b"deltastore keyed digest v1"


def hkdf(key: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key)


@dataclass(frozen=True)
class StoreKey:
    """A store key and what is derived from it. ``repr`` never shows the key."""

    key: bytes = field(repr=False)

    def __post_init__(self):
        if not isinstance(self.key, bytes) or len(self.key) != KEY_BYTES:
            raise InvalidArgumentError(f"encryption key: expected {KEY_BYTES} bytes, got {len(self.key) if isinstance(self.key, bytes) else type(self.key).__name__}")

    @property
    def key_id(self) -> str:
        return hkdf(self.key, INFO_KEY_ID, KEY_ID_BYTES).hex()

    def subkey(self, info: bytes) -> bytes:
        return hkdf(self.key, info)

    def __repr__(self) -> str:
        return f"StoreKey(key_id={self.key_id!r})"


def parse_key(key) -> StoreKey:
    """A StoreKey from 32 bytes, 64 hex characters, a key file path (``pathlib.Path``) or a StoreKey.

    A ``str`` is read as hex (never as a path: a typo would otherwise read some file);
    pass a ``Path`` for a key file.
    """
    if isinstance(key, StoreKey):
        return key
    if isinstance(key, (bytes, bytearray, memoryview)):
        b = bytes(key)
        if len(b) != KEY_BYTES:
            raise InvalidArgumentError(f"encryption key: expected {KEY_BYTES} bytes (AES-256), got {len(b)} bytes")
        return StoreKey(b)
    if isinstance(key, os.PathLike):
        return read_key_file(key)
    if isinstance(key, str):
        if not _HEX64.match(key.strip()):
            raise InvalidArgumentError(f"encryption key: expected 64 hex characters (32 bytes), got a string of {len(key.strip())} characters "
                                       "that is not that; pass a pathlib.Path for a key file")
        return StoreKey(bytes.fromhex(key.strip()))
    raise InvalidArgumentError(f"encryption key: expected bytes, a hex string or a key file path, got {type(key).__name__}")


def read_key_file(path) -> StoreKey:
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise InvalidArgumentError(f"{path}: expected a key file (64 hex characters), found none") from None
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise InvalidArgumentError(f"{path}: expected a key file of 64 hex characters, could not read it as text ({exc})") from None
    if not _HEX64.match(text):
        raise InvalidArgumentError(f"{path}: expected a key file of 64 hex characters, got {len(text)} characters that are not that")
    return StoreKey(bytes.fromhex(text))


def generate_key_file(path) -> StoreKey:
    """Write a new random key (64 hex characters and a newline) to ``path``, readable by its owner only.

    Refuses to overwrite: losing a key loses every store encrypted with it.
    """
    path = Path(path)
    key = StoreKey(secrets.token_bytes(KEY_BYTES))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidArgumentError(f"{path}: expected a new file for the key, found an existing one; never overwritten") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key.key.hex() + "\n")
    return key


def key_from_env(key_file=None) -> StoreKey | None:
    """The key the CLI uses: ``key_file`` (``--key-file``), else $DELTASTORE_KEY_FILE, else $DELTASTORE_KEY, else None."""
    if key_file is not None:
        return read_key_file(key_file)
    if os.environ.get(KEY_FILE_ENV):
        return read_key_file(os.environ[KEY_FILE_ENV])
    if os.environ.get(KEY_ENV):
        try:
            return parse_key(os.environ[KEY_ENV])
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"${KEY_ENV}: {exc}") from None
    return None
