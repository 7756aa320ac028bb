"""FSDP2 per-rank writes on object storage: both ranks write shards through ObjectStoreIO under
rank 0's lease, rank 0 commits by compare-and-swap (2 gloo ranks, spawn; moto on 127.0.0.1)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from deltastore import verify_store
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader
from tests.integrations import ranks
from tests.integrations.test_distributed import _one_process

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch without distributed support")


def test_fsdp2_ranks_write_their_groups_to_s3_and_the_store_decodes_as_one_process(s3_url, tmp_path):
    # The moto endpoint reaches the ranks through the environment the fixture set (spawn inherits it).
    ranks.spawn(ranks.fsdp_url_worker, s3_url)
    assert verify_store(s3_url).ok
    _one_process(tmp_path / "one", PruningPlan.uniform(0.5))
    a, b = StoreReader(tmp_path / "one"), StoreReader(s3_url)
    assert a.committed_steps == b.committed_steps == 8
    for step in range(8):
        ua, ub = a.sum_updates([step]).updates, b.sum_updates([step]).updates
        assert all(torch.allclose(ua[t], ub[t], rtol=1e-4, atol=1e-7) for t in ua), step  # tolerance: test_distributed.py
