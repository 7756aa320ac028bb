"""Sums (deltastore.read.accumulators): batched adds equal one-row-at-a-time adds, bit for bit."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deltastore.format import Group
from deltastore.masks import MaskGenerator
from deltastore.plan import TensorSpec
from deltastore.read.accumulators import Sums
from deltastore.selection import ALL, MAGNITUDE, RANDOM


@settings(max_examples=40, deadline=None)
@given(sel=st.sampled_from([ALL, RANDOM, MAGNITUDE]), rows=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_rows_added_in_any_batching_give_the_same_bits(sel, rows, seed):
    n, k = 40, 40 if sel is ALL else 13
    g = Group(0, ("a", "b"), (0, 10), (10, 30), k, sel)
    masks = MaskGenerator(seed, 2)
    gen = torch.Generator().manual_seed(seed)
    steps = list(range(seed % 7, seed % 7 + rows))
    vals = torch.randn(rows, k, generator=gen)
    idx = torch.stack([torch.randperm(n, generator=gen)[:k].sort().values for _ in range(rows)]) if sel is MAGNITUDE else None
    whole, parts = Sums([g], torch.device("cpu")), Sums([g], torch.device("cpu"))
    whole.add_rows(g, steps, vals, idx, masks)
    for j, s in enumerate(steps):
        parts.add_rows(g, [s], vals[j : j + 1], None if idx is None else idx[j : j + 1], masks)
    a, b = whole.result(g), parts.result(g)
    assert a.shape == (n,) and torch.equal(a, b)


def test_tensors_are_cut_out_and_shaped_as_recorded():
    g = Group(0, ("a", "b"), (0, 6), (6, 4), 10, ALL)

    class M:  # the part of a Manifest that tensors() reads
        @staticmethod
        def tensor(name):
            return {"a": TensorSpec("a", (2, 3), "float32"), "b": TensorSpec("b", (4,), "float32")}[name]

    sums = Sums([g], torch.device("cpu"))
    sums.add_rows(g, [0], torch.arange(10.0)[None], None, None)
    out = sums.tensors(M, [g])
    assert torch.equal(out["a"], torch.arange(6.0).reshape(2, 3)) and torch.equal(out["b"], torch.arange(6.0, 10.0))
