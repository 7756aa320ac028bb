"""The writer rule on object storage: racing writers, a stalled writer, injected failures at
every kind of write, a writer killed mid-recording. After each, the store verifies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from deltastore.errors import DeltaStoreError, StoreExistsError, StoreLockedError
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader
from deltastore.record import Recorder
from deltastore.storage.object import ObjectStoreIO
from deltastore.verify import verify_store
from tests.helpers import TinyNet, make_optimizer, train_steps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train(rec, model, opt, steps, start=0):
    train_steps(rec, model, opt, start, steps)


def test_racing_creators_exactly_one_wins(s3_url):
    outcome = {}
    barrier = threading.Barrier(3)

    def go(i):
        model = TinyNet(i)
        opt = make_optimizer("sgd", model.parameters())
        barrier.wait()
        try:
            rec = Recorder(s3_url, model, opt, plan=PruningPlan.dense(), steps_per_shard=2)
            train(rec, model, opt, 2)
            rec.close()
            outcome[i] = "won"
        except (StoreLockedError, StoreExistsError) as exc:
            outcome[i] = type(exc).__name__

    threads = [threading.Thread(target=go, args=(i,)) for i in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(outcome.values()).count("won") == 1, outcome
    assert verify_store(s3_url).ok
    assert StoreReader(s3_url).committed_steps == 2


def test_second_writer_is_refused_while_the_first_records(s3_url):
    model = TinyNet(0)
    opt = make_optimizer("sgd", model.parameters())
    rec = Recorder(s3_url, model, opt, plan=PruningPlan.dense(), steps_per_shard=2)
    train(rec, model, opt, 2)
    with pytest.raises(StoreLockedError, match="holds its lease"):
        other = TinyNet(0)
        Recorder(s3_url, other, make_optimizer("sgd", other.parameters()), mode="a")
    train(rec, model, opt, 2, start=2)
    rec.close()
    again = Recorder(s3_url, model, opt, mode="a")  # released at close
    again.close()
    assert StoreReader(s3_url).committed_steps == 4 and verify_store(s3_url).ok


def test_a_stalled_writer_whose_lease_was_taken_over_writes_nothing_more(s3_url):
    io_a = ObjectStoreIO(s3_url, {"lease_seconds": 3})
    model = TinyNet(0)
    opt = make_optimizer("sgd", model.parameters())
    a = Recorder(io_a, model, opt, plan=PruningPlan.dense(), steps_per_shard=2)
    train(a, model, opt, 2)
    a.writer.flush()
    lease = a.writer._lease
    lease._stop.set()  # A's process stalls: no renewals...
    lease._thread.join()
    time.sleep(max(0.0, json.loads(io_a.read(".writer.lock"))["expires"] - time.time()) + 0.05)  # ...past its expiry
    io_b = ObjectStoreIO(s3_url, {"lease_seconds": 30})
    b_model = TinyNet(1)
    b_opt = make_optimizer("sgd", b_model.parameters())
    b = Recorder(io_b, b_model, b_opt, mode="a")  # takes the expired lease over
    puts_before = io_a.requests.by_kind.get("PUT", 0)
    with pytest.raises(DeltaStoreError, match="lease"):
        train(a, model, opt, 2, start=2)  # A wakes up: its flush is refused before any write
        a.writer.flush()
    assert io_a.requests.by_kind.get("PUT", 0) == puts_before
    train(b, b_model, b_opt, 2, start=2)
    b.close()
    r = StoreReader(s3_url)
    assert r.committed_steps == 4 and verify_store(s3_url).ok


class FailingIO(ObjectStoreIO):
    """Fails the n-th PUT of a store object (not lease renewals) with an I/O error, like a dropped connection."""

    def __init__(self, url, fail_at):
        super().__init__(url, {"lease_seconds": 30})
        self.fail_at, self.puts, self.failed_key, self.keys = fail_at, 0, None, []

    def _put(self, key, data, mode=None):
        if not key.startswith("."):
            self.puts += 1
            self.keys.append(key)
            if self.puts == self.fail_at:
                self.failed_key = key
                raise OSError(5, f"injected failure writing {key}")
        return super()._put(key, data, mode)


def _record(io, steps, mode="w", start=0):
    model = TinyNet(0)
    opt = make_optimizer("adam", model.parameters())
    rec = Recorder(io, model, opt, plan=PruningPlan.uniform(0.5, seed=1), steps_per_shard=2, mode=mode)
    try:
        train(rec, model, opt, steps, start=start)
        rec.close()
    finally:
        rec.writer.close() if not rec.writer._closed else None


def test_injected_failure_at_each_write_leaves_a_store_that_verifies_and_resumes(s3_endpoint):
    from tests.s3.conftest import new_bucket

    probe = FailingIO(f"s3://{new_bucket(s3_endpoint)}/probe", fail_at=0)
    _record(probe, 4)
    # One trial per kind of write, at its first occurrence after creation and at creation
    # (the manifest, array metadata, a shard, an index part and its sidecar, the commit
    # record of a flush, and the last writes of close), to stay in the time budget.
    def kind(key):
        name = key.rsplit("/", 1)[-1]
        if "/c/" in key:
            return "shard"
        if name.endswith(".parquet") or name.endswith(".ids"):
            return name.rsplit(".", 1)[-1]
        return key if name in ("zarr.json", "commit.json") and "/" not in key else ("array zarr.json" if name == "zarr.json" else "other")
    first_commit = probe.keys.index("commit.json")
    points = {1}  # the manifest (creation); then the first of each kind in the flushes and close
    seen = set()
    for i, key in enumerate(probe.keys[first_commit + 1:], start=first_commit + 2):
        if kind(key) not in seen:
            seen.add(kind(key))
            points.add(i)
    points = sorted(points)
    kinds = set()
    for n in points:
        url = f"s3://{new_bucket(s3_endpoint)}/crash"
        io = FailingIO(url, fail_at=n)
        with pytest.raises(OSError):
            _record(io, 4)
        kinds.add(io.failed_key.split("/")[-1] if "/" in io.failed_key else io.failed_key)
        check = ObjectStoreIO(url)
        if not check.exists("commit.json"):  # failed while creating: the URL can be used again
            _record(ObjectStoreIO(url), 2)
        else:
            rep = verify_store(url)
            assert rep.ok, (n, io.failed_key, rep.problems)
            before = StoreReader(url).committed_steps
            _record(ObjectStoreIO(url), 2, mode="a", start=before)
            assert StoreReader(url).committed_steps == before + 2
        assert verify_store(url).ok, (n, io.failed_key)
    assert {"commit.json", "zarr.json", "0"} <= kinds and any(k.endswith(".parquet") for k in kinds), kinds


KILLED_WRITER = r"""
import sys, torch
sys.path.insert(0, {root!r})
from deltastore.plan import PruningPlan
from deltastore.record import Recorder
from tests.helpers import TinyNet, data, make_optimizer
model = TinyNet(0); opt = make_optimizer("sgd", model.parameters())
rec = Recorder({url!r}, model, opt, plan=PruningPlan.dense(), steps_per_shard=2)
x, y = data()
s = 0
while True:  # records until killed
    idx = torch.arange(s * 8, (s + 1) * 8) % x.shape[0]
    opt.zero_grad(); torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
    rec.samples(idx, epoch=0); opt.step(); s += 1
"""


def test_writer_killed_mid_recording(s3_url):
    env = {**os.environ, "DELTASTORE_LEASE_SECONDS": "4"}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER.format(root=ROOT, url=s3_url)], env=env)
    io = ObjectStoreIO(s3_url)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if json.loads(io.read("commit.json"))["committed_steps"] >= 4:
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        else:
            pytest.fail("the writer committed nothing in 60 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with pytest.raises(StoreLockedError, match="holds its lease"):  # the dead writer's lease, until it expires
        ObjectStoreIO(s3_url).acquire(".writer.lock", "test")
    rep = verify_store(s3_url)
    assert rep.ok and rep.committed_steps >= 4, rep.problems
    time.sleep(max(0.0, json.loads(io.read(".writer.lock"))["expires"] - time.time()) + 0.05)
    committed = StoreReader(s3_url).committed_steps
    _record(ObjectStoreIO(s3_url), 2, mode="a", start=committed)  # taken over after expiry; the tail dropped
    assert StoreReader(s3_url).committed_steps == committed + 2 and verify_store(s3_url).ok
