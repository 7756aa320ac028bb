"""Faults while recording (issue 9, DESIGN invariant 7): a failed write at every point of
creation, recording and closing; a real file-size limit (RLIMIT_FSIZE); a second writer.

Every case asserts the three outcomes: a library error, every step committed before the
fault readable (the store opens and verifies with exactly those steps), and a path that
can be reused (creation) or resumed (recording).
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from deltastore.errors import DeltaStoreError, RecordingFailedError, StoreLockedError
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader
from deltastore.record import Recorder
from deltastore.storage import LocalStoreIO
from deltastore.verify import verify_store
from tests.helpers import TinyNet, make_optimizer, train_steps

ROOT = Path(__file__).resolve().parents[2]
STEPS, BATCH, SPS = 6, 8, 2  # flushes after steps 2 and 4, the tail and compaction at close


def _mlp() -> torch.nn.Module:
    """Small enough that a failure can be injected at every one of its ~50 writes in seconds."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))


class FailingIO(LocalStoreIO):
    """A local store whose ``fail_at``-th write (counting from 1) fails as a full disk would."""

    def __init__(self, root, fail_at: int | None):
        super().__init__(root)
        self.fail_at, self.writes = fail_at, 0

    def _tick(self) -> None:
        self.writes += 1
        if self.writes == self.fail_at:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")

    @contextlib.contextmanager
    def writer(self, key, *, fsync=False):
        self._tick()
        with super().writer(key, fsync=fsync) as f:
            yield f

    def create(self, key, data, *, fsync=False):
        self._tick()
        return super().create(key, data, fsync=fsync)


def _train(rec, model, opt, first: int, steps: int) -> None:
    train_steps(rec, model, opt, first, steps, BATCH)


def _record(io, model=None) -> None:
    model = model or _mlp()
    opt = make_optimizer("sgd-momentum", model.parameters())
    rec = Recorder(io, model, opt, plan=PruningPlan.layerwise(), steps_per_shard=SPS)
    try:
        _train(rec, model, opt, 0, STEPS)
    finally:
        rec.close()


def _writes_of_a_clean_recording(tmp_path) -> int:
    io = FailingIO(tmp_path / "clean", None)
    _record(io)
    return io.writes


def test_a_failed_write_at_every_point_leaves_a_sound_store(tmp_path):
    total = _writes_of_a_clean_recording(tmp_path)
    assert total > 30  # creation, 3 flushes and the close all write through the seam
    outcomes = {"creation": 0, "recording": 0}
    for n in range(1, total + 1):
        path = tmp_path / f"s{n}"
        with pytest.raises(DeltaStoreError) as info:
            _record(FailingIO(path, n))
        assert isinstance(info.value, RecordingFailedError), (n, info.value)
        committed = info.value.committed_steps
        if not (path / "commit.json").exists():
            # Killed while creating: the path is reused for a new store.
            outcomes["creation"] += 1
            _record(LocalStoreIO(path))
            assert StoreReader(path).committed_steps == STEPS
            continue
        outcomes["recording"] += 1
        r = StoreReader(path)
        assert r.committed_steps == committed, n  # nothing committed past the failure
        assert committed in (0, 2, 4, STEPS), n
        assert verify_store(path).ok, (n, [str(p) for p in verify_store(path).problems])
        # Resume: append the missing steps of the same run, as a restarted job would.
        model = _mlp()
        opt = make_optimizer("sgd-momentum", model.parameters())
        if committed < STEPS:
            rec = Recorder(path, model, opt, mode="a")
            assert rec.step == committed
            _train(rec, model, opt, committed, STEPS - committed)
            rec.close()
        assert StoreReader(path).committed_steps == STEPS and verify_store(path).ok
    assert outcomes["creation"] >= 5 and outcomes["recording"] >= 20, outcomes


def test_after_a_failure_every_later_call_raises_and_nothing_more_is_committed(tmp_path):
    io = FailingIO(tmp_path / "s", None)
    model = TinyNet(0)
    opt = make_optimizer("sgd", model.parameters())
    rec = Recorder(io, model, opt, plan=PruningPlan.dense(), steps_per_shard=SPS)
    io.fail_at = io.writes + 1  # the first write of the first flush
    with pytest.raises(RecordingFailedError, match=rf"committing steps \[0, {SPS}\) failed.*resume at step 0"):
        _train(rec, model, opt, 0, 8)
    with pytest.raises(RecordingFailedError):
        rec.samples([1])
    with pytest.raises(RecordingFailedError):
        rec.flush()
    with pytest.raises(RecordingFailedError):
        rec.close()
    assert StoreReader(tmp_path / "s").committed_steps == 0
    again = TinyNet(0)
    Recorder(tmp_path / "s", again, make_optimizer("sgd", again.parameters()), mode="a").close()  # the lock was released


CHILD_FSIZE = textwrap.dedent(
    """
    import resource, signal, sys, torch
    sys.path.insert(0, {root!r})
    from deltastore.errors import RecordingFailedError
    from deltastore.plan import PruningPlan
    from deltastore.record import Recorder
    from tests.helpers import TinyNet, data, make_optimizer
    torch.set_num_threads(1)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
    model = TinyNet(0)
    opt = make_optimizer("sgd", model.parameters())
    x, y = data()
    try:
        with Recorder(sys.argv[1], model, opt, plan=PruningPlan.dense(), value_dtype="float32", steps_per_shard=2) as rec:
            for s in range(12):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x[:8]), y[:8]).backward()
                rec.samples(list(range(8 * s, 8 * s + 8)))
                opt.step()
    except RecordingFailedError as exc:
        print("FAILED", exc.committed_steps, flush=True)
        sys.exit(3)
    print("DONE", flush=True)
    """
)


@pytest.mark.parametrize("limit", [1500, 6000, 40000])
def test_a_real_file_size_limit_is_a_library_error_and_the_store_resumes(tmp_path, limit):
    script = tmp_path / "child.py"
    script.write_text(CHILD_FSIZE.format(root=str(ROOT), limit=limit))
    store = tmp_path / "s"
    out = subprocess.run([sys.executable, str(script), str(store)], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in out.stderr or "RecordingFailedError" not in out.stderr, out.stderr[-2000:]
    if out.returncode == 0:  # the limit was above every file this run writes
        assert "DONE" in out.stdout and StoreReader(store).committed_steps == 12
        return
    assert out.returncode == 3, (out.returncode, out.stdout, out.stderr[-2000:])
    committed = int(out.stdout.split("FAILED")[1].split()[0])
    if not (store / "commit.json").exists():
        assert committed == 0
        return
    r = StoreReader(store)
    assert r.committed_steps == committed and verify_store(store).ok
    model = TinyNet(0)
    rec = Recorder(store, model, make_optimizer("sgd", model.parameters()), mode="a")  # resumes without the limit
    assert rec.step == committed
    rec.close()


def test_one_recording_at_a_time_in_one_process(tmp_path):
    model = TinyNet(0)
    opt = make_optimizer("sgd", model.parameters())
    first = Recorder(tmp_path / "s", model, opt)
    with pytest.raises(StoreLockedError, match="only writer of this store.*process"):
        Recorder(tmp_path / "s", model, make_optimizer("sgd", model.parameters()), mode="a")
    _train(first, model, opt, 0, 3)
    first.close()
    second = Recorder(tmp_path / "s", model, opt, mode="a")  # released at close
    assert second.step == 3
    second.close()


CHILD_HOLDER = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {root!r})
    from deltastore.record import Recorder
    from tests.helpers import TinyNet, make_optimizer
    model = TinyNet(0)
    rec = Recorder(sys.argv[1], model, make_optimizer("sgd", model.parameters()))
    print("holding", flush=True)
    sys.stdin.readline()
    rec.close()
    """
)


def test_a_second_process_cannot_record_into_a_store_being_recorded(tmp_path):
    script = tmp_path / "holder.py"
    script.write_text(CHILD_HOLDER.format(root=str(ROOT)))
    child = subprocess.Popen([sys.executable, str(script), str(tmp_path / "s")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "holding"
        model = TinyNet(0)
        with pytest.raises(StoreLockedError, match=f"process {child.pid}"):
            Recorder(tmp_path / "s", model, make_optimizer("sgd", model.parameters()), mode="a")
        with pytest.raises(DeltaStoreError):  # nor create over it
            Recorder(tmp_path / "s", model, make_optimizer("sgd", model.parameters()))
    finally:
        child.communicate("\n", timeout=60)
    assert child.returncode == 0
    model = TinyNet(0)
    Recorder(tmp_path / "s", model, make_optimizer("sgd", model.parameters()), mode="a").close()
