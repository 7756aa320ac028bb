"""The append-only ledger of forget and restore requests, kept inside the store.

``ledger/NNNNNNNN-<request id>.json`` — one object per entry, created if absent
(never overwritten), so an auditor can list the folder and read every request in
order (docs/FORMAT.md §7). ``ledger/.lock`` serialises concurrent requests on one
store. Every byte goes through the store's :class:`~deltastore.storage.StoreIO`:
this module opens no file itself.

A forget request is *live* until a restore entry names it; the model is a function
of the set of live requests (``unlearning.forget``), and a step is *subtracted*
while some live request holds it. ``ledger/ids/<request id>.parquet`` keeps a
forget request's ids; its entry carries the file's sha256 (FORMAT.md §7).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Iterator

from deltastore.errors import CorruptStoreError, InvalidArgumentError, LedgerError
from deltastore.format import check_checksum, sha256_of, with_checksum
from deltastore.storage import StoreIO, open_io

LEDGER_DIR = "ledger"
LOCK_KEY = f"{LEDGER_DIR}/.lock"
IDS_DIR = f"{LEDGER_DIR}/ids"
# Version 2 entries carry ``previous`` (the checksum of the entry before) and ``checksum`` (the
# sha256 of the entry's canonical JSON without it): a flipped byte, an edited entry or a
# removed or reordered one in the middle is an error. Version 1 entries (before) have neither.
LEDGER_VERSION = 2
KINDS = ("forget", "restore", "purge")
_NAME = re.compile(r"^(\d{8})-([A-Za-z0-9_.-]+)\.json$")


@dataclass
class Receipt:
    """What one forget/restore did; also the ledger entry's content."""

    request_id: str
    kind: str  # "forget" | "restore"
    sample_count: int = 0
    unknown_ids: list = field(default_factory=list)
    steps: list[int] = field(default_factory=list)  # steps subtracted (forget) or added back (restore)
    steps_already_subtracted: list[int] = field(default_factory=list)
    bytes_read: int = 0
    seconds: float = 0.0
    read_seconds: float = 0.0
    fingerprint_before: str | None = None
    fingerprint_after: str | None = None
    plan: dict | None = None
    device: str = "cpu"
    restores: str | None = None  # the forget request a restore undoes
    # Recorded buffers (BatchNorm statistics): "keep" leaves them as they are, "subtract"
    # treats them like weights. Entries written before the field existed subtracted them.
    buffers: str = "subtract"
    forced: bool = False
    force_reason: str | None = None  # why the fingerprint check was skipped (required with force)
    # The request's ids (forget): a Parquet file inside the store, ``ledger/ids/<request>.parquet``,
    # and the sha256 of its bytes (this entry's checksum covers the digest).
    ids_file: str | None = None
    ids_sha256: str | None = None
    # "trained": the model was derived from the trained weights kept in the store and the live
    # requests (exact, order-independent); "model": computed from the input model (stores
    # without trained weights; float rounding accumulates).
    derived_from: str = "model"
    # How the forget computed its model (unlearning.methods.api): "amnesiac" (subtraction only)
    # or "amnesiac+repair", and that method's parameters (repair steps, lr, seed, retained count).
    method: str = "amnesiac"
    method_params: dict | None = None
    # forget: how many requested ids the index never saw (the ids themselves are only in the
    # ids file, which a purge deletes; entries written before kept them inline in unknown_ids).
    unknown_count: int = 0
    # purge (a tombstone, FORMAT.md §7.2): the forget request made final, and what the purge
    # erased and wrote. No sample ids.
    purges: str | None = None
    erased_steps: list[int] = field(default_factory=list)
    trained_key: str | None = None  # the new base (trained weights with the erased steps folded in)
    trained_sha256: str | None = None
    deleted: list[str] = field(default_factory=list)  # store keys deleted besides rows and parts (ids file, checkpoints)
    unredacted: list[str] = field(default_factory=list)  # what the purge could not redact (older entries' inline ids)
    # Other requests' ids files that held purged ids, rewritten without them under a new key:
    # {request id: {"key": ..., "sha256": ...}}; the latest tombstone naming a request wins (FORMAT.md §7.2).
    redacted: dict = field(default_factory=dict)
    created: float = 0.0
    sequence: int = -1
    ledger_version: int = LEDGER_VERSION
    previous: str | None = None  # checksum of the entry before this one (None for the first)
    checksum: str | None = None  # sha256 of this entry's canonical JSON without this field

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def all_steps(self) -> list[int]:
        """Every step that saw the request's ids: those it subtracted and those already subtracted."""
        return sorted(set(self.steps) | set(self.steps_already_subtracted))

    @classmethod
    def from_json(cls, obj: dict) -> "Receipt":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in obj.items() if k in known})


def new_request_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def parse_request_id(request_id: str) -> str:
    if not isinstance(request_id, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,80}", request_id):
        raise LedgerError(f"request id: expected 1-80 characters of letters, digits, '_', '.', '-', got {request_id!r}")
    return request_id


def entry_key(sequence: int, request_id: str) -> str:
    """The store key of an entry: ``ledger/NNNNNNNN-<request id>.json``."""
    return f"{LEDGER_DIR}/{sequence:08d}-{request_id}.json"


def ids_key(request_id: str) -> str:
    """The store key of a request's ids: ``ledger/ids/<request id>.parquet``."""
    return f"{IDS_DIR}/{request_id}.parquet"


def redacted_ids_key(request_id: str, purge_id: str) -> str:
    """Where a purge writes a request's ids without the purged ones (FORMAT.md §7.2)."""
    return f"{IDS_DIR}/{parse_request_id(request_id)}.redacted-{parse_request_id(purge_id)}.parquet"


def encode_ids(ids) -> bytes:
    """A one-column Parquet table ``sample_id`` (int64 or string), in request order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = list(ids.values) if hasattr(ids, "values") else list(ids)
    id_type = getattr(ids, "id_type", "string" if values and isinstance(values[0], str) else "int64")
    col = pa.array(values, type=pa.int64() if id_type == "int64" else pa.string())
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"sample_id": col}), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def decode_ids(data: bytes, where: str) -> list:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as exc:  # pyarrow's own error types for bad bytes
        raise CorruptStoreError(f"{where}: expected a Parquet table of sample ids, could not read it ({exc})") from None
    if table.column_names != ["sample_id"] or not (pa.types.is_int64(table.schema[0].type) or pa.types.is_string(table.schema[0].type)):
        raise CorruptStoreError(f"{where}: expected one column sample_id (int64 or string), got {table.schema}")
    return table.column(0).to_pylist()


def _ids_digest(io, key: str, data: bytes) -> str:
    """The ids file's digest: sha256, or in an encrypted store a keyed HMAC (a plain hash of the ids would
    let anyone holding the ledger confirm a guessed list of ids; deltastore.crypto)."""
    keyed = getattr(type(io), "keyed_digest", None)
    return keyed(io, key, data) if keyed is not None else sha256_of(data)


def _parse_timeout(timeout) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or math.isnan(timeout) or timeout < 0:
        raise InvalidArgumentError(f"lock timeout: expected a number of seconds >= 0, got {timeout!r}")
    return float(timeout)


class Ledger:
    """The ledger of one store.

    Parameters
    ----------
    store : StoreIO or path
        The store's I/O (a path gets the local backend, :func:`deltastore.storage.open_io`).

    Methods that read or write (:meth:`entries`, :meth:`append`) take the bytes through
    ``io``; the static methods answer questions about a list of entries already read.
    """

    def __init__(self, store: StoreIO | str | os.PathLike):
        self.io = open_io(store)

    @property
    def dir(self) -> str:
        """Where the entries live, for messages."""
        return self.io.where(LEDGER_DIR)

    def __repr__(self) -> str:
        return f"Ledger({self.dir!r})"

    @contextlib.contextmanager
    def locked(self, timeout: float = 60.0) -> Iterator["Ledger"]:
        """Hold the store's ledger lock (serialises forgets across threads and processes).

        Raises StoreLockedError naming the lock when another holder keeps it past ``timeout`` s.
        """
        with self.io.lock(LOCK_KEY, _parse_timeout(timeout)):
            yield self

    # ---- reading ------------------------------------------------------------------
    def entries(self) -> list[Receipt]:
        """Every entry, in sequence order.

        Raises
        ------
        CorruptStoreError
            An entry that is not a JSON receipt, whose name disagrees with its content,
            or a gap or repeat in the sequence numbers (a missing entry would make a
            subtracted step look live): the message names the file.
        """
        out: list[Receipt] = []
        previous = None
        for name in self.io.list_dir(LEDGER_DIR):
            m = _NAME.match(name)
            if not m:
                continue  # the lock, partial writes of the backend
            key = f"{LEDGER_DIR}/{name}"
            r = self._read_entry(key)
            if r.sequence != int(m.group(1)) or r.request_id != m.group(2):
                raise CorruptStoreError(f"{self.io.where(key)}: entry says sequence {r.sequence}, request {r.request_id!r}; its file name disagrees")
            if r.sequence != len(out):
                raise CorruptStoreError(
                    f"{self.io.where(key)}: expected ledger entry number {len(out)} next, got {r.sequence} (an entry is missing or repeated)"
                )
            if r.ledger_version != 1 and r.previous != previous:
                raise CorruptStoreError(f"{self.io.where(key)}: expected it to follow the entry with checksum {str(previous)[:23]}..., "
                                        f"it names {str(r.previous)[:23]}... (an entry before it was removed, replaced or reordered)")
            previous = r.checksum
            out.append(r)
        return out

    def _read_entry(self, key: str) -> Receipt:
        try:
            obj = json.loads(self.io.read(key))
            if not isinstance(obj, dict):
                raise TypeError(f"a JSON {type(obj).__name__}, not an object")
            r = Receipt.from_json(obj)
        except (ValueError, TypeError, FileNotFoundError, IsADirectoryError) as exc:
            raise CorruptStoreError(f"{self.io.where(key)}: expected a ledger entry (JSON receipt), could not parse it ({exc})") from exc
        if r.ledger_version != 1 or "checksum" in obj:
            if r.ledger_version != LEDGER_VERSION:
                raise CorruptStoreError(f"{self.io.where(key)}: expected ledger_version 1 or {LEDGER_VERSION}, got {r.ledger_version!r}")
            check_checksum(obj, self.io.where(key))
        if r.kind not in KINDS:
            raise CorruptStoreError(f"{self.io.where(key)}: expected kind one of {KINDS}, got {r.kind!r}")
        if not isinstance(r.steps, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in r.steps):
            raise CorruptStoreError(f"{self.io.where(key)}: expected steps as a list of integers, got {r.steps!r}")
        return r

    # ---- questions about entries -----------------------------------------------------
    @staticmethod
    def subtracted_steps(entries: list[Receipt]) -> set[int]:
        """Steps some forget subtracted and no later restore gave back (the entries' own
        ``steps``; :meth:`live_steps` is the rule forget and restore use)."""
        out: set[int] = set()
        for r in entries:
            if r.kind == "forget":
                out.update(r.steps)
            elif r.kind == "restore":  # a purge gives nothing back (its steps stay subtracted)
                out.difference_update(r.steps)
        return out

    @staticmethod
    def live_forgets(entries: list[Receipt]) -> list[Receipt]:
        """Forget entries that no restore entry undoes and no purge made final, in ledger order.

        (A purged request's steps are folded into the store's base, FORMAT.md §5.2: it is
        neither live nor restorable.)"""
        undone = {r.restores for r in entries if r.kind == "restore"} | {r.purges for r in entries if r.kind == "purge"}
        return [r for r in entries if r.kind == "forget" and r.request_id not in undone]

    @staticmethod
    def tombstone(entries: list[Receipt], request_id: str) -> Receipt | None:
        """The purge entry that made the forget request ``request_id`` final, or None."""
        return next((r for r in entries if r.kind == "purge" and r.purges == request_id), None)

    @staticmethod
    def live_steps(entries: list[Receipt]) -> set[int]:
        """Steps of the live forget requests (each request's every step, shared ones included)."""
        out: set[int] = set()
        for r in Ledger.live_forgets(entries):
            out.update(r.all_steps)
        return out

    @staticmethod
    def restored(entries: list[Receipt], request_id: str) -> bool:
        """Whether a restore entry undoes the forget request ``request_id``."""
        return any(r.kind == "restore" and r.restores == request_id for r in entries)

    @staticmethod
    def expected_fingerprint(entries: list[Receipt], store_fingerprint: str | None) -> str | None:
        """The fingerprint the model must have now: after the last entry, else the trained model's."""
        return entries[-1].fingerprint_after if entries else store_fingerprint

    @staticmethod
    def forget_entry(entries: list[Receipt], request_id: str, where: str = "the ledger") -> Receipt:
        """The forget entry of ``request_id``; LedgerError (naming ``where``) if there is none."""
        for r in entries:
            if r.request_id == request_id and r.kind == "forget":
                return r
        raise LedgerError(f"ledger: expected a forget request {request_id!r} in {where}, found none")

    @staticmethod
    def require_new_id(entries: list[Receipt], request_id: str) -> None:
        """LedgerError if an entry already uses ``request_id`` (ids are unique)."""
        if any(r.request_id == request_id for r in entries):
            raise LedgerError(f"request id {request_id!r}: already in the ledger; ids are unique")

    # ---- the ids of a request ------------------------------------------------------------
    def write_ids(self, request_id: str, ids, *, fsync: bool = True) -> tuple[str, str]:
        """Write a request's ids (before its entry); returns (key, sha256) for the entry."""
        data = encode_ids(ids)
        key = ids_key(request_id)
        self.io.write(key, data, fsync=fsync)  # replaced whole: a failed earlier attempt left no entry naming it
        return key, _ids_digest(self.io, key, data)

    @staticmethod
    def redaction(entries: list[Receipt], request_id: str) -> dict | None:
        """The latest tombstone's redacted copy of ``request_id``'s ids file ({key, sha256}), or None."""
        found = None
        for r in entries:
            if r.kind == "purge" and isinstance(r.redacted, dict) and isinstance(r.redacted.get(request_id), dict):
                found = r.redacted[request_id]
        return found

    def read_ids(self, receipt: Receipt, entries: list[Receipt] | None = None) -> list:
        """The ids of a forget entry, checked against the digest the entry carries (or, once a
        purge redacted the file, the digest its tombstone carries; ``entries``: the ledger, read
        if not given).

        LedgerError for entries written before ids were kept; CorruptStoreError naming the
        file when it is missing, damaged or not a one-column Parquet table of ids.
        """
        if receipt.ids_file is None:
            raise LedgerError(f"request {receipt.request_id!r}: its entry keeps no ids (written before deltastore kept them)")
        key = receipt.ids_file
        if key != ids_key(receipt.request_id):
            raise CorruptStoreError(f"{self.io.where(entry_key(receipt.sequence, receipt.request_id))}: expected ids_file "
                                    f"{ids_key(receipt.request_id)!r}, got {key!r}")
        red = self.redaction(self.entries() if entries is None else entries, receipt.request_id)
        key, digest = (red["key"], red["sha256"]) if red else (key, receipt.ids_sha256)
        try:
            data = self.io.read(key)
        except FileNotFoundError:
            raise CorruptStoreError(f"{self.io.where(key)}: expected the ids of request {receipt.request_id!r}, the file is missing") from None
        if _ids_digest(self.io, key, data) != digest:
            raise CorruptStoreError(f"{self.io.where(key)}: expected bytes hashing to {str(digest)[:23]}... "
                                    f"(the digest in {'its purge tombstone' if red else 'the ledger entry'}), they do not "
                                    "(damaged or edited)")
        return decode_ids(data, self.io.where(key))

    def write_redacted_ids(self, request_id: str, ids, purge_id: str, *, fsync: bool = True) -> dict:
        """Write ``request_id``'s ids without purged ones under ``ledger/ids/<request>.redacted-<purge>.parquet``
        (a new key: the file the entry or an earlier tombstone names stays valid until the
        tombstone naming this one is appended). Returns {key, sha256} for the tombstone."""
        key = redacted_ids_key(request_id, purge_id)
        data = encode_ids(ids)
        self.io.write(key, data, fsync=fsync)
        return {"key": key, "sha256": _ids_digest(self.io, key, data)}

    # ---- writing ------------------------------------------------------------------
    def append(self, receipt: Receipt) -> str:
        """Write the next entry (caller holds the lock); never overwrites one. Returns its key.

        Sets ``receipt.sequence``. LedgerError if the request id is used or the entry exists.
        """
        entries = self.entries()
        self.require_new_id(entries, receipt.request_id)
        receipt.sequence = len(entries)
        receipt.ledger_version = LEDGER_VERSION
        receipt.previous = entries[-1].checksum if entries else None
        receipt.checksum = with_checksum(receipt.to_json())["checksum"]
        key = entry_key(receipt.sequence, receipt.request_id)
        if not self.io.create(key, json.dumps(receipt.to_json(), indent=1).encode(), fsync=True):  # durable before the model changes
            raise LedgerError(f"{self.io.where(key)}: expected a new ledger entry, the entry already exists; refusing to overwrite")
        return key
