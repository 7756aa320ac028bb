"""The append-only ledger of forget and restore requests, kept inside the store.

``STORE/ledger/NNNNNNNN-<request id>.json`` — one file per entry, created
exclusively (never overwritten) and written atomically, so an auditor can list
the folder and read every request in order. ``STORE/ledger/.lock`` serialises
concurrent requests on one store (``fcntl.flock``; local file systems).

A step is *subtracted* when some forget entry subtracted it and no later
restore entry gave it back; a subtracted step is never subtracted again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from deltastore.errors import CorruptStoreError, LedgerError, StoreLockedError

LEDGER_DIR = "ledger"
LEDGER_VERSION = 1
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
    created: float = 0.0
    sequence: int = -1
    ledger_version: int = LEDGER_VERSION

    def to_json(self) -> dict:
        return asdict(self)

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


class Ledger:
    def __init__(self, store_root: str | os.PathLike):
        self.dir = Path(store_root) / LEDGER_DIR

    @contextlib.contextmanager
    def locked(self, timeout: float = 60.0) -> Iterator["Ledger"]:
        """Hold the store's ledger lock (serialises forgets across threads and processes)."""
        self.dir.mkdir(exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreLockedError(f"{self.dir}: expected to take the ledger lock within {timeout} s, another request still holds it") from None
                    time.sleep(0.01)
            yield self
        finally:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def entries(self) -> list[Receipt]:
        if not self.dir.exists():
            return []
        out = []
        for p in sorted(self.dir.iterdir()):
            m = _NAME.match(p.name)
            if not m:
                continue
            try:
                r = Receipt.from_json(json.loads(p.read_bytes()))
            except (ValueError, TypeError) as exc:
                raise CorruptStoreError(f"{p}: expected a ledger entry (JSON receipt), could not parse it ({exc})") from exc
            if r.sequence != int(m.group(1)) or r.request_id != m.group(2):
                raise CorruptStoreError(f"{p}: entry says sequence {r.sequence}, request {r.request_id!r}; its file name disagrees")
            out.append(r)
        return out

    def get(self, request_id: str) -> Receipt:
        for r in self.entries():
            if r.request_id == request_id and r.kind == "forget":
                return r
        raise LedgerError(f"ledger: expected a forget request with id {request_id!r}, found none in {self.dir}")

    @staticmethod
    def subtracted_steps(entries: list[Receipt]) -> set[int]:
        out: set[int] = set()
        for r in entries:
            if r.kind == "forget":
                out.update(r.steps)
            else:
                out.difference_update(r.steps)
        return out

    @staticmethod
    def restored(entries: list[Receipt], request_id: str) -> bool:
        return any(r.kind == "restore" and r.restores == request_id for r in entries)

    @staticmethod
    def expected_fingerprint(entries: list[Receipt], store_fingerprint: str | None) -> str | None:
        """The fingerprint the model must have now: after the last entry, else the trained model's."""
        return entries[-1].fingerprint_after if entries else store_fingerprint

    def append(self, receipt: Receipt) -> Path:
        """Write the next entry (caller holds the lock). Never overwrites an entry."""
        self.dir.mkdir(exist_ok=True)
        seq = len(self.entries())
        receipt.sequence = seq
        if any(r.request_id == receipt.request_id for r in self.entries()):
            raise LedgerError(f"ledger: request id {receipt.request_id!r} is already used; ids are unique")
        path = self.dir / f"{seq:08d}-{receipt.request_id}.json"
        tmp = self.dir / f".{path.name}.{uuid.uuid4().hex}.partial"
        tmp.write_bytes(json.dumps(receipt.to_json(), indent=1).encode())
        try:
            os.link(tmp, path)  # fails if the name exists: append-only
        except FileExistsError:
            raise LedgerError(f"ledger: entry {path.name} already exists; refusing to overwrite") from None
        finally:
            tmp.unlink(missing_ok=True)
        return path
