"""Value codecs (deltastore.format.values): the recorder's fast paths equal the reference, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deltastore.errors import InvalidArgumentError
from deltastore.format import VALUE_DTYPES, FloatCodec, Int8Codec, parse_value_dtype, value_codec


def _encode_cpu(codec: Int8Codec, v: torch.Tensor):
    rows = {"values": torch.empty(v.numel(), dtype=torch.int8), "scales": torch.empty(codec.num_blocks(v.numel()))}
    codec.encode_into(v, rows)
    return rows["values"], rows["scales"]


@settings(max_examples=40, deadline=None)
@given(
    k=st.one_of(st.integers(1, 2000), st.integers(8000, 9000)),  # the numpy path for small rows, torch above 8192
    block=st.sampled_from([1, 3, 64, 256]),
    scale=st.sampled_from([1e-40, 1e-6, 1.0, 1e30]),
    seed=st.integers(0, 2**16),
)
def test_int8_cpu_encoding_equals_the_reference_quantiser(k, block, scale, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(k, generator=g) * scale
    v[::5] = 0.0
    codec = Int8Codec(block)
    q, s = _encode_cpu(codec, v)
    q0, s0 = codec.quantize(v)
    assert torch.equal(q, q0)
    assert torch.equal(s, s0)


@pytest.mark.parametrize("special", [float("nan"), float("inf"), -0.0])
def test_int8_cpu_encoding_handles_special_values_like_the_reference(special):
    v = torch.linspace(-1, 1, 600)
    v[300] = special
    v[:256] = 0.0
    codec = Int8Codec(256)
    q, s = _encode_cpu(codec, v)
    q0, s0 = codec.quantize(v)
    assert torch.equal(q, q0)
    assert torch.equal(s.nan_to_num(-1.0), s0.nan_to_num(-1.0))


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 3), k=st.integers(1, 700), block=st.sampled_from([1, 7, 256]), seed=st.integers(0, 2**16))
def test_int8_decode_is_bit_identical_to_dequantize(rows, k, block, seed):
    g = torch.Generator().manual_seed(seed)
    codec = Int8Codec(block)
    qs, ss = zip(*(codec.quantize(torch.randn(k, generator=g) * 3) for _ in range(rows)))
    q, s = torch.stack(qs), torch.stack(ss)
    assert torch.equal(codec.decode({"values": q.numpy(), "scales": s.numpy()}), codec.dequantize(q, s))


def test_int8_round_trip_error_is_at_most_half_a_step_per_block():
    v = torch.randn(1000) * torch.logspace(-3, 3, 1000)
    codec = Int8Codec(256)
    q, s = codec.quantize(v)
    err = (codec.dequantize(q, s) - v).abs()
    step = s.repeat_interleave(256)[:1000]
    assert torch.all(err <= step / 2 + 1e-7 * v.abs())


@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16"])
def test_float_codecs_store_the_rounded_value_and_decode_to_float32(name):
    codec = value_codec(name)
    assert isinstance(codec, FloatCodec)
    v = torch.randn(2, 37)
    rows = torch.empty(2, 37, dtype=codec.torch_dtype("values"))
    for r in range(2):
        codec.encode_into(v[r], {"values": rows[r]})
    stored = codec.as_numpy(rows)
    (cols, dtype, _), = codec.arrays(37).values()
    assert stored.dtype == dtype and cols == 37
    back = codec.decode({"values": stored})
    assert back.dtype == torch.float32
    assert torch.equal(back, v.to(getattr(torch, name)).float())


def test_bytes_per_step_counts_every_array():
    assert value_codec("float32").bytes_per_step(100) == 400
    assert value_codec("bfloat16").bytes_per_step(100) == 200
    assert value_codec("int8", 64).bytes_per_step(100) == 100 + 2 * 4  # two blocks, one float32 scale each
    assert list(value_codec("int8").arrays(10)) == ["values", "scales"]


def test_bad_value_formats_are_refused_with_what_was_expected():
    with pytest.raises(InvalidArgumentError, match="expected one of"):
        parse_value_dtype("int2")
    with pytest.raises(InvalidArgumentError, match="int8_block"):
        Int8Codec(0)
    assert set(VALUE_DTYPES) == {"float32", "float16", "bfloat16", "int8", "int4"}
    assert np.dtype(value_codec("bfloat16").arrays(1)["values"][1]) == np.dtype("uint16")
