"""int4 values (deltastore.format.int4): packing, bounds, unbiased stochastic rounding, reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deltastore.errors import InvalidArgumentError
from deltastore.format import Int4Codec, Int8Codec, value_codec
from deltastore.format.int4 import group_rounding_key, rounding_key, step_rounding_key
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader

from .helpers import record


def _encode(codec: Int4Codec, v: torch.Tensor, key: int) -> dict[str, np.ndarray]:
    k = v.numel()
    rows = {"values": torch.empty((k + 1) // 2, dtype=torch.uint8), "scales": torch.empty(codec.num_blocks(k))}
    codec.encode_into(v, rows, rounding_key=key)
    return {"values": rows["values"].numpy()[None], "scales": rows["scales"].numpy()[None]}


def _vector(k: int, seed: int, scale: float) -> torch.Tensor:
    v = torch.randn(k, generator=torch.Generator().manual_seed(seed)) * scale
    v[::7] = 0.0
    return v


@settings(max_examples=40, deadline=None)
# k: the numpy path for small rows, the torch path above values.SMALL_VALUES (8192)
@given(k=st.one_of(st.integers(1, 700), st.integers(8000, 9000)), block=st.sampled_from([1, 3, 64, 256]), scale=st.sampled_from([1e-30, 1e-6, 1.0, 1e30]),
       seed=st.integers(0, 2**16), key=st.integers(0, 2**64 - 1))
def test_decoded_values_lie_within_one_step_and_match_the_reference(k, block, scale, seed, key):
    codec = Int4Codec(block)
    v = _vector(k, seed, scale)
    raw = _encode(codec, v, key)
    assert raw["values"].shape == (1, (k + 1) // 2) and raw["scales"].shape == (1, math.ceil(k / block))
    got = codec.decode(raw, k)[0]
    q, s = codec.quantize(v, key)
    assert q.min() >= -7 and q.max() <= 7
    assert torch.equal(got, codec.dequantize(q, s))  # the packed bytes hold exactly the codes
    assert torch.equal(torch.from_numpy(codec.unpack(raw["values"], k)[0]), q)
    step = s.repeat_interleave(block)[:k]
    assert torch.all((got - v).abs() <= step * (1 + 1e-6))  # stochastic rounding moves a value by less than one step
    assert torch.all(got[v == 0] == 0)
    if k % 2:
        assert raw["values"][0, -1] >> 4 == 0  # the unused high nibble of an odd row is zero


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), block=st.sampled_from([4, 64]))
def test_stochastic_rounding_is_unbiased_where_rounding_to_nearest_is_not(seed, block):
    codec = Int4Codec(block)
    k, draws = 256, 400
    v = torch.randn(k, generator=torch.Generator().manual_seed(seed))
    v[::block] = 3.0  # one fixed maximum per block: the scale, hence x = v / scale, is the same in every draw
    total = torch.zeros(k, dtype=torch.float64)
    for key in range(draws):
        q, s = codec.quantize(v, key)
        total += codec.dequantize(q, s).double()
    mean_err = total / draws - v.double()
    step = (s.repeat_interleave(block)[:k]).double()
    # Each draw errs by less than one step with mean zero: the mean of 400 lies within
    # 6 standard errors (<= 0.5 step / 20) of zero for every value.
    assert torch.all(mean_err.abs() <= 6 * 0.5 * step / math.sqrt(draws))
    qn, sn = codec.quantize(v, 0, nearest=True)
    bias_nearest = codec.dequantize(qn, sn).double() - v.double()  # the same in every draw: a bias
    assert bias_nearest.abs().mean() > 5 * mean_err.abs().mean()


@settings(max_examples=15, deadline=None)
@given(k=st.integers(2, 500), key=st.integers(0, 2**64 - 2))
def test_rounding_is_a_function_of_the_key(k, key):
    codec = Int4Codec(64)
    v = _vector(k, 1, 1.0) + 0.01  # no exact codes: every value is rounded up or down at random
    a, b, c = _encode(codec, v, key), _encode(codec, v, key), _encode(codec, v, key + 1)
    assert np.array_equal(a["values"], b["values"]) and np.array_equal(a["scales"], c["scales"])
    if k >= 64:
        assert not np.array_equal(a["values"], c["values"])


def test_the_rounding_key_separates_seed_step_and_group():
    keys = {rounding_key(seed, step, group) for seed in (0, 1) for step in (0, 1, 2) for group in (0, 1, 7)}
    assert len(keys) == 18
    assert rounding_key(0, 5, 3) == group_rounding_key(step_rounding_key(0, 5), 3)  # the writer's per-step cache


def test_all_zero_blocks_have_scale_zero_and_pack_to_zero_bytes():
    codec = Int4Codec(64)
    v = torch.zeros(200)
    v[150] = -2.5
    raw = _encode(codec, v, 3)
    assert raw["scales"][0, :2].tolist() == [0.0, 0.0] and raw["scales"][0, 2] == np.float32(2.5 / 7)
    assert not raw["values"][0, :64].any()  # zero codes: an all-zero update is an all-zero (unstored) chunk
    got = codec.decode(raw, 200)[0]
    assert torch.equal(got, torch.zeros(200).index_put_((torch.tensor([150]),), torch.tensor(-2.5)))


@pytest.mark.parametrize("special", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_spoil_their_block_only_as_in_int8(special):
    v = torch.linspace(-1, 1, 600)
    v[300] = special
    for codec in (Int4Codec(64), Int8Codec(64)):
        if isinstance(codec, Int4Codec):
            got = codec.decode(_encode(codec, v, 9), 600)[0]
        else:
            q, s = codec.quantize(v)
            got = codec.dequantize(q, s)
        bad = ~torch.isfinite(got)
        block = 300 // 64
        assert bad[block * 64 : (block + 1) * 64].all(), type(codec).__name__  # visible, never a plausible number
        assert not bad[: block * 64].any() and not bad[(block + 1) * 64 :].any()


def test_decoding_checks_the_width_and_needs_k():
    codec = Int4Codec(64)
    raw = _encode(codec, torch.randn(9), 1)
    assert codec.decode(raw, 9).shape == (1, 9) and codec.decode(raw, 10).shape == (1, 10)  # 9 and 10 both fit 5 bytes
    with pytest.raises(ValueError, match="expected 6 columns"):
        codec.decode(raw, 11)
    with pytest.raises(ValueError, match="needs k"):
        codec.decode(raw)
    with pytest.raises(InvalidArgumentError, match="rounding_key"):
        codec.encode_into(torch.randn(9), {"values": torch.empty(5, dtype=torch.uint8), "scales": torch.empty(1)})
    with pytest.raises(InvalidArgumentError, match="int8_block"):
        Int4Codec(0)
    assert value_codec("int4").bytes_per_step(129) == 65 + 3 * 4
    assert value_codec("int4").block == 64 and value_codec("int4", 32).block == 32


def test_packing_puts_the_even_value_in_the_low_nibble_twos_complement():
    codec = Int4Codec(4)
    v = torch.tensor([7.0, -7.0, 1.0, -1.0, 0.0])  # exact codes (no rounding): 7, -7, 1, -1, 0
    raw = _encode(codec, v, 0)
    assert raw["values"][0].tolist() == [0x97, 0xF1, 0x00]  # FORMAT.md §3's test vector
    assert raw["scales"][0].tolist() == [1.0, 0.0]


def test_an_int4_store_is_reproducible_and_reads_back_its_codes(tmp_path):
    plan = PruningPlan.layerwise(0.8, 0.4)
    record(tmp_path / "a", steps=6, plan=plan, value_dtype="int4", steps_per_shard=4, mask_seed=11)
    record(tmp_path / "b", steps=6, plan=plan, value_dtype="int4", steps_per_shard=4, mask_seed=11)
    ra, rb = StoreReader(tmp_path / "a"), StoreReader(tmp_path / "b")
    assert ra.manifest.value_dtype == "int4" and ra.manifest.int8_block == 64 and ra.manifest.codec == "blosc-lz4"
    for g in ra.manifest.groups:
        va, _ = ra.read_rows(g.id, range(6))
        vb, _ = rb.read_rows(g.id, range(6))
        assert torch.equal(va, vb)  # same run, same seed: the same stochastic rounding
    for p in sorted((tmp_path / "a").glob("g*/values/c/*/*")):
        assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes()


def test_a_damaged_int4_shard_is_an_error_never_a_different_model(tmp_path):
    """The fault matrix's shard cases on an int4 store: packed codes and scales are checksummed like int8's."""
    import shutil

    from deltastore.errors import DeltaStoreError
    from deltastore.verify import verify_store
    from unlearning.forget import forget

    store = tmp_path / "s"
    model, _, _ = record(store, steps=4, batch=8, plan=PruningPlan.layerwise(0.8, 0.4), value_dtype="int4", steps_per_shard=2)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    expected = {k: v.clone() for k, v in state.items()}
    shutil.copytree(store, tmp_path / "probe")
    forget(expected, tmp_path / "probe", [3, 17])
    assert any(not torch.equal(expected[k], state[k]) for k in state)
    shards = sorted(p for p in store.glob("g0000/*/c/0/0") if p.is_file())  # the first shard of a pruned weight
    assert {p.parts[-4] for p in shards} == {"values", "scales"}
    errors = 0
    for rel in (p.relative_to(store) for p in shards):
        raw = (store / rel).read_bytes()
        for new in (bytes([raw[0] ^ 1]) + raw[1:], raw[: len(raw) // 2] + bytes([raw[len(raw) // 2] ^ 0x10]) + raw[len(raw) // 2 + 1 :],
                    raw[:-1] + bytes([raw[-1] ^ 0x80]), raw[: len(raw) // 2], None):
            copy = tmp_path / "c"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(store, copy)
            if new is None:
                (copy / rel).unlink()
            else:
                (copy / rel).write_bytes(new)
            assert not verify_store(copy).ok, (rel, "verify missed the damage")
            m = {k: v.clone() for k, v in state.items()}
            try:
                forget(m, copy, [3, 17])
            except DeltaStoreError:
                assert all(torch.equal(m[k], state[k]) for k in state), rel
                errors += 1
            else:  # a shard the request does not read
                assert all(torch.equal(m[k], expected[k]) for k in expected), (rel, "a damaged store gave a different model")
    assert errors > 0
