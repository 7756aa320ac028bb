"""Small models and a recording loop shared by the engine tests."""

from __future__ import annotations

import torch
from torch import nn

from deltastore.plan import PruningPlan
from deltastore.record import Recorder


class TinyNet(nn.Module):
    """Conv + BatchNorm + two linears: weights (pruned), biases and BN buffers (dense)."""

    def __init__(self, seed: int = 0, width: int = 6):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.conv = nn.Conv2d(1, width, 3, padding=1)
            self.bn = nn.BatchNorm2d(width)
            self.fc1 = nn.Linear(width * 16, 24)
            self.fc2 = nn.Linear(24, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.avg_pool2d(x, 2).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def make_optimizer(name: str, params):
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.05)
    if name == "adam":
        return torch.optim.Adam(params, lr=1e-2)
    return torch.optim.SGD(params, lr=0.1)


def data(n: int = 96, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def train_steps(rec, model, opt, first: int, steps: int, batch: int = 8) -> None:
    """Steps ``first`` .. ``first + steps - 1`` of TinyNet on :func:`data`, batch ``s`` = ids ``s*batch`` onwards (wrapping)."""
    x, y = data()
    for s in range(first, first + steps):
        idx = torch.arange(s * batch, (s + 1) * batch) % x.shape[0]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        rec.samples(idx, epoch=0)
        opt.step()


def record(path, *, steps: int = 10, batch: int = 8, optimizer: str = "adam", plan: PruningPlan | None = None,
           value_dtype: str = "float32", seed: int = 0, capture: bool = False, model=None, **kw):
    """Train TinyNet for ``steps`` steps while recording. Returns (model, initial state, deltas).

    With ``capture``, ``deltas[s]`` holds the true change of every recorded tensor at step s
    (parameters across optimizer.step(), buffers since the previous step).
    """
    model = model if model is not None else TinyNet(seed)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = make_optimizer(optimizer, model.parameters())
    x, y = data(seed=seed)
    n = x.shape[0]
    deltas = []
    rec = Recorder(path, model, opt, plan=plan if plan is not None else PruningPlan.dense(), value_dtype=value_dtype, **kw)
    last = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    for s in range(steps):
        idx = torch.arange(s * batch, (s + 1) * batch) % n
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        rec.samples(idx, epoch=(s * batch) // n)
        opt.step()
        if capture:
            now = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
            deltas.append({k: now[k] - last[k] for k in now})
            last = now
    rec.close()
    return model, initial, deltas


class FailingLocalWrites:
    """Counts (and, with ``fail_at``, fails with ENOSPC) every write, create and delete through
    the local backend, under any wrapping seam (encryption included): the fault suites'
    "a failed write at every write point"."""

    METHODS = ("writer", "create", "delete")

    def __init__(self, monkeypatch, fail_at: int | None = None):
        from deltastore.storage.local import LocalStoreIO

        self.ops: list[str] = []
        for name in self.METHODS:
            real = getattr(LocalStoreIO, name)
            monkeypatch.setattr(LocalStoreIO, name, self._wrap(name, real, fail_at))

    def _wrap(self, name, real, fail_at):
        import errno

        def op(io, key, *a, **kw):
            self.ops.append(f"{name} {key}")
            if fail_at is not None and len(self.ops) - 1 == fail_at:
                raise OSError(errno.ENOSPC, "No space left on device (injected)", key)
            return real(io, key, *a, **kw)

        return op
