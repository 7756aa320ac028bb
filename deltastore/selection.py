"""Which positions of an update are kept: seeded random masks and top-|Δw|.

Shared by the recorder (record-time pruning) and the reader (unlearn-time
pruning of a dense store), so both select exactly the same positions.
"""

from __future__ import annotations

import torch

from .masks import MaskGenerator


def random_positions(gen: MaskGenerator, step: int, group: int, n: int, k: int, device=None) -> torch.Tensor:
    """Kept positions of ``step`` in value order: (B_p[j] + o) mod n, B_p sorted ascending."""
    return gen.positions(step, group, n, k, device=device)


def select_top_magnitude(delta: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (ascending, int64) of the k largest |delta|; ties go to the lower index.

    The tie rule makes the choice a function of the values alone (torch.topk's
    order among equal values is unspecified), so a dense store pruned at
    unlearning time selects exactly what the recorder would have.
    """
    n = delta.numel()
    if k >= n:
        return torch.arange(n, device=delta.device)
    if k <= 0:
        return torch.empty(0, dtype=torch.int64, device=delta.device)
    mag = delta.abs().reshape(-1)
    threshold = torch.topk(mag, k, sorted=False).values.min()
    above = torch.nonzero(mag > threshold).reshape(-1)
    ties = torch.nonzero(mag == threshold).reshape(-1)[: k - above.numel()]
    idx = torch.cat([above, ties])
    return torch.sort(idx).values
