"""The plan of per-rank writes (which rank writes each group) and the shard layout the exchange assumes."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deltastore.format import build_groups
from deltastore.plan import PruningPlan, TensorSpec
from deltastore.record.exchange import chunk_shapes, group_step_bytes, plan_owners
from deltastore.record.options import RecordOptions
from deltastore.record.store import create_store
from deltastore.storage import open_io

shapes = st.lists(st.tuples(st.integers(1, 40), st.integers(1, 12)), min_size=1, max_size=12)


def _manifest(tmp_path_factory, dims):
    specs = [TensorSpec(f"t{i}.weight", d, "float32", "parameter") for i, d in enumerate(dims)]
    io = open_io(tmp_path_factory.mktemp("plan") / "s.ds")
    return create_store(io, specs, RecordOptions.from_kwargs(plan=PruningPlan.uniform(0.5), value_dtype="float32"))[0]


@settings(max_examples=30, deadline=None)
@given(dims=shapes, world=st.integers(1, 5), pinned=st.sets(st.integers(0, 11)))
def test_plan_is_deterministic_balanced_and_keeps_pinned_groups_on_rank_0(tmp_path_factory, dims, world, pinned):
    m = _manifest(tmp_path_factory, dims)
    movable = lambda g: g.id not in pinned  # noqa: E731
    owners = plan_owners(m, world, movable)
    assert owners == plan_owners(m, world, movable)  # what every rank computes alone
    assert len(owners) == len(m.groups) and all(0 <= o < world for o in owners)
    assert all(o == 0 for g, o in zip(m.groups, owners) if g.id in pinned)
    sizes = [group_step_bytes(m, g) for g in m.groups]
    load = [sum(s for s, o in zip(sizes, owners) if o == r) for r in range(world)]
    spread = [s for g, s in zip(m.groups, sizes) if movable(g)]
    if spread:  # greedy largest-first: no rank above the lightest by more than one movable group,
        # unless rank 0 is loaded by pinned groups alone
        pinned_load = sum(s for g, s in zip(m.groups, sizes) if not movable(g))
        assert max(load) <= max(min(load) + max(spread), pinned_load), (load, sizes, owners)


@given(n=st.integers(0, 30), cols=st.integers(1, 4), world=st.integers(1, 6), dim=st.integers(0, 1))
def test_chunk_shapes_are_torch_chunk_padded_with_empty_shards(n, cols, world, dim):
    shape = (n, cols) if dim == 0 else (cols, n)
    t = torch.zeros(shape)
    chunks = list(torch.chunk(t, world, dim=dim)) if n else []
    expected = [tuple(c.shape) for c in chunks]
    empty = tuple(0 if i == dim else s for i, s in enumerate(shape))
    expected += [empty] * (world - len(expected))
    assert chunk_shapes(shape, dim, world) == expected


def test_groups_of_a_manifest_have_their_bytes_per_step():
    specs = [TensorSpec("w", (10, 6), "float32", "parameter")]
    (g,) = build_groups(specs, PruningPlan.uniform(0.5))
    from deltastore.format import group_arrays, value_codec

    m = type("M", (), {"arrays": lambda self, g: group_arrays(g, value_codec("float32", 256))})()
    assert group_step_bytes(m, g) == 30 * 4  # k = 30 float32 values, no indices (random masks)
