"""LocalStoreIO (deltastore.storage): atomic writes, create-if-absent, keys that cannot leave the store, locks."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deltastore.errors import InvalidArgumentError, StoreLockedError
from deltastore.storage import LocalStoreIO, check_key, open_io


def test_write_read_list_delete(tmp_path):
    io = LocalStoreIO(tmp_path / "s")
    assert io.is_empty()
    io.write("a/b/c.json", b"{}")
    io.write("a/x", b"12345")
    assert io.read("a/b/c.json") == b"{}"
    assert io.list_dir("a") == ["b", "x"]
    assert io.list_prefix("") == ["a/b/c.json", "a/x"]
    assert io.size("a/x") == 5 and io.nbytes("a") == 7
    assert io.read_range("a/x", 1, 3) == b"234"
    assert bytes(io.map("a/x")) == b"12345"
    assert io.bytes_read == 2 + 3 + 0  # map is not a read of bytes into memory
    io.delete("a/x")
    io.delete("a/x")  # missing is fine
    assert not io.exists("a/x") and not io.is_empty()
    with pytest.raises(FileNotFoundError):
        io.read("a/x")


def test_an_interrupted_write_leaves_the_old_bytes(tmp_path):
    io = LocalStoreIO(tmp_path)
    io.write("k", b"old")
    with pytest.raises(RuntimeError):
        with io.writer("k") as f:
            f.write(b"new, half")
            raise RuntimeError("killed mid-write")
    assert io.read("k") == b"old"
    assert io.list_dir("") == ["k"]  # no temporary file left behind


def test_create_never_overwrites(tmp_path):
    io = LocalStoreIO(tmp_path)
    assert io.create("ledger/0", b"first", fsync=True)
    assert not io.create("ledger/0", b"second")
    assert io.read("ledger/0") == b"first"
    assert io.list_dir("ledger") == ["0"]


@settings(max_examples=50)
@given(st.sampled_from(["", "/abs", "../up", "a/../b", "a//b", "./a", "a/."]))
def test_keys_that_could_leave_the_store_are_refused(key):
    with pytest.raises(InvalidArgumentError, match="expected a relative path"):
        check_key(key)


@settings(max_examples=50)
@given(st.lists(st.text(alphabet="abcXYZ019_.-", min_size=1, max_size=8).filter(lambda p: p not in (".", "..")), min_size=1, max_size=4),
       st.binary(max_size=64))
def test_any_valid_key_round_trips(tmp_path_factory, parts, data):
    io = LocalStoreIO(tmp_path_factory.mktemp("k"))
    key = "/".join(parts)
    io.write(key, data)
    assert io.read(key) == data and io.list_prefix("") == [key]


def test_a_second_lock_holder_times_out(tmp_path):
    io = LocalStoreIO(tmp_path)
    held, release = threading.Event(), threading.Event()

    def holder():
        with LocalStoreIO(tmp_path).lock("ledger/.lock", timeout=5):
            held.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    try:
        with pytest.raises(StoreLockedError, match="expected to take the lock within"):
            with io.lock("ledger/.lock", timeout=0.05):
                pass
    finally:
        release.set()
        t.join()
    with io.lock("ledger/.lock", timeout=1):  # free again
        pass


def test_open_io_passes_a_store_io_through(tmp_path):
    io = LocalStoreIO(tmp_path)
    assert open_io(io) is io
    assert isinstance(open_io(tmp_path), LocalStoreIO)
    (tmp_path / "file").write_bytes(b"x")
    assert not LocalStoreIO(tmp_path / "file").is_empty()  # a file where a store would go is not empty


def test_links_fifos_and_directories_are_refused_never_followed(tmp_path):
    import os

    from deltastore.errors import CorruptStoreError

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"not the store's")
    io = LocalStoreIO(tmp_path / "s")
    io.write("g0000/values/c/0/0", b"shard")
    os.symlink(outside, tmp_path / "s" / "ledger")  # a ledger/ that leads out of the store
    with pytest.raises(CorruptStoreError, match="found a symbolic link"):
        io.write("ledger/00000000-a.json", b"{}")
    with pytest.raises(CorruptStoreError, match="found a symbolic link"):
        io.create("ledger/00000000-a.json", b"{}")
    with pytest.raises(CorruptStoreError, match="found a symbolic link"):
        io.read("ledger/secret")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]  # nothing written outside
    os.symlink(outside / "secret", tmp_path / "s" / "g0000" / "values" / "c" / "0" / "1")
    with pytest.raises(CorruptStoreError, match="symbolic link"):
        io.read("g0000/values/c/0/1")
    os.mkfifo(tmp_path / "s" / "g0000" / "values" / "c" / "0" / "2")
    for read in (io.read, io.open_range, io.map):  # returns at once: a FIFO never blocks a reader
        with pytest.raises(CorruptStoreError, match="found a FIFO"):
            read("g0000/values/c/0/2")
    with pytest.raises(CorruptStoreError, match="found a directory"):
        io.read("g0000/values")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(FileNotFoundError):
        LocalStoreIO(tmp_path / "file").read("zarr.json")
