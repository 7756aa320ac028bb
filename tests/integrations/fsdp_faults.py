"""FSDP2 per-rank writes under faults: the workers of test_fsdp_faults.py (2 gloo ranks, spawn).

steps_per_shard=2, so every second step flushes: steps [0, 2), [2, 4), ... Each rank
writes the groups the plan gives it; rank 0 commits after both ranks' writes.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import torch

from . import ranks

STORE = "faults.ds"
KILL_FLUSH = 2  # rank 1 dies writing the shards of steps [2, 4)
FAIL_FLUSH = 8  # rank 1's disk is full writing steps [8, 10) (after the resume)


def _recorder(root, model, opt, mode="w"):
    from deltastore import Recorder
    from deltastore.plan import PruningPlan

    return Recorder(Path(root) / STORE, model, opt, mode=mode, plan=PruningPlan.uniform(0.5), value_dtype="float32", steps_per_shard=2)


def _model():
    from torch.distributed.fsdp import fully_shard

    model = ranks.net()
    fully_shard(model)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _on_shard_write(rank: int, when):
    """Run ``when(encoder, start, calls)`` before each shard write of this process (a seam on ShardEncoder.write)."""
    from deltastore.format.shards import ShardEncoder

    original, calls = ShardEncoder.write, []

    def hooked(encoder, data, start, *, fsync=False):
        calls.append(int(start))
        when(encoder, int(start), calls)
        return original(encoder, data, start, fsync=fsync)

    ShardEncoder.write = hooked
    return lambda: setattr(ShardEncoder, "write", original)


def kill_peer_worker(rank: int, world: int, root: str) -> None:
    """Rank 1 is SIGKILLed mid-flush of steps [2, 4): after one of its shards of that flush is written."""
    if rank == 1:
        def die(encoder, start, calls):
            if start >= KILL_FLUSH and calls.count(start) == 2:  # its first shard of the flush is on disk
                (Path(root) / "killed").write_text(str(start))
                os.kill(os.getpid(), signal.SIGKILL)

        _on_shard_write(rank, die)
    model, opt = _model()
    rec = _recorder(root, model, opt)
    ranks.train(model, opt, rec, rank, world)  # rank 0 fails in a collective or is stopped by spawn
    rec.close()


def resume_then_fail_worker(rank: int, world: int, root: str) -> None:
    """Resume with 2 ranks after the kill, record and close; then a write failure on rank 1 only."""
    from deltastore.errors import RecordingFailedError

    model, opt = _model()
    rec = _recorder(root, model, opt, mode="a")
    resumed_at = rec.step
    ranks.train(model, opt, rec, rank, world, steps=4)  # steps [2, 6)
    rec.close()

    def full(encoder, start, calls):
        if start >= FAIL_FLUSH:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")

    restore = _on_shard_write(rank, full) if rank == 1 else (lambda: None)
    rec = _recorder(root, model, opt, mode="a")  # resumes at 6; [6, 8) commits, [8, 10) fails on rank 1
    raised_at, message, step_error = None, None, None
    try:
        ranks.train(model, opt, rec, rank, world)
    except RecordingFailedError as exc:
        raised_at, message = rec.step, str(exc)
    finally:
        restore()
    try:
        rec.close()
        close_error = None
    except RecordingFailedError as exc:  # the failure again: nothing more is written
        close_error = str(exc)
    (Path(root) / f"resume-{rank}.json").write_text(json.dumps(
        {"resumed_at": resumed_at, "raised_at": raised_at, "message": message, "close_error": close_error,
         "committed": rec.writer.committed, "step_error": step_error}))
