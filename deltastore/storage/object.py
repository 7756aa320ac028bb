"""ObjectStoreIO: a store under an ``s3://bucket/prefix`` URL, through obstore.

Object storage has no rename, no fsync and no flock; what the local backend gets
from those, this one gets from conditional writes (FORMAT.md §9):

- every PUT replaces a whole object atomically (S3's own guarantee), so
  :meth:`writer` buffers the object and PUTs it when the block ends;
- :meth:`create` is ``PUT If-None-Match: *`` (create-if-absent);
- :meth:`swap` (the commit record) is ``PUT If-Match: <ETag>`` of the version this
  StoreIO last read or wrote, or ``If-None-Match: *`` when it has seen none: a
  second writer's commit in between is a :class:`CommitConflictError`, never an
  interleaving;
- :meth:`acquire` / :meth:`lock` are a lease object (holder, expiry) created if
  absent, renewed by compare-and-swap from a heartbeat thread, and taken over from
  a dead holder only after it expired, again by compare-and-swap.

Why obstore (measured against moto, ``python -m benchmarks.s3_clients``, RESULTS.md
"Object storage"): 4 KiB ranged GETs took 3.7-5.6 ms each against 8.6-13.5 ms with s3fs,
create-if-absent PUTs 4.2-5.8 ms against 11.2-15.9 ms, and obstore has If-Match compare-and-swap in its API
(``mode={"e_tag": ...}``) where s3fs only has create-if-absent. Its calls are
synchronous and release the GIL, which suits the reader's thread pool.
"""

from __future__ import annotations

import contextlib
import io as _io
import json
import os
import threading
import time
import uuid
import weakref
from typing import BinaryIO, Iterator
from urllib.parse import urlparse

from ..errors import CommitConflictError, InvalidArgumentError, StoreLockedError
from .base import Lease, RangeFile, StoreIO, check_key

# Lease lifetime: a lease not renewed for this long belongs to a dead writer and may be
# taken over. Renewed every third of it. Tests shorten it (storage_options or env).
DEFAULT_LEASE_SECONDS = 30.0
_TRUE = {"1", "true", "yes", "on"}


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix``; InvalidArgumentError for anything else."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise InvalidArgumentError(f"store URL: expected s3://bucket/prefix, got {url!r}")
    prefix = parsed.path.strip("/")
    if prefix:
        check_key(prefix)
    return parsed.netloc, prefix


def _obstore():
    try:
        import obstore
        from obstore.store import S3Store
    except ImportError:  # the optional extra
        raise InvalidArgumentError("s3:// stores need obstore: pip install 'deltastore[s3]'") from None
    return obstore, S3Store


def _is_not_found(exc: BaseException) -> bool:
    from obstore.exceptions import NotFoundError

    return isinstance(exc, (NotFoundError, FileNotFoundError))


def _past_the_end(exc: BaseException) -> bool:
    """A ranged GET that starts past the object's end (HTTP 416; obstore raises a GenericError)."""
    text = str(exc)
    return " 416 " in text or "InvalidRange" in text or "Range Not Satisfiable" in text


class Requests:
    """Counts of requests by kind, for receipts and benchmarks: GET (a whole object), GET tail
    (a shard's index, by suffix range), GET range (inner chunks), PUT, HEAD, LIST, DELETE."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_kind: dict[str, int] = {}

    def add(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.by_kind[kind] = self.by_kind.get(kind, 0) + n

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())


class _ObjectRangeFile(RangeFile):
    """Ranged GETs of one object. The size comes from the first read (a suffix GET of the
    shard index returns it), so opening costs no request."""

    def __init__(self, io: "ObjectStoreIO", key: str):
        self._io, self._key = io, key
        self._size: int | None = None

    @property
    def size(self) -> int:
        if self._size is None:
            self._size = self._io.size(self._key)
        return self._size

    def tail(self, length: int) -> bytes:
        buf, self._size = self._io._get_suffix(self._key, length)
        return buf

    def pread(self, length: int, offset: int) -> bytes:
        if length <= 0:
            return b""
        return self._io._get_range(self._key, offset, length)

    def preadv(self, ranges) -> list[bytes]:
        return self._io._get_ranges(self._key, ranges)


class ObjectStoreIO(StoreIO):
    """A store at ``s3://bucket/prefix``.

    Credentials, region and endpoint come from the standard AWS environment variables
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
    ``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP`` for a local server such as moto), or from
    ``storage_options``: keyword arguments of obstore's ``S3Store`` (``endpoint``,
    ``region``, ``access_key_id``, ``client_options``...), plus ``lease_seconds``.
    """

    def __init__(self, url: str, storage_options: dict | None = None):
        super().__init__()
        obstore, S3Store = _obstore()
        self._obs = obstore
        self.bucket, self.prefix = parse_url(url)
        options = dict(storage_options or {})
        self.lease_seconds = float(options.pop("lease_seconds", os.environ.get("DELTASTORE_LEASE_SECONDS", DEFAULT_LEASE_SECONDS)))
        if os.environ.get("AWS_ALLOW_HTTP", "").lower() in _TRUE:
            options.setdefault("client_options", {}).setdefault("allow_http", True)
        if "endpoint" not in options and os.environ.get("AWS_ENDPOINT_URL"):
            options["endpoint"] = os.environ["AWS_ENDPOINT_URL"]
        self._store = S3Store(self.bucket, prefix=self.prefix or None, **options)
        self.requests = Requests()
        # Reader threads (StoreReader's default): each shard read waits ~2 first-byte latencies
        # (tens of ms on S3) while using almost no CPU, so more threads than cores pay off.
        self.read_threads = 16
        self._etags: dict[str, str] = {}  # key -> ETag of the version this StoreIO last read or wrote (for swap)
        self._etag_lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _seen(self, key: str, etag: str | None) -> None:
        if etag:
            with self._etag_lock:
                self._etags[key] = etag

    def _not_found(self, key: str) -> FileNotFoundError:
        return FileNotFoundError(2, f"{self.where(key)}: no such object")

    # ---- reading ------------------------------------------------------------------
    def _get(self, key: str, options=None, kind: str = "GET"):
        self.requests.add(kind)
        try:
            return self._obs.get(self._store, check_key(key), options=options)
        except Exception as exc:
            if _is_not_found(exc):
                raise self._not_found(key) from None
            raise

    def read(self, key: str) -> bytes:
        result = self._get(key)
        data = bytes(result.bytes())
        self._seen(key, result.meta.get("e_tag"))
        self._count(len(data))
        return data

    def _get_suffix(self, key: str, length: int) -> tuple[bytes, int]:
        result = self._get(key, {"range": {"suffix": length}}, kind="GET tail")
        data = bytes(result.bytes())
        self._count(len(data))
        return data, int(result.meta["size"])

    def _get_range(self, key: str, offset: int, length: int) -> bytes:
        self.requests.add("GET range")
        try:
            data = bytes(self._obs.get_range(self._store, check_key(key), start=offset, length=length))
        except Exception as exc:
            if _is_not_found(exc):
                raise self._not_found(key) from None
            if _past_the_end(exc):  # RangeFile.pread's contract: no bytes past the end (a truncated object)
                return b""
            raise
        self._count(len(data))
        return data

    def _get_ranges(self, key: str, ranges) -> list[bytes]:
        """Many (offset, length) ranges of one object: concurrent GETs, adjacent ranges
        coalesced (obstore's get_ranges)."""
        ranges = [(o, n) for o, n in ranges]
        if not ranges:
            return []
        if len(ranges) == 1:
            return [self._get_range(key, *ranges[0])]
        starts = [o for o, _ in ranges]
        lengths = [n for _, n in ranges]
        # obstore coalesces ranges closer than 1 MiB into one request by default.
        self.requests.add("GET range", _coalesced_requests(ranges))
        try:
            out = [bytes(b) for b in self._obs.get_ranges(self._store, check_key(key), starts=starts, lengths=lengths)]
        except Exception as exc:
            if _is_not_found(exc):
                raise self._not_found(key) from None
            if _past_the_end(exc):  # one range lies past the end: each alone, that one empty
                return [self._get_range(key, o, n) for o, n in ranges]
            raise
        except BaseException as exc:
            # obstore 0.12 panics (pyo3 PanicException, not an Exception) when coalesced ranges
            # run past a truncated object's end: read each range alone.
            if type(exc).__name__ != "PanicException":
                raise
            return [self._get_range(key, o, n) for o, n in ranges]
        self._count(sum(len(b) for b in out))
        return out

    def open_range(self, key: str) -> RangeFile:
        return _ObjectRangeFile(self, key)

    def map(self, key: str):
        """The whole object (object storage cannot map; callers that need only parts use ranged reads)."""
        return self.read(key)

    def _head(self, key: str):
        self.requests.add("HEAD")
        try:
            return self._obs.head(self._store, check_key(key))
        except Exception as exc:
            if _is_not_found(exc):
                raise self._not_found(key) from None
            raise

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
            return True
        except FileNotFoundError:
            return False

    def size(self, key: str) -> int:
        return int(self._head(key)["size"])

    def _list(self, prefix: str) -> list[dict]:
        self.requests.add("LIST")
        prefix = prefix.strip("/")
        return [m for batch in self._obs.list(self._store, prefix or None) for m in batch]

    def is_empty(self) -> bool:
        return not any(not k.split("/")[0].startswith(".") for k in self.list_prefix(""))

    def list_dir(self, prefix: str = "") -> list[str]:
        self.requests.add("LIST")
        prefix = prefix.strip("/")
        res = self._obs.list_with_delimiter(self._store, prefix or None)
        cut = len(prefix) + 1 if prefix else 0
        names = {p.rstrip("/")[cut:] for p in res["common_prefixes"]} | {m["path"][cut:] for m in res["objects"]}
        return sorted(n for n in names if n)

    def list_prefix(self, prefix: str = "") -> list[str]:
        prefix = prefix.strip("/")
        keys = [m["path"] for m in self._list(prefix)]
        if prefix:  # a prefix names a folder: "g1" must not match "g10/..."
            keys = [k for k in keys if k.startswith(prefix + "/")]
        return sorted(keys)

    def nbytes(self, prefix: str = "") -> int:
        prefix = prefix.strip("/")
        return sum(int(m["size"]) for m in self._list(prefix) if not prefix or m["path"].startswith(prefix + "/"))

    # ---- writing ------------------------------------------------------------------
    def _put(self, key: str, data, mode=None) -> str | None:
        self.requests.add("PUT")
        result = self._obs.put(self._store, check_key(key), bytes(data) if not isinstance(data, bytes) else data,
                               mode=mode, use_multipart=False)
        return result.get("e_tag")

    @contextlib.contextmanager
    def writer(self, key: str, *, fsync: bool = False) -> Iterator[BinaryIO]:
        buf = _io.BytesIO()
        yield buf
        self._seen(key, self._put(key, buf.getvalue()))  # one PUT: the object appears whole or not at all

    def create(self, key: str, data, *, fsync: bool = False) -> bool:
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            self._seen(key, self._put(key, data, mode="create"))
            return True
        except (AlreadyExistsError, PreconditionError):
            return False

    def swap(self, key: str, data, *, fsync: bool = False) -> None:
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        with self._etag_lock:
            expected = self._etags.get(key)
        mode = {"e_tag": expected} if expected else "create"
        try:
            self._seen(key, self._put(key, data, mode=mode))
        except (AlreadyExistsError, PreconditionError) as exc:
            raise CommitConflictError(
                f"{self.where(key)}: expected to replace the version this writer last saw "
                f"({expected or 'none: a new store'}), but another writer changed it; this writer stops, "
                "and what the other committed stands (one writer at a time, FORMAT.md §9)") from exc
        except Exception as exc:
            if _is_not_found(exc):  # If-Match on a deleted object
                raise CommitConflictError(f"{self.where(key)}: expected the version this writer last saw, the object is gone") from None
            raise

    def delete(self, key: str) -> None:
        self.requests.add("DELETE")
        try:
            self._obs.delete(self._store, check_key(key))
        except Exception as exc:
            if not _is_not_found(exc):
                raise
        with self._etag_lock:
            self._etags.pop(key, None)

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list_prefix(prefix)
        if not prefix.strip("/"):
            keys = [k for k in keys if not k.startswith(".")]  # the whole store, but not its lease objects
        for i in range(0, len(keys), 1000):  # DeleteObjects takes 1,000 keys a request
            self.requests.add("DELETE")
            self._obs.delete(self._store, keys[i:i + 1000])

    def sync(self, keys) -> None:
        """Nothing to do: a PUT is durable when it returns."""

    # ---- leases -------------------------------------------------------------------
    def _lease_body(self, holder: str, token: str) -> bytes:
        return json.dumps({"holder": holder, "token": token, "expires": time.time() + self.lease_seconds}).encode()

    def _try_take(self, key: str, holder: str) -> tuple["_ObjectLease | None", str]:
        """The lease, or (None, who holds it)."""
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        token = uuid.uuid4().hex
        try:
            etag = self._put(key, self._lease_body(holder, token), mode="create")
            return _ObjectLease(self, key, holder, token, etag), ""
        except (AlreadyExistsError, PreconditionError):
            pass
        try:
            result = self._get(key)
        except FileNotFoundError:  # released in between: try again next time
            return None, "another process (releasing)"
        raw = bytes(result.bytes())
        try:
            current = json.loads(raw)
            expires, other = float(current["expires"]), str(current["holder"])
        except (ValueError, KeyError, TypeError):
            expires, other = 0.0, "an unreadable lease"
        if expires > time.time():
            return None, other
        try:  # expired: its holder died; take it over, unless someone else did first
            etag = self._put(key, self._lease_body(holder, token), mode={"e_tag": result.meta["e_tag"]})
            return _ObjectLease(self, key, holder, token, etag), ""
        except (AlreadyExistsError, PreconditionError):
            return None, "another process (taking over an expired lease)"

    def acquire(self, key: str, holder: str) -> Lease:
        lease, other = self._try_take(check_key(key), holder)
        if lease is None:
            raise StoreLockedError(
                f"{self.where(key)}: expected to be the only writer of this store, but {other} holds its lease; "
                f"one recording at a time (close the other Recorder first; a crashed writer's lease expires "
                f"{self.lease_seconds:g} s after its last renewal)")
        return lease

    @contextlib.contextmanager
    def lock(self, key: str, timeout: float) -> Iterator[None]:
        deadline = time.monotonic() + timeout
        while True:
            lease, other = self._try_take(check_key(key), f"pid {os.getpid()}")
            if lease is not None:
                break
            if time.monotonic() > deadline:
                raise StoreLockedError(f"{self.where(key)}: expected to take the lock within {timeout} s, {other} still holds it")
            time.sleep(0.05)
        try:
            yield
        finally:
            lease.release()


def _coalesced_requests(ranges, gap: int = 1024 * 1024) -> int:
    """How many GETs obstore's get_ranges makes: ranges closer than ``gap`` merge."""
    n, end = 0, None
    for o, length in sorted(ranges):
        if end is None or o > end + gap:
            n += 1
            end = o + length
        else:
            end = max(end, o + length)
    return n


class _ObjectLease(Lease):
    """A lease object renewed by compare-and-swap from a daemon thread until released.

    If a renewal finds the object changed (another process took over an expired lease),
    ``lost`` is set; the writer's next commit then fails its own compare-and-swap anyway.
    """

    def __init__(self, io: ObjectStoreIO, key: str, holder: str, token: str, etag: str | None):
        self._io, self._key, self._holder, self._token = io, key, holder, token
        self._etag = etag
        self.lost = False
        # Valid until this monotonic time: the lease object says "expires = now + lease_seconds"
        # from the moment we wrote it; nobody may take it over before that.
        self._valid_until = time.monotonic() + io.lease_seconds
        self._stop = threading.Event()
        # The thread holds only a weak reference: a writer dropped without close() lets its
        # lease go (it then expires lease_seconds later), as the local flock is let go.
        self._thread = threading.Thread(target=_renew_loop, args=(weakref.ref(self), self._stop, io.lease_seconds / 3),
                                        name="deltastore-lease", daemon=True)
        self._thread.start()

    def _renew_once(self) -> bool:
        """One renewal by compare-and-swap; False when the lease was taken over (stop renewing)."""
        from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError

        started = time.monotonic()
        try:
            self._etag = self._io._put(self._key, self._io._lease_body(self._holder, self._token), mode={"e_tag": self._etag})
        except (AlreadyExistsError, PreconditionError, NotFoundError):
            self.lost = True
            return False
        except Exception:  # a network hiccup: try again at the next tick, the lease is ours until it expires
            return True
        self._valid_until = started + self._io.lease_seconds
        return True

    def check(self) -> None:
        """StoreLockedError unless the lease is ours for at least a third of its lifetime more:
        a flush started now finishes its writes before anyone may take the lease over."""
        margin = self._io.lease_seconds / 3
        if self.lost or time.monotonic() + margin > self._valid_until:
            raise StoreLockedError(
                f"{self._io.where(self._key)}: expected this writer to hold the store's lease, but "
                + ("another writer took it over" if self.lost else "it was not renewed in time (the process stalled)")
                + "; nothing more is written, the steps committed so far stay readable")

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        if self.lost:
            return
        try:  # delete only our own version (S3 has no conditional DELETE everywhere: compare, then delete)
            if self._io._head(self._key).get("e_tag") == self._etag:
                self._io.delete(self._key)
        except FileNotFoundError:
            pass

    def __del__(self) -> None:
        self._stop.set()


def _renew_loop(ref, stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        lease = ref()
        if lease is None or not lease._renew_once():
            return
        del lease  # no strong reference while waiting
