"""Mixed precision: bf16 autocast over float32 master weights, and bfloat16 parameters, recorded and forgotten."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deltastore import Recorder
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader
from unlearning.forget import forget


def _net(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 4)).to(dtype)


def _train(model, opt, rec, autocast: bool, steps: int = 6):
    g = torch.Generator().manual_seed(2)
    for s in range(steps):
        x = torch.randn(8, 8, generator=g).to(next(model.parameters()).dtype)
        y = torch.randint(0, 4, (8,), generator=g)
        rec.samples(range(8 * s, 8 * s + 8))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("case", ["autocast-bf16-fp32-master", "bf16-parameters"])
def test_mixed_precision_recorded_and_forgotten(tmp_path, case):
    bf16_params = case == "bf16-parameters"
    model = _net(torch.bfloat16 if bf16_params else torch.float32)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    dense = Recorder(tmp_path / "dense", model, opt, plan=PruningPlan.dense(), value_dtype="float32")
    pruned = Recorder(tmp_path / "pruned", model, opt)  # the default: layer-wise random pruning, int8 values
    _train(model, opt, _Both(dense, pruned), autocast=not bf16_params)
    dense.close()
    pruned.close()
    r = StoreReader(tmp_path / "dense")
    assert r.committed_steps == 6
    assert {t.name: t.dtype for t in r.manifest.tensors}["0.weight"] == ("bfloat16" if bf16_params else "float32")
    final = {k: v.clone() for k, v in model.state_dict().items()}
    # Pruned store: forget two steps on a copy; only the recorded tensors move, the dtype stays.
    copy = _net(model[0].weight.dtype)
    copy.load_state_dict(final)
    receipt = forget(copy, tmp_path / "pruned", list(range(8, 24)))
    assert receipt.steps == [1, 2]
    assert all(v.dtype == final[k].dtype for k, v in copy.state_dict().items())
    assert any(not torch.equal(v, final[k]) for k, v in copy.state_dict().items())
    # Dense store: forget everything -> the initial weights. bf16 parameters: each step's change
    # is recorded exactly (the difference of two bf16 numbers in float32); the sum is rounded
    # to bf16 once, so the result is within one bf16 rounding (2^-8 relative) of the start.
    forget(model, tmp_path / "dense", list(range(48)))
    for k, v in model.state_dict().items():
        if bf16_params:
            assert torch.allclose(v.float(), initial[k].float(), rtol=2**-8, atol=1e-6), k
        else:
            assert torch.allclose(v, initial[k], atol=1e-5), k


class _Both:
    def __init__(self, *recs):
        self.recs = recs

    def samples(self, ids):
        for r in self.recs:
            r.samples(list(ids))
