"""The forgetting methods ``forget(..., method=...)`` offers, with what each needs.

``"amnesiac"`` (default): the stored updates of every step that saw the ids are
subtracted (the store's own plan, or ``plan=``). Needs: the store.

``"amnesiac+repair"``: the same, then ``repair_steps`` Adam steps on retained
data (Graves et al. 2021). On the efficacy testbed (benchmarks/EFFICACY.md) it is
the method closest to retraining at ≤ 1/10 of retraining's gradient work. Needs:
the store and retained data (``retained=(x, y)``: inputs and training labels of
samples that are *not* being forgotten), and a model that is an ``nn.Module``.
The repair is part of the request that asked for it: the ledger records the
method and its parameters, and the entry's ``fingerprint_after`` is the repaired
model's. A later request or a restore derives its weights from the trained
weights and the live requests again and applies only its own method, so the
model stays a function of (live requests, the last request's method).

Sample-precise removal (:func:`unlearning.methods.precise_removal`) is not
offered here: on the testbed it broke the model (see EFFICACY.md).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from deltastore.errors import InvalidArgumentError

from .repair import repair

__all__ = ["METHODS", "MethodOptions", "parse_method", "apply_method"]

METHODS: dict[str, str] = {
    "amnesiac": "store",
    "amnesiac+repair": "store, retained data (retained=(x, y)), an nn.Module model",
}


@dataclass(frozen=True)
class MethodOptions:
    """Options of ``method="amnesiac+repair"`` (ignored by ``"amnesiac"``)."""

    retained: tuple | None = None  # (x, y) tensors of retained samples, training labels
    repair_steps: int = 0
    repair_lr: float = 1e-3
    repair_batch_size: int = 64
    seed: int = 0


def parse_method(method: str, options: MethodOptions, model) -> str:
    """Check ``method`` and what it needs, before anything is read or changed."""
    if method not in METHODS:
        raise InvalidArgumentError(f"method: expected one of {sorted(METHODS)}, got {method!r}")
    if method == "amnesiac+repair":
        if not isinstance(model, nn.Module):
            raise InvalidArgumentError(f"method='amnesiac+repair' trains the model: expected an nn.Module, got {type(model).__name__}")
        r = options.retained
        if not (isinstance(r, tuple) and len(r) == 2 and all(isinstance(t, torch.Tensor) for t in r) and len(r[0]) == len(r[1]) and len(r[0])):
            raise InvalidArgumentError("method='amnesiac+repair' needs retained=(x, y): non-empty tensors of retained inputs and labels of equal length")
        if isinstance(options.repair_steps, bool) or not isinstance(options.repair_steps, int) or options.repair_steps < 1:
            raise InvalidArgumentError(f"repair_steps: expected an integer >= 1, got {options.repair_steps!r}")
    return method


def apply_method(method: str, options: MethodOptions, model, named: dict, new: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The weights the request commits, and the parameters to record in its ledger entry.

    ``named``: the model's recorded tensors by name; ``new``: the subtraction's result
    for (some of) them. The model itself is not changed here (a scratch copy trains).
    """
    if method == "amnesiac":
        return new, None
    scratch = copy.deepcopy(model)
    state = {**{n: t.detach() for n, t in named.items()}, **new}
    own = dict(scratch.named_parameters())
    own.update(dict(scratch.named_buffers()))
    with torch.no_grad():
        for n, t in state.items():
            own[n].copy_(t)
    x, y = options.retained
    dev = next(iter(own.values())).device
    info = repair(scratch, x, y, steps=options.repair_steps, batch_size=options.repair_batch_size,
                  lr=options.repair_lr, seed=options.seed, device=dev)
    out = {n: own[n].detach().clone() for n in named}
    params = {"repair_steps": info["steps"], "repair_lr": options.repair_lr, "repair_batch_size": options.repair_batch_size,
              "seed": options.seed, "retained_samples": int(len(y)), "repair_seconds": info["seconds"]}
    return out, params
