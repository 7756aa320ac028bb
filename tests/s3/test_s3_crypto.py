"""An encrypted store on object storage (moto): record, read bit-equal to the same run stored locally, look up, forget, restore, verify."""

from __future__ import annotations

import numpy as np
import torch

from deltastore.crypto import open_encrypted
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader
from deltastore.verify import verify_store
from unlearning.forget import forget, restore
from tests.helpers import TinyNet, record

KEY = bytes(range(7, 39))


def test_an_encrypted_store_on_s3_reads_like_the_local_one_and_forgets(s3_url, tmp_path):
    kw = dict(steps=8, plan=PruningPlan.uniform(0.5, seed=3), steps_per_shard=4, encryption_key=KEY)
    model, _, _ = record(s3_url, **kw)
    record(tmp_path / "local", **kw)
    r, l = StoreReader(open_encrypted(s3_url, KEY)), StoreReader(open_encrypted(tmp_path / "local", KEY))
    for g in r.manifest.groups:
        assert torch.equal(r.read_rows(g.id, [0, 5, 7])[0], l.read_rows(g.id, [0, 5, 7])[0])
    assert np.array_equal(r.index.lookup([3, 40])[0], l.index.lookup([3, 40])[0])
    m = TinyNet(0)
    m.load_state_dict(model.state_dict())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    forget(m, r, [3, 40], request_id="s3-r1")
    restore(m, r, "s3-r1")
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    rep = verify_store(open_encrypted(s3_url, KEY))
    assert rep.ok, rep.problems
