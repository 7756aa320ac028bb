"""DDP and FSDP2 recording with 2 CPU ranks (gloo on 127.0.0.1, torch.multiprocessing spawn).

Spawning ranks costs seconds, so each test runs one spawn that checks several things
(see the workers in ranks.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from deltastore import Recorder, verify_store
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader
from unlearning.forget import forget

from . import ranks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch without distributed support")


def test_ddp_and_lightning_ranks_record_one_store_that_forgets_on_the_plain_model(tmp_path):
    pytest.importorskip("lightning")
    ranks.spawn(ranks.ddp_and_lightning_worker, str(tmp_path))
    assert (tmp_path / "done-0").exists() and (tmp_path / "done-1").exists()
    assert StoreReader(tmp_path / "ints").committed_steps == 8  # checked again here, outside the ranks
    assert StoreReader(tmp_path / "strs").committed_steps == 8


def _check_killed_store(root):
    """Rank 0 died writing the commit of steps [2, 4): steps [0, 2) stand, the store verifies, recording resumes."""
    assert (root / "killed").read_text() == str(ranks.KILL_AT_COMMIT)
    path = root / "killed-store"
    assert StoreReader(path).committed_steps == 2
    assert verify_store(path).ok
    model = ranks.net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(path, model, opt, mode="a") as rec:  # resumes at step 2 (the tail of the dead flush dropped)
        assert rec.step == 2
        ranks.train(model, opt, rec, 0, 1, steps=3)
    r = StoreReader(path)
    assert r.committed_steps == 5 and r.index.samples_for(2).tolist() == list(range(8))
    assert verify_store(path).ok


def _one_process(path, plan):
    """The same training in one process: each step's batch is both ranks' batches together."""
    model = ranks.net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(path, model, opt, plan=plan, value_dtype="float32") as rec:
        ranks.train(model, opt, rec, 0, 1)
    return model


def test_fsdp2_store_does_not_depend_on_the_number_of_ranks_hf_trainer_under_ddp_and_a_killed_rank(tmp_path):
    """One spawn: FSDP2 (2 ranks vs one process, forget on shards and on the full model), the README's
    FSDP2 snippet, the HF Trainer on 2 ranks, then rank 0 killed mid-flush."""
    import torch.multiprocessing as mp

    pytest.importorskip("transformers")
    pytest.importorskip("datasets")

    with pytest.raises((mp.ProcessExitedException, mp.ProcessRaisedException)) as died:  # the kill at the end
        ranks.spawn(ranks.fsdp_then_kill_worker, str(tmp_path))
    # Every check before the kill passed (else: the failure, with its traceback).
    assert all((tmp_path / f).exists() for f in ("fsdp-done-0", "fsdp-done-1", "killed")), str(died.value)
    _check_killed_store(tmp_path)
    plans = {"dense": PruningPlan.dense(), "random": PruningPlan.uniform(0.5),
             "magnitude": PruningPlan.uniform(0.5, mode="magnitude")}
    for name, plan in plans.items():
        single = _one_process(tmp_path / f"one-{name}", plan)
        a, b = StoreReader(tmp_path / f"one-{name}"), StoreReader(tmp_path / f"fsdp-{name}")
        assert verify_store(tmp_path / f"fsdp-{name}").ok
        assert a.committed_steps == b.committed_steps == 8
        assert [t.name for t in a.manifest.tensors] == [t.name for t in b.manifest.tensors]
        for step in range(8):
            assert a.index.samples_for(step).tolist() == sorted(b.index.samples_for(step).tolist())
            ua, ub = a.sum_updates([step]).updates, b.sum_updates([step]).updates
            for t in ua:
                # Tolerance: the 2-rank gradient is a mean of two 4-sample means reduced by gloo,
                # the 1-process one a mean of 8: the same math in another summation order, so
                # float32 rounding grown over 8 SGD steps. Measured: max |diff| 3.0e-8 (updates
                # ~1e-3), about half the tensors bit-equal; atol 1e-7 leaves 3x headroom.
                assert torch.allclose(ua[t], ub[t], rtol=1e-4, atol=1e-7), (name, step, t, (ua[t] - ub[t]).abs().max())
    final = torch.load(tmp_path / "fsdp-final.pt", weights_only=True)
    for k, v in single.state_dict().items():
        assert torch.allclose(v, final[k], atol=1e-5), k
    # The sharded forget of ids 0-7 (steps 0 and 4) subtracted exactly those steps' stored updates.
    after = torch.load(tmp_path / "fsdp-after-forget.pt", weights_only=True)
    subtracted = StoreReader(tmp_path / "fsdp-random").sum_updates([0, 4]).updates
    for k, v in after.items():
        assert torch.allclose(v, final[k] - subtracted[k], atol=1e-6), k
    # The FSDP2 store forgets on the full (unsharded) model too: everything -> the initial weights.
    plain, initial = ranks.net(), ranks.net().state_dict()
    plain.load_state_dict(final)
    forget(plain, tmp_path / "fsdp-dense", list(range(ranks.SAMPLES)))
    for k, v in plain.state_dict().items():
        assert torch.allclose(v, initial[k], atol=1e-5), k
