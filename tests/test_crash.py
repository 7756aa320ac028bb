"""DESIGN invariant 6 under real crashes: a recording process SIGKILLed at random points
always leaves a store that opens with every committed step intact, and recording resumes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from deltastore.read import StoreReader
from deltastore.record import Recorder
from deltastore.verify import verify_store

from .helpers import TinyNet, data, make_optimizer

ROOT = Path(__file__).resolve().parents[1]
BATCH = 8

CHILD = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {root!r})
    from tests.helpers import TinyNet, data, make_optimizer
    from deltastore.plan import PruningPlan
    from deltastore.record import Recorder
    torch.set_num_threads(1)
    model = TinyNet(0)
    opt = make_optimizer("sgd-momentum", model.parameters())
    x, y = data()
    rec = Recorder(sys.argv[1], model, opt, plan=PruningPlan.{plan}, value_dtype="float32", steps_per_shard={sps})
    print("started", flush=True)
    s = 0
    while True:
        idx = torch.arange(s * {batch}, (s + 1) * {batch}) % x.shape[0]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        rec.samples(idx, epoch=0)
        opt.step()
        s += 1
    """
)


def _replay(steps: int) -> dict[str, torch.Tensor]:
    """The same deterministic training, in process, for ``steps`` steps."""
    torch.set_num_threads(1)
    model = TinyNet(0)
    opt = make_optimizer("sgd-momentum", model.parameters())
    x, y = data()
    for s in range(steps):
        idx = torch.arange(s * BATCH, (s + 1) * BATCH) % x.shape[0]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(int(os.environ.get("DELTASTORE_CRASH_TRIALS", "8"))))
def test_sigkill_at_a_random_point_leaves_a_consistent_store(tmp_path, trial):
    rng = random.Random(1000 + trial)
    plan = "dense()" if trial % 2 == 0 else "layerwise()"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(ROOT), plan=plan, sps=rng.choice([1, 2, 3]), batch=BATCH))
    store = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, str(script), str(store)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "started", proc.stderr.read()
        time.sleep(rng.uniform(0.0, 0.6))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()  # reap it and close its pipes
    reader = StoreReader(store)
    n = reader.committed_steps
    print(f'trial {trial}: killed after {n} committed steps')
    report = verify_store(store)
    assert report.ok, [str(p) for p in report.problems]
    x, _ = data()
    for s in range(n):
        expect = (torch.arange(s * BATCH, (s + 1) * BATCH) % x.shape[0]).sort().values
        assert reader.index.samples_for(s).tolist() == expect.tolist()
    if plan == "dense()" and n:
        # Committed steps are exactly the training's changes: w_0 + sum = replayed w_n.
        total = reader.sum_updates(range(n)).updates
        w0, wn = TinyNet(0).state_dict(), _replay(n)
        for name, upd in total.items():
            assert torch.allclose(w0[name] + upd, wn[name], atol=1e-5), name
    # Reopen for append: the uncommitted tail is dropped and recording resumes at step n.
    model = TinyNet(0)
    opt = make_optimizer("sgd-momentum", model.parameters())
    xx, yy = data()
    with Recorder(store, model, opt, mode="a") as rec:
        assert rec.step == n
        for _ in range(2):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xx[:4]), yy[:4]).backward()
            rec.samples([1000, 1001])
            opt.step()
    r2 = StoreReader(store)
    assert r2.committed_steps == n + 2
    assert r2.index.steps_for([1000]).tolist() == [n, n + 1]
    assert verify_store(store).ok
