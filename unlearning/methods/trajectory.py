"""Replay a recorded training run: the weights before each step, rebuilt from checkpoints plus stored updates.

``w_t = checkpoint(c) + Σ_{c ≤ s < t} Δw_s`` with ``c`` the last checkpoint at
or before ``t``. Exact (to float32 rounding) on a dense float32 store; on a
pruned or int8 store the replay drifts from the real trajectory by the
dropped / rounded parts of the updates since ``c`` -- the reason for
periodic checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from deltastore.read import StoreReader
from deltastore.read.accumulators import Sums

__all__ = ["step_updates", "replay"]


def step_updates(reader: StoreReader, steps: list[int], *, block: int = 64) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield ``(step, {tensor name: dense update})`` for ``steps`` (ascending), reading ``block`` rows at a time."""
    groups = reader.manifest.groups
    for i in range(0, len(steps), block):
        chunk = steps[i : i + block]
        rows = {g.id: reader.read_rows(g.id, chunk) for g in groups}
        for j, s in enumerate(chunk):
            out: dict[str, torch.Tensor] = {}
            for g in groups:
                vals, idx = rows[g.id]
                sums = Sums([g], torch.device("cpu"))
                sums.add_rows(g, [s], vals[j : j + 1], None if idx is None else idx[j : j + 1], reader.masks)
                flat = sums.result(g)
                for name, off, n in zip(g.tensors, g.offsets, g.numels):
                    out[name] = flat[off : off + n].reshape(reader.manifest.tensor(name).shape)
            yield s, out


def replay(reader: StoreReader, start: dict[str, torch.Tensor], first: int, last: int) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield ``(t, w_t)`` for ``t = first .. last`` (inclusive), starting from ``start`` = ``w_first``.

    The yielded dict is updated in place after the consumer resumes: copy it
    to keep it.
    """
    w = {k: v.detach().clone().float() for k, v in start.items()}
    if last < first:
        return
    yield first, w
    for s, upd in step_updates(reader, list(range(first, last))):
        for name, d in upd.items():
            if name in w:
                w[name].add_(d)
        yield s + 1, w




def replay_steps(reader: StoreReader, start: dict[str, torch.Tensor], first: int, last: int) -> Iterator[tuple[int, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """Yield ``(t, w_t, Δw_t)`` for ``t = first .. last`` (inclusive, ``last`` < committed steps).

    ``w_t`` are the weights before step t (``start`` = ``w_first``), ``Δw_t`` its
    stored update; ``w`` is advanced in place after the consumer resumes.
    """
    w = {k: v.detach().clone().float() for k, v in start.items()}
    for s, upd in step_updates(reader, list(range(first, last + 1))):
        yield s, w, upd
        for name, d in upd.items():
            if name in w:
                w[name].add_(d)
