"""LocalStoreIO: a store in a directory of the local file system.

Atomic writes are a uniquely named hidden ``.<name>.<uuid>.partial`` file moved
into place with ``os.replace`` (the habit of Zarr's LocalStore); create-if-absent
is ``os.link`` of such a file (fails if the name exists). Locks are
``fcntl.flock`` on a file named by the lock's key.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import shutil
import stat
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import CorruptStoreError, StoreLockedError
from .base import Lease, RangeFile, StoreIO, check_key
from .object import Requests


def _open_regular(path: Path) -> int:
    """A read-only descriptor of the regular file ``path``, never through a final symlink and
    never blocking on a FIFO; CorruptStoreError for anything but a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CorruptStoreError(f"{path}: expected a file of the store, found a symbolic link; deltastore does not follow links") from None
        if exc.errno == errno.EISDIR:
            raise CorruptStoreError(f"{path}: expected a file of the store, found a directory") from None
        if exc.errno == errno.ENOTDIR:  # a file where a directory of the store should be: no such key
            raise FileNotFoundError(errno.ENOENT, f"{path}: no such file (a parent is not a directory)") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise CorruptStoreError(f"{path}: expected a regular file of the store, found {_kind(mode)}")
    return fd


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "something that is not a regular file"


class _LocalRangeFile(RangeFile):
    def __init__(self, path: Path, count, requests: Requests):
        self._fd = _open_regular(path)
        self.size = os.fstat(self._fd).st_size
        self._count, self._requests = count, requests

    def pread(self, length: int, offset: int) -> bytes:
        buf = os.pread(self._fd, length, offset)  # releases the GIL: reader threads overlap
        self._requests.add("GET range")
        self._count(len(buf))
        return buf

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LocalStoreIO(StoreIO):
    """A store in a local directory.

    ``requests`` counts operations under the names object storage uses, so benchmarks
    compare the two side by side: ``GET`` (a whole file read), ``GET range`` (one
    ``pread``), ``map`` (a file mapped: its bytes are not counted in ``bytes_read``),
    ``PUT`` (an atomic write or create), ``HEAD`` (exists, size), ``LIST``, ``DELETE``.
    """

    def __init__(self, root: str | os.PathLike):
        super().__init__()
        self.root = Path(root)
        self.requests = Requests()
        self._safe_dirs: set[Path] = set()  # directories already checked to be no symlinks

    def _check_dirs(self, path: Path) -> None:
        """CorruptStoreError if a directory between the root and ``path`` is a symlink
        (a ``ledger/`` pointing elsewhere must not make writes land outside the store)."""
        parent = path.parent
        if parent in self._safe_dirs:
            return
        d = self.root
        for part in parent.relative_to(self.root).parts:
            d = d / part
            if d in self._safe_dirs:
                continue
            try:
                mode = os.lstat(d).st_mode
            except FileNotFoundError:
                return  # created below, as a directory
            if not stat.S_ISDIR(mode):
                raise CorruptStoreError(f"{d}: expected a directory of the store, found {_kind(mode)}; deltastore does not follow links")
            self._safe_dirs.add(d)

    @property
    def url(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    # ---- reading ------------------------------------------------------------------
    def _checked(self, key: str) -> Path:
        path = self.path(key)
        self._check_dirs(path)
        return path

    def read(self, key: str) -> bytes:
        self.requests.add("GET")
        with os.fdopen(_open_regular(self._checked(key)), "rb") as f:
            data = f.read()
        self._count(len(data))
        return data

    def open_range(self, key: str) -> RangeFile:
        return _LocalRangeFile(self._checked(key), self._count, self.requests)

    def map(self, key: str):
        self.requests.add("map")
        with os.fdopen(_open_regular(self._checked(key)), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return b""
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def exists(self, key: str) -> bool:
        self.requests.add("HEAD")
        try:
            return stat.S_ISREG(os.lstat(self._checked(key)).st_mode)
        except FileNotFoundError:
            return False

    def is_empty(self) -> bool:
        if not self.root.exists():
            return True
        return self.root.is_dir() and not any(not e.name.startswith(".") for e in self.root.iterdir())

    def size(self, key: str) -> int:
        self.requests.add("HEAD")
        return os.lstat(self._checked(key)).st_size

    def list_dir(self, prefix: str = "") -> list[str]:
        self.requests.add("LIST")
        base = self.path(prefix) if prefix else self.root
        try:
            return sorted(e.name for e in os.scandir(base))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def list_prefix(self, prefix: str = "") -> list[str]:
        self.requests.add("LIST")
        base = self.path(prefix.rstrip("/")) if prefix.rstrip("/") else self.root
        out = []
        for dirpath, _, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            out.extend(f if rel == "." else f"{rel}/{f}" for f in files)
        return sorted(out)

    # ---- writing ------------------------------------------------------------------
    def _tmp(self, path: Path) -> Path:
        return path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")

    @contextlib.contextmanager
    def writer(self, key: str, *, fsync: bool = False) -> Iterator[BinaryIO]:
        self.requests.add("PUT")
        path = self._checked(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp(path)
        try:
            with open(tmp, "wb") as f:
                yield f
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if fsync:
            fsync_path(path.parent)

    def create(self, key: str, data, *, fsync: bool = False) -> bool:
        self.requests.add("PUT")
        path = self._checked(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # fails if the name exists: never overwrites
            except FileExistsError:
                return False
        finally:
            tmp.unlink(missing_ok=True)
        if fsync:
            fsync_path(path.parent)
        return True

    def delete(self, key: str) -> None:
        self.requests.add("DELETE")
        self.path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        prefix = prefix.rstrip("/")
        if prefix:
            shutil.rmtree(self.path(prefix), ignore_errors=True)
            return
        for name in self.list_dir(""):  # the whole store, but not its root directory
            entry = self.root / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)

    def sync(self, keys) -> None:
        dirs = set()
        for key in keys:
            path = self.path(key)
            try:
                fsync_path(path)
            except FileNotFoundError:
                continue
            dirs.add(path.parent)
        for d in dirs:
            fsync_path(d)

    @contextlib.contextmanager
    def lock(self, key: str, timeout: float) -> Iterator[None]:
        path = self._checked(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreLockedError(f"{path}: expected to take the lock within {timeout} s, another process still holds it") from None
                    time.sleep(0.01)
            yield
        finally:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


    def acquire(self, key: str, holder: str) -> Lease:
        path = self._checked(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                other = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            finally:
                os.close(fd)
            raise StoreLockedError(f"{path}: expected to be the only writer of this store, but {other} holds it; "
                                   "one recording at a time (close the other Recorder first)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        return _LocalLease(fd)


class _LocalLease(Lease):
    """flock on an open file: released by release(), or by the kernel when the process ends."""

    def __init__(self, fd: int):
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __del__(self) -> None:  # a writer dropped without close() must not hold the store forever
        self.release()


def fsync_path(path: Path) -> None:
    """Make a file's or a directory's (its entries') earlier writes durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
