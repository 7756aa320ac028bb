"""Which positions of an update a group keeps, as one small strategy object per rule.

``all`` (dense: every position, in order), ``random`` (seeded mask regenerated
from (seed, step, group): no indices stored) and ``magnitude`` (top-|Δw|,
indices stored; a multi-tensor magnitude group is global pruning). The recorder
selects with :meth:`Selection.select`; the reader and the unlearn-time plan add
rows into a dense accumulator with :meth:`Selection.add_row` -- the one scatter
path of the engine.
"""

from __future__ import annotations

import torch

from .errors import FormatVersionError
from .masks import MaskGenerator


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
    return torch.sort(torch.cat([above, ties])).values


class Selection:
    """The rule of one group. Groups carry an instance; compare with ``is`` or by ``name``."""

    name = ""
    stores_indices = False  # the kept positions are stored beside the values
    positions_before_step = False  # the kept positions are known before the optimizer step

    def select(self, flat: torch.Tensor, step: int, group, masks: MaskGenerator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(kept values, stored indices or None) of a group's flat update (or weights) at ``step``."""
        raise NotImplementedError

    def acc_size(self, group) -> int:
        """Elements of the dense accumulator :meth:`add_row` adds into."""
        return group.n

    def row_context(self, masks: MaskGenerator, group, step: int, device) -> object:
        """What :meth:`add_row` needs besides the stored row (computed ahead, on reader threads)."""
        return None

    def add_row(self, acc: torch.Tensor, group, values: torch.Tensor, indices: torch.Tensor | None, context) -> None:
        """Add one step's kept values at their positions: every position at most once."""
        raise NotImplementedError

    def fold(self, acc: torch.Tensor, group) -> torch.Tensor:
        """The accumulator as the group's dense (n,) sum."""
        return acc

    def __repr__(self) -> str:
        return f"Selection({self.name!r})"


class _All(Selection):
    name = "all"

    def select(self, flat, step, group, masks):
        return flat, None

    def add_row(self, acc, group, values, indices, context):
        acc.add_(values)


class _Random(Selection):
    """Kept positions of step s: (B_p[j] + o) mod n, B_p a sorted base set (docs/MASKS.md).

    The accumulator is doubled: position (B[j] + o) mod n lands at acc[o + B[j]],
    no modulo per value; the halves are folded once at the end.
    """

    name = "random"
    positions_before_step = True

    def select(self, flat, step, group, masks):
        return masks.gather(flat, step, group.id, group.k), None

    def acc_size(self, group) -> int:
        return 2 * group.n

    def row_context(self, masks, group, step, device):
        p, o = masks.rotation(step, group.id, group.n)
        return o, masks.base(group.id, p, group.n, group.k, device=device)

    def add_row(self, acc, group, values, indices, context):
        o, base = context
        acc.narrow(0, o, group.n).index_add_(0, base, values)

    def fold(self, acc, group):
        return acc[: group.n] + acc[group.n :]


class _Magnitude(Selection):
    name = "magnitude"
    stores_indices = True

    def select(self, flat, step, group, masks):
        idx = select_top_magnitude(flat, group.k)
        return flat.index_select(0, idx), idx

    def add_row(self, acc, group, values, indices, context):
        acc.index_add_(0, indices, values)


ALL, RANDOM, MAGNITUDE = _All(), _Random(), _Magnitude()
SELECTIONS = {s.name: s for s in (ALL, RANDOM, MAGNITUDE)}


def parse_selection(name: str, where: str = "group") -> Selection:
    try:
        return SELECTIONS[name]
    except (KeyError, TypeError):
        raise FormatVersionError(f"{where}: unknown selection {name!r}, expected one of {tuple(SELECTIONS)}") from None
