"""Selections (deltastore.selection): what select() keeps, add_row() puts back at the same positions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deltastore.errors import FormatVersionError
from deltastore.format import Group
from deltastore.masks import MaskGenerator
from deltastore.selection import ALL, MAGNITUDE, RANDOM, SELECTIONS, parse_selection, select_top_magnitude


def _group(sel, n: int, k: int) -> Group:
    return Group(3, ("w",), (0,), (n,), k, sel)


@settings(max_examples=60, deadline=None)
@given(sel=st.sampled_from([ALL, RANDOM, MAGNITUDE]), n=st.integers(1, 300), frac=st.floats(0.0, 1.0),
       step=st.integers(0, 10**6), seed=st.integers(0, 2**32))
def test_select_then_add_row_rebuilds_the_kept_part_of_the_update(sel, n, frac, step, seed):
    k = n if sel is ALL else max(0, min(n, round(frac * n)))
    g = _group(sel, n, k)
    masks = MaskGenerator(seed, 2)
    delta = torch.randn(n, generator=torch.Generator().manual_seed(seed % 1000)) + 0.01
    values, idx = sel.select(delta, step, g, masks)
    assert values.shape == (k,) and (idx is not None) == sel.stores_indices
    acc = torch.zeros(sel.acc_size(g))
    sel.add_row(acc, g, values, idx, sel.row_context(masks, g, step, torch.device("cpu")))
    dense = sel.fold(acc, g)
    kept = dense != 0
    assert int(kept.sum()) == k  # exactly k positions, each once
    assert torch.equal(dense[kept], delta[kept])  # at the positions the values came from
    if sel is RANDOM:
        assert torch.equal(torch.sort(torch.nonzero(kept).reshape(-1)).values, torch.sort(masks.positions(step, g.id, n, k)).values)
    if sel is MAGNITUDE and 0 < k < n:
        assert delta.abs()[kept].min() >= delta.abs()[~kept].max()


def test_top_magnitude_breaks_ties_towards_the_lower_index():
    assert select_top_magnitude(torch.tensor([1.0, -2.0, 2.0, 2.0, 0.5]), 2).tolist() == [1, 2]


def test_selections_by_name_and_unknown_names():
    assert {s: SELECTIONS[s].name for s in SELECTIONS} == {"all": "all", "random": "random", "magnitude": "magnitude"}
    assert parse_selection("random") is RANDOM
    with pytest.raises(FormatVersionError, match="unknown selection 'pickle'"):
        parse_selection("pickle")
