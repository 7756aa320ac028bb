"""Per-step data keys (DEKs), wrapped by the store key, in one key object per shard; crypto-shredding.

Key object ``keys/steps-<shard, 8 digits>.bin`` (sealed in an envelope, FORMAT.md §12.4)
holds, for the S steps ``[shard·S, (shard+1)·S)`` of every rows array's shard ``shard``,
one 61-byte entry per step: a state byte (0 no key yet, 1 wrapped key, 2 shredded) and
the wrapped DEK -- nonce(12) | AES-256-GCM(wrap subkey, DEK)(32) | tag(16) -- with
associated data ``"deltastore step key v1\\0" | store_id | key_id | step (u64 LE)``; zeros
for states 0 and 2. Plaintext layout::

    0  8  magic "DSKEYS\\0\\0"
    8  2  version (1)          10 2 zero
    12 4  S (steps per shard)  16 8 shard index
    24 4  entries (= S)        28 4 zero
    32 .. entries, 61 bytes each

Shredding rewrites the object (atomic replace through the seam) with the entries of the
shredded steps set to state 2 and zeros: without the DEK, every copy of those steps'
chunks (old shard versions, backups, bucket versions) is noise. Old versions of the
*key object* must not be kept (no bucket versioning on ``keys/``, no backups of it
beyond the retention window), or the shredded keys survive there.
"""

from __future__ import annotations

import os
import struct
import threading

from ..errors import CorruptStoreError, EncryptionKeyError, InvalidArgumentError, StepErasedError

KEYS_DIR = "keys"
MAGIC = b"DSKEYS\x00\x00"
VERSION = 1
HEADER = struct.Struct("<8sHHIQII")  # 32 bytes
ENTRY = 61
NONE, PRESENT, SHREDDED = 0, 1, 2
_AAD = b"deltastore step key v1\x00"


def key_object(shard: int) -> str:
    return f"{KEYS_DIR}/steps-{shard:08d}.bin"


class KeyTable:
    """The entries of one key object (plaintext), decoded."""

    def __init__(self, shard: int, per_shard: int, entries: bytearray | None = None):
        self.shard, self.S = shard, per_shard
        self.entries = entries if entries is not None else bytearray(ENTRY * per_shard)

    def state(self, step: int) -> int:
        return self.entries[(step - self.shard * self.S) * ENTRY]

    def wrapped(self, step: int) -> bytes:
        i = (step - self.shard * self.S) * ENTRY
        return bytes(self.entries[i + 1 : i + ENTRY])

    def set(self, step: int, state: int, wrapped: bytes = bytes(ENTRY - 1)) -> None:
        i = (step - self.shard * self.S) * ENTRY
        self.entries[i] = state
        self.entries[i + 1 : i + ENTRY] = wrapped

    def to_bytes(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, 0, self.S, self.shard, self.S, 0) + bytes(self.entries)

    @classmethod
    def from_bytes(cls, data: bytes, shard: int, per_shard: int, where: str) -> "KeyTable":
        if len(data) < HEADER.size:
            raise CorruptStoreError(f"{where}: expected a key object of {HEADER.size + ENTRY * per_shard} bytes, got {len(data)}")
        magic, version, z1, s, sh, n, z2 = HEADER.unpack_from(data)
        if magic != MAGIC or version != VERSION or z1 or z2 or s != per_shard or sh != shard or n != per_shard \
                or len(data) != HEADER.size + ENTRY * n:
            raise CorruptStoreError(f"{where}: expected key object version {VERSION} of shard {shard} with {per_shard} entries, "
                                    f"got magic {magic!r}, version {version}, shard {sh}, {n} entries, {len(data)} bytes")
        entries = bytearray(data[HEADER.size :])
        if any(b not in (NONE, PRESENT, SHREDDED) for b in entries[::ENTRY]):
            raise CorruptStoreError(f"{where}: key object holds an unknown entry state")
        return cls(shard, per_shard, entries)


class StepKeys:
    """The data keys of a store's steps, read from and written to its key objects through ``io`` (an EncryptedStoreIO).

    Thread-safe: reader threads share one instance; each key object is read once.
    """

    def __init__(self, io, steps_per_shard: int):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.io, self.S = io, steps_per_shard
        self._wrap = AESGCM(io.store_key.subkey(io.INFO_WRAP))
        self._tables: dict[int, KeyTable] = {}
        self._deks: dict[int, bytes] = {}
        self._aeads: dict[int, object] = {}
        self._lock = threading.Lock()

    def _aad(self, step: int) -> bytes:
        return _AAD + self.io.store_id + bytes.fromhex(self.io.key_id) + struct.pack("<Q", step)

    def table(self, shard: int, *, create: bool = False) -> KeyTable:
        with self._lock:
            t = self._tables.get(shard)
            if t is None:
                key = key_object(shard)
                try:
                    data = self.io.read(key)
                except FileNotFoundError:
                    if not create:
                        raise CorruptStoreError(f"{self.io.where(key)}: expected the key object of steps "
                                                f"[{shard * self.S}, {(shard + 1) * self.S}), it is missing") from None
                    t = KeyTable(shard, self.S)
                else:
                    t = KeyTable.from_bytes(data, shard, self.S, self.io.where(key))
                self._tables[shard] = t
            return t

    def aead(self, step: int):
        """The AES-GCM cipher of a committed step's data key (cached; the cache is bounded)."""
        a = self._aeads.get(step)
        if a is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            if len(self._aeads) >= 8192:  # a forget over many steps: keep memory flat
                self._aeads.clear()
            a = self._aeads[step] = AESGCM(self.dek(step))
        return a

    def dek(self, step: int) -> bytes:
        """The data key of a committed step; StepErasedError if it was shredded."""
        got = self._deks.get(step)
        if got is not None:
            return got
        from cryptography.exceptions import InvalidTag

        shard = step // self.S
        t = self.table(shard)
        state = t.state(step)
        where = self.io.where(key_object(shard))
        if state == SHREDDED:
            raise StepErasedError(f"step {step}: its data key was shredded ({where}); its stored update is erased for good", steps=[step])
        if state != PRESENT:
            raise CorruptStoreError(f"{where}: expected the data key of committed step {step}, the entry is empty", step=step)
        w = t.wrapped(step)
        try:
            dek = self._wrap.decrypt(w[:12], w[12:], self._aad(step))
        except InvalidTag:
            raise CorruptStoreError(f"{where}: the data key of step {step} fails authentication", step=step) from None
        self._deks[step] = dek
        return dek

    def prepare(self, start: int, end: int, *, fsync: bool) -> None:
        """Fresh data keys for steps [start, end), written to their key objects before any chunk of them.

        A step re-recorded after a crash (uncommitted tail) gets a new key. Entries of other
        steps are kept as they are (shredded ones stay shredded).
        """
        for shard in range(start // self.S, (end - 1) // self.S + 1):
            t = self.table(shard, create=True)
            with self._lock:
                for step in range(max(start, shard * self.S), min(end, (shard + 1) * self.S)):
                    dek = os.urandom(32)
                    nonce = os.urandom(12)
                    t.set(step, PRESENT, nonce + self._wrap.encrypt(nonce, dek, self._aad(step)))
                    self._deks[step] = dek
                    self._aeads.pop(step, None)
                data = t.to_bytes()
            self.io.write(key_object(shard), data, fsync=fsync)

    def shred(self, steps, *, fsync: bool = True) -> list[str]:
        """Destroy the data keys of ``steps`` (rewriting their key objects); returns the keys rewritten."""
        by_shard: dict[int, list[int]] = {}
        for s in sorted(set(int(x) for x in steps)):
            if s < 0:
                raise InvalidArgumentError(f"steps: expected non-negative steps, got {s}")
            by_shard.setdefault(s // self.S, []).append(s)
        written = []
        for shard, ss in by_shard.items():
            t = self.table(shard)
            with self._lock:
                for s in ss:
                    if t.state(s) == NONE:
                        raise InvalidArgumentError(f"step {s}: expected a recorded step with a data key, its entry is empty")
                    t.set(s, SHREDDED)
                    self._deks.pop(s, None)
                    self._aeads.pop(s, None)
                data = t.to_bytes()
            # Atomic replace through the seam: a crash leaves the old object or the new one.
            self.io.write(key_object(shard), data, fsync=fsync)
            written.append(key_object(shard))
        return written


def shred_steps(io, steps, *, steps_per_shard: int | None = None, fsync: bool = True) -> list[str]:
    """Crypto-shred ``steps`` of the encrypted store behind ``io`` (an :class:`~deltastore.crypto.EncryptedStoreIO`).

    Rewrites each affected key object without those steps' data keys; afterwards their
    chunks can never be decrypted, in this store or any copy of its shards, provided no old
    version of the key objects is kept. Already-shredded steps stay shredded (idempotent,
    so a purge that is rolled forward after a crash may call it again). The caller holds
    the writer lease (no recording runs at the same time). Returns the key objects rewritten.
    """
    from .io import EncryptedStoreIO, require_key

    if not isinstance(io, EncryptedStoreIO):
        raise EncryptionKeyError(f"{getattr(io, 'url', io)}: shredding needs the store opened with its key (an EncryptedStoreIO)")
    if steps_per_shard is None:
        from ..format import read_manifest

        manifest = read_manifest(io)[0]
        require_key(io, manifest.encryption)
        steps_per_shard = manifest.steps_per_shard
    return io.step_keys(steps_per_shard).shred(steps, fsync=fsync)


def check_step_keys(io, committed: int, steps_per_shard: int) -> list[int]:
    """Verify every key object of the committed steps (authenticated, complete); returns the shredded steps."""
    keys = StepKeys(io, steps_per_shard)
    shredded = []
    for shard in range(-(-committed // steps_per_shard)):
        t = keys.table(shard)
        for step in range(shard * steps_per_shard, min(committed, (shard + 1) * steps_per_shard)):
            if t.state(step) == SHREDDED:
                shredded.append(step)
            else:
                keys.dek(step)
    return shredded
