"""ObjectStoreIO against moto: the StoreIO contract, conditional writes, leases, URL parsing."""

from __future__ import annotations

import threading
import time

import pytest

from deltastore.errors import CommitConflictError, InvalidArgumentError, StoreLockedError
from deltastore.storage import LocalStoreIO, open_io
from deltastore.storage.object import ObjectStoreIO, parse_url


def test_open_io_dispatches_on_the_scheme(s3_url, tmp_path):
    assert isinstance(open_io(s3_url), ObjectStoreIO)
    assert isinstance(open_io(tmp_path), LocalStoreIO)
    with pytest.raises(InvalidArgumentError, match="s3://bucket/prefix"):
        open_io("gs://bucket/x")
    with pytest.raises(InvalidArgumentError, match="only with an s3:// URL"):
        open_io(tmp_path, {"region": "us-east-1"})
    with pytest.raises(InvalidArgumentError, match="expected s3://bucket/prefix"):
        parse_url("s3:///nobucket")
    with pytest.raises(InvalidArgumentError):
        parse_url("s3://b/../escape")
    assert parse_url("s3://b/a/b/") == ("b", "a/b")


def test_reads_writes_lists_and_counts(s3_url):
    io = open_io(s3_url)
    assert io.is_empty()
    io.write("g0000/values/zarr.json", b"{}")
    io.write("g0000/values/c/0/0", bytes(range(256)) * 4)
    io.write("g0001/zarr.json", b"{}")
    io.write(".writer.lock", b"x")  # hidden: does not make the store non-empty
    assert not io.is_empty()
    assert io.list_dir("") == [".writer.lock", "g0000", "g0001"]
    assert io.list_dir("g0000") == ["values"]
    assert io.list_prefix("g0000") == ["g0000/values/c/0/0", "g0000/values/zarr.json"]
    assert io.list_prefix("g000") == []  # a prefix is a folder, not a string prefix
    assert io.size("g0000/values/c/0/0") == 1024 and io.nbytes("g0000") == 1026
    before, reqs, heads = io.bytes_read, io.requests.total, io.requests.by_kind.get("HEAD", 0)
    with io.open_range("g0000/values/c/0/0") as f:
        assert f.tail(4) == bytes([252, 253, 254, 255]) and f.size == 1024  # size from the suffix GET: no HEAD
        assert f.pread(3, 10) == bytes([10, 11, 12])
        assert f.preadv([(0, 2), (500, 3), (1020, 4)]) == [b"\x00\x01", bytes([244, 245, 246]), bytes([252, 253, 254, 255])]
    assert io.bytes_read - before == 4 + 3 + 9
    assert io.requests.total - reqs == 3  # tail, pread, and one coalesced GET for three close ranges
    assert io.requests.by_kind.get("HEAD", 0) == heads
    with pytest.raises(FileNotFoundError, match="missing"):
        io.read("missing")
    assert not io.exists("missing") and io.exists("g0001/zarr.json")
    io.delete("missing")  # not an error
    io.delete_prefix("g0000")
    assert io.list_dir("") == [".writer.lock", "g0001"]
    io.delete_prefix("")  # the whole store but its hidden lease objects
    assert io.list_prefix("") == [".writer.lock"] and io.is_empty()


def test_writer_block_that_fails_writes_nothing(s3_url):
    io = open_io(s3_url)
    with pytest.raises(RuntimeError):
        with io.writer("a") as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert not io.exists("a")


def test_create_if_absent_is_honoured(s3_url):
    io, other = open_io(s3_url), open_io(s3_url)
    assert io.create("ledger/00000000-a.json", b"1")
    assert not other.create("ledger/00000000-a.json", b"2")
    assert io.read("ledger/00000000-a.json") == b"1"


def test_create_race_has_exactly_one_winner(s3_url):
    ios = [open_io(s3_url) for _ in range(8)]
    results = [None] * 8
    barrier = threading.Barrier(8)

    def go(i):
        barrier.wait()
        results[i] = ios[i].create("k", b"%d" % i)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sum(results) == 1
    assert ios[0].read("k") == b"%d" % results.index(True)


def test_swap_is_compare_and_swap(s3_url):
    a, b = open_io(s3_url), open_io(s3_url)
    a.swap("commit.json", b"v1")  # never seen: create-if-absent
    with pytest.raises(CommitConflictError, match="another writer"):
        b.swap("commit.json", b"other")  # b saw none, but one exists
    assert b.read("commit.json") == b"v1"
    b.swap("commit.json", b"v2")  # b read v1: its swap wins
    with pytest.raises(CommitConflictError):
        a.swap("commit.json", b"stale")  # a last saw v1
    assert a.read("commit.json") == b"v2"
    a.swap("commit.json", b"v3")
    assert b.read("commit.json") == b"v3"


def test_swap_race_has_exactly_one_winner(s3_url):
    seed = open_io(s3_url)
    seed.swap("commit.json", b"0")
    ios = [open_io(s3_url) for _ in range(6)]
    for io in ios:
        io.read("commit.json")
    outcome = [None] * 6
    barrier = threading.Barrier(6)

    def go(i):
        barrier.wait()
        try:
            ios[i].swap("commit.json", b"%d" % (i + 1))
            outcome[i] = True
        except CommitConflictError:
            outcome[i] = False

    threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert outcome.count(True) == 1
    assert seed.read("commit.json") == b"%d" % (outcome.index(True) + 1)


def test_lease_excludes_a_second_holder_and_is_released(s3_url):
    a, b = open_io(s3_url), open_io(s3_url)
    lease = a.acquire(".writer.lock", "writer A")
    with pytest.raises(StoreLockedError, match="writer A holds its lease"):
        b.acquire(".writer.lock", "writer B")
    lease.release()
    b.acquire(".writer.lock", "writer B").release()
    assert not a.exists(".writer.lock")


def test_expired_lease_is_taken_over_once_and_the_old_holder_learns_it(s3_url):
    a = ObjectStoreIO(s3_url, {"lease_seconds": 30})
    dead = a.acquire(".writer.lock", "dead writer")
    dead._stop.set()  # the holder dies: no more renewals
    dead._thread.join()
    fast = [ObjectStoreIO(s3_url, {"lease_seconds": 3}) for _ in range(4)]
    with pytest.raises(StoreLockedError, match="dead writer"):
        fast[0].acquire(".writer.lock", "early")  # not expired yet (30 s)
    # Rewrite the dead lease as if written with a short lifetime, then let it expire.
    a._put(".writer.lock", a._lease_body("dead writer", "t").replace(b'"expires"', b'"was"').replace(b"}", b', "expires": 0}'),
           mode={"e_tag": dead._etag})
    taken = []
    barrier = threading.Barrier(4)

    def go(i):
        barrier.wait()
        try:
            taken.append(fast[i].acquire(".writer.lock", f"taker {i}"))
        except StoreLockedError:
            pass

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(taken) == 1  # exactly one takes over an expired lease
    time.sleep(1.2)  # renewed by its heartbeat (every 1 s): still held
    with pytest.raises(StoreLockedError, match="taker"):
        fast[0].acquire(".writer.lock", "late")
    taken[0].release()


def test_lock_waits_then_times_out(s3_url):
    a, b = open_io(s3_url), open_io(s3_url)
    with a.lock("ledger/.lock", 1.0):
        t0 = time.monotonic()
        with pytest.raises(StoreLockedError, match="within 0.3 s"):
            with b.lock("ledger/.lock", 0.3):
                pass
        assert time.monotonic() - t0 >= 0.3
    with b.lock("ledger/.lock", 1.0):
        pass


def test_a_dropped_lease_stops_renewing_and_expires(s3_url):
    import gc
    import json

    a = ObjectStoreIO(s3_url, {"lease_seconds": 0.6})
    lease = a.acquire(".writer.lock", "dropped writer")
    thread = lease._thread
    del lease
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()  # the heartbeat held no strong reference
    body = json.loads(a.read(".writer.lock"))
    time.sleep(0.5)  # more than two renewal intervals: nobody renews it any more
    assert json.loads(a.read(".writer.lock")) == body and body["holder"] == "dropped writer"
    time.sleep(max(0.0, body["expires"] - time.time()) + 0.05)
    ObjectStoreIO(s3_url, {"lease_seconds": 0.6}).acquire(".writer.lock", "next").release()


from hypothesis import given, settings, strategies as st  # noqa: E402

_keys = st.sampled_from(["a", "b/c", "b/d", "commit.json"])
_ops = st.lists(st.tuples(st.sampled_from(["write", "create", "delete", "swap", "read_other"]), _keys,
                          st.binary(min_size=0, max_size=40)), max_size=12)


@settings(max_examples=20, deadline=None)
@given(ops=_ops)
def test_object_store_agrees_with_a_dict_model(bucket, ops):
    """Any sequence of writes, creates, deletes and compare-and-swaps leaves the bucket equal to
    a dict model; swap fails exactly when another StoreIO changed the key since this one saw it."""
    import uuid

    url = f"s3://{bucket}/{uuid.uuid4().hex}"
    io, other = open_io(url), open_io(url)
    model: dict[str, bytes] = {}
    seen: dict[str, bytes] = {}  # the version `io` last wrote
    for op, key, data in ops:
        if op == "write":
            io.write(key, data)
            model[key] = seen[key] = data
        elif op == "create":
            created = io.create(key, data)
            assert created == (key not in model)
            if created:
                model[key] = seen[key] = data
        elif op == "delete":
            io.delete(key)
            model.pop(key, None)
            seen.pop(key, None)
        elif op == "read_other":  # another writer replaces the key behind io's back
            other.write(key, data + b"!")
            model[key] = data + b"!"
        else:
            # The compare is on the ETag (the content's MD5 for a plain PUT): same bytes, same version.
            fresh = (key in seen and key in model and seen[key] == model[key]) or (key not in seen and key not in model)
            if fresh:
                io.swap(key, data)
                model[key] = seen[key] = data
            else:
                with pytest.raises(CommitConflictError):
                    io.swap(key, data)
    assert io.list_prefix("") == sorted(model)
    for k, v in model.items():
        assert io.read(k) == v
