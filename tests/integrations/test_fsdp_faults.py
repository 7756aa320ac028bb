"""Faults across ranks with FSDP2 per-rank writes (2 gloo ranks, spawn; workers in fsdp_faults.py).

A peer killed mid-flush commits nothing of that flush; the store verifies and resumes
on 2 ranks; a write failure on one rank stops every rank with RecordingFailedError and
commits nothing of its range.
"""

from __future__ import annotations

import json

import pytest
import torch.distributed as dist

from deltastore import verify_store
from deltastore.read import StoreReader

from . import fsdp_faults, ranks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch without distributed support")


def test_killed_peer_commits_nothing_of_its_flush_then_two_ranks_resume_and_a_peer_write_failure_stops_both(tmp_path):
    import torch.multiprocessing as mp

    # 1. Rank 1 SIGKILLed mid-flush (one of its shards of steps [2, 4) written). Small PG timeout:
    #    rank 0 cannot wait long for the dead rank (spawn also stops it).
    with pytest.raises(mp.ProcessExitedException):
        ranks.spawn(fsdp_faults.kill_peer_worker, str(tmp_path), timeout_s=15)
    assert (tmp_path / "killed").read_text() == str(fsdp_faults.KILL_FLUSH)
    path = tmp_path / fsdp_faults.STORE
    assert StoreReader(path).committed_steps == 2  # [2, 4) was never committed
    assert verify_store(path).ok

    # 2. Resume on 2 ranks (rank 0 drops the tail first), record [2, 6), close; then rank 1's disk fills.
    ranks.spawn(fsdp_faults.resume_then_fail_worker, str(tmp_path), timeout_s=30)
    got = [json.loads((tmp_path / f"resume-{r}.json").read_text()) for r in range(ranks.WORLD)]
    assert [g["resumed_at"] for g in got] == [2, 2], got
    # Both ranks stopped with RecordingFailedError at the same step (the flush of [8, 10) is
    # awaited at the end of step 11 -- the next flush -- on every rank), naming rank 1's error.
    assert got[0]["raised_at"] == got[1]["raised_at"] is not None, got
    for g in got:
        assert "[8, 10)" in g["message"] and "rank 1: OSError" in g["message"] and "No space left" in g["message"], g
        assert g["close_error"] is not None and g["committed"] == 8, g
    r = StoreReader(path)
    assert r.committed_steps == 8  # [6, 8) committed, [8, 10) not
    assert verify_store(path).ok
    for step in range(8):  # each recording started the data over: steps 0-1, then 2-5, then 6-7
        start = 8 * (step - (0 if step < 2 else 2 if step < 6 else 6))
        assert sorted(r.index.samples_for(step).tolist()) == list(range(start, start + 8)), step
    updates = r.sum_updates(range(8)).updates  # every committed step reads, on every group (both ranks' shards)
    assert set(updates) == {t.name for t in r.manifest.tensors}
    assert all(bool(u.abs().sum() > 0) for name, u in updates.items() if name.endswith("weight")), updates
