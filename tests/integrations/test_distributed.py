"""DDP and FSDP2 recording with 2 CPU ranks (gloo on 127.0.0.1, torch.multiprocessing spawn).

Spawning ranks costs seconds, so each test runs one spawn that checks several things
(see the workers in ranks.py).
"""

from __future__ import annotations

import json

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


def _check_per_rank_writes(root, stores):
    """Each rank wrote the shards of exactly the groups the plan gave it, both ranks wrote, no shard twice."""
    seen = [json.loads((root / f"fsdp-writes-{r}.json").read_text()) for r in range(ranks.WORLD)]
    for store in stores:
        owners = seen[0]["owners"][store]
        assert owners == seen[1]["owners"][store], store  # one plan, computed alike on every rank
        manifest = StoreReader(root / store).manifest
        by_rank = [[(path, start) for name, path, start in s["written"] if name == store] for s in seen]
        for r, writes in enumerate(by_rank):
            expected = {f"{g.path}/{a}" for g, o in zip(manifest.groups, owners) if o == r for a in manifest.arrays(g)}
            assert writes and {p for p, _ in writes} == expected, (store, r, writes, expected)
        assert not set(by_rank[0]) & set(by_rank[1]), store


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
    _check_per_rank_writes(tmp_path, [f"fsdp-{name}" for name in plans])
    # Who writes does not change a bit: per-rank writes vs rank 0 writing all, same training.
    spread, coord = StoreReader(tmp_path / "fsdp-random"), StoreReader(tmp_path / "fsdp-random-coordinator")
    assert set(json.loads((tmp_path / "fsdp-writes-1.json").read_text())["owners"]["fsdp-random-coordinator"]) == {0}
    for step in range(8):
        us, uc = spread.sum_updates([step]).updates, coord.sum_updates([step]).updates
        assert all(torch.equal(us[t], uc[t]) for t in us), step
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
    # Weights sharded along dim 1 and biases gathered whole (the fallback for other layouts): same updates.
    a, b = StoreReader(tmp_path / "one-dense"), StoreReader(tmp_path / "fsdp-layouts")
    assert verify_store(tmp_path / "fsdp-layouts").ok and b.committed_steps == 8
    for step in range(8):
        ua, ub = a.sum_updates([step]).updates, b.sum_updates([step]).updates
        assert all(torch.allclose(ua[t], ub[t], rtol=1e-4, atol=1e-7) for t in ua), step
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


def test_fsdp2_on_one_rank_records_what_one_plain_process_records(tmp_path):
    ranks.spawn(ranks.fsdp_one_rank_worker, str(tmp_path), nprocs=1)
    _one_process(tmp_path / "plain", PruningPlan.uniform(0.5))
    a, b = StoreReader(tmp_path / "plain"), StoreReader(tmp_path / "fsdp-one-rank")
    assert verify_store(tmp_path / "fsdp-one-rank").ok and a.committed_steps == b.committed_steps == 8
    for step in range(8):
        ua, ub = a.sum_updates([step]).updates, b.sum_updates([step]).updates
        for t in ua:  # the same batch, the same math on one rank (same tolerance as the 2-rank test)
            assert torch.allclose(ua[t], ub[t], rtol=1e-4, atol=1e-7), (step, t, (ua[t] - ub[t]).abs().max())
