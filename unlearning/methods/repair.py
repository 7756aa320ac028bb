"""Repair: a short fine-tune on retained data after a subtraction (Graves et al. 2021, amnesiac unlearning).

Subtracting whole batch updates removes the retained samples' share of those
steps too; a few steps on retained data put back what the model lost. This
is what Graves et al. do after amnesiac subtraction ("the model is then
trained for a small number of steps on the remaining data"). Cost: ``k``
optimizer steps of ``batch_size`` retained samples. Requirement: the retained
data (or a sample of it).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from deltastore.errors import InvalidArgumentError

__all__ = ["repair"]


def repair(
    model: nn.Module,
    x_retain: torch.Tensor,
    y_retain: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    device="cpu",
) -> dict:
    """``steps`` Adam steps (fresh optimizer) on random batches of the retained set; ``model`` changes in place.

    Batches are drawn without replacement within a pass over the retained set
    (a ``torch.Generator`` seeded by ``seed``); BatchNorm runs in train mode,
    as in training. Returns ``{"steps", "sample_gradients", "seconds"}``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InvalidArgumentError(f"steps: expected an integer >= 0, got {steps!r}")
    if int(batch_size) < 1:
        raise InvalidArgumentError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    n = int(y_retain.numel())
    if n == 0 and steps:
        raise InvalidArgumentError("repair: expected retained samples to train on, got none")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    was_training = model.training
    model.train()
    x_all, y_all = x_retain.to(device), y_retain.to(device)
    order = torch.empty(0, dtype=torch.int64)
    done = 0
    for _ in range(steps):
        if order.numel() < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=gen)])
        pos, order = order[:batch_size], order[batch_size:]
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x_all[pos.to(device)]), y_all[pos.to(device)])
        loss.backward()
        opt.step()
        done += pos.numel()
    model.train(was_training)
    return {"steps": steps, "sample_gradients": done, "seconds": time.perf_counter() - t0}
