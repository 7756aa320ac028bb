"""DESIGN invariants 1 and 3: what is written is what is read; dense lossless sums undo training."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deltastore.format import Int8Codec
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader
from deltastore.selection import select_top_magnitude

from .helpers import record

PLANS = {
    "random": PruningPlan.layerwise(0.9, 0.5),
    "magnitude": PruningPlan.layerwise(0.8, 0.3, mode="magnitude"),
    "global": PruningPlan.uniform(0.7, mode="global"),
    "dense": PruningPlan.dense(),
}


def _expected_pruned(reader: StoreReader, step: int, delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the store should hold for one step, computed independently from the true deltas."""
    out = {}
    for g in reader.manifest.groups:
        flat = torch.cat([delta[t].float().reshape(-1) for t in g.tensors])
        keep = torch.zeros(g.n, dtype=torch.bool)
        if g.selection.name == "all":
            keep[:] = True
        elif g.selection.name == "random":
            keep[reader.masks.positions(step, g.id, g.n, g.k)] = True
        else:
            keep[select_top_magnitude(flat, g.k)] = True
        pruned = torch.where(keep, flat, torch.zeros_like(flat))
        for name, off, n in zip(g.tensors, g.offsets, g.numels):
            out[name] = pruned[off : off + n].reshape(reader.manifest.tensor(name).shape)
    return out


def _round(t: torch.Tensor, value_dtype: str, block: int) -> torch.Tensor:
    if value_dtype == "float32":
        return t
    if value_dtype == "int8":
        codec = Int8Codec(block)
        q, s = codec.quantize(t.reshape(-1))
        return codec.dequantize(q, s).reshape(t.shape)
    return t.to(getattr(torch, value_dtype)).float()


@settings(max_examples=12)
@given(
    mode=st.sampled_from(sorted(PLANS)),
    value_dtype=st.sampled_from(["float32", "float16", "bfloat16", "int8"]),
    optimizer=st.sampled_from(["sgd-momentum", "adamw"]),
    seed=st.integers(0, 2**16),
    steps_per_shard=st.sampled_from([1, 3, 8]),
)
def test_write_then_read_returns_the_pruned_update(mode, value_dtype, optimizer, seed, steps_per_shard):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s"
        _, _, deltas = record(path, steps=7, optimizer=optimizer, plan=PLANS[mode], value_dtype=value_dtype,
                              seed=seed, capture=True, steps_per_shard=steps_per_shard, mask_seed=seed)
        r = StoreReader(path)
        assert r.committed_steps == 7
        for s in (0, 3, 6):
            expected = _expected_pruned(r, s, deltas[s])
            for name, exp in expected.items():
                got = r.read_step(s, name)
                if value_dtype == "int8":
                    # Nothing outside the kept positions; kept values within half a quantisation step
                    # (a block's scale is at most the tensor's max |value| / 127).
                    assert not bool(((got != 0) & (exp == 0)).any()), name
                    group = r.manifest.group_of(name)  # blocks may span a global group's tensors
                    scale = max(float(expected[t].abs().max()) for t in group.tensors) / 127
                    assert float((got - exp).abs().max()) <= float(scale) * 0.5 + 1e-12, name
                else:
                    assert torch.equal(got, _round(exp, value_dtype, r.manifest.int8_block)), (name, s)


def test_int8_round_trip_error_is_bounded_by_half_a_scale_step():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(1000, generator=g) * torch.logspace(-6, 0, 1000)
    q, s = Int8Codec(256).quantize(v)
    back = Int8Codec(256).dequantize(q, s)
    per_elem_scale = s.repeat_interleave(256)[:1000]
    assert bool(((back - v).abs() <= per_elem_scale / 2 + 1e-12).all())


@settings(max_examples=6)
@given(optimizer=st.sampled_from(["sgd-momentum", "adamw"]), seed=st.integers(0, 1000))
def test_dense_lossless_store_summed_over_all_steps_returns_the_initial_model(optimizer, seed):
    with tempfile.TemporaryDirectory() as d:
        model, initial, _ = record(Path(d) / "s", steps=12, optimizer=optimizer, seed=seed, steps_per_shard=5)
        r = StoreReader(Path(d) / "s")
        total = r.sum_updates(range(r.committed_steps)).updates
        state = model.state_dict()
        moved = 0.0
        for name, upd in total.items():
            restored = state[name] - upd
            moved = max(moved, float((state[name] - initial[name]).abs().max()))
            assert torch.allclose(restored, initial[name], atol=1e-5, rtol=1e-5), name
        assert moved > 1e-3  # training really changed the model
        # Every float tensor of the model is recorded: BatchNorm running statistics too.
        assert {"bn.running_mean", "bn.running_var"} <= set(total)
        assert "bn.num_batches_tracked" not in total


def test_sum_updates_equals_sum_of_read_steps(tmp_path):
    record(tmp_path / "s", steps=9, plan=PLANS["random"], value_dtype="bfloat16", steps_per_shard=4)
    r = StoreReader(tmp_path / "s")
    steps = [0, 2, 5, 8]
    total = r.sum_updates(steps).updates
    for name in total:
        manual = sum(r.read_step(s, name) for s in steps)
        assert torch.allclose(total[name], manual, atol=1e-7), name
