"""MaskGenerator (deltastore/masks/generator.py): exact k distinct positions, numpy == torch,
the test vectors of docs/MASKS.md, gathers at rotated sorted sets."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deltastore import masks
from deltastore.errors import InvalidArgumentError, InvalidPlanError
from deltastore.masks import MASK_ALGORITHM, TAG_BASE, TAG_STEP, MaskGenerator, base_set_torch, gather_rotated, generator

from .test_masks_feistel import ref_key, ref_perm

U64 = 2**64


def ref_positions(seed, pool, step, group, n, k):
    """Kept positions in value order, one scalar at a time, straight from docs/MASKS.md §4-§5."""
    hs = ref_key(seed, TAG_STEP, step, group)
    p, o = hs % pool, (hs >> 32) % n
    base = sorted(ref_perm(r, n, ref_key(seed, TAG_BASE, group, p)) for r in range(k))
    return [(b + o) % n for b in base]


# ------------------------------------------------------------ test vectors

# (seed, step, group, n, k, pool index, offset, first 8 positions, sum, sum((j+1)*pos[j]) mod 2**64); pool = 4
VECTORS = [
    (0, 0, 0, 10, 3, 2, 0, [2, 3, 8], 13, 0x20),
    (0, 1, 0, 1000, 500, 3, 208, [208, 209, 210, 211, 214, 215, 216, 218], 252689, 0x3DE5036),
    (0, 7, 3, 100003, 25000, 2, 41453, [41453, 41455, 41456, 41458, 41459, 41465, 41466, 41472], 1246403686, 0xC029A73C24E),
    (0, 123456, 17, 1, 1, 2, 0, [0], 0, 0x0),
    (0, 2**40, 2**33, 11200000, 16, 1, 3803416, [3838516, 4002451, 4692770, 5692425, 6118733, 6415054, 6576336, 6839813], 76251049, 0x23205C9F),
    (0, 3, 1, 2**62, 8, 0, 2045381986,
     [543577931092458846, 1236623334147709531, 1417273295181025545, 1513548991007247991,
      1611527534640089560, 1884282075503683085, 3264172621533711803, 4059127479383006240],
     15530133262488932601, 0xC55CA462774AB5AE),
    (0, 99, 5, 65536, 65536, 2, 40603, [40603, 40604, 40605, 40606, 40607, 40608, 40609, 40610], 2147450880, 0x3729AE418000),
    (12345, 0, 0, 10, 3, 2, 0, [2, 5, 9], 16, 0x27),
    (12345, 1, 0, 1000, 500, 2, 378, [380, 382, 383, 384, 385, 386, 389, 390], 251405, 0x3382048),
    (12345, 7, 3, 100003, 25000, 3, 42061, [42062, 42071, 42072, 42074, 42075, 42078, 42080, 42081], 1248923127, 0xC06776820F1),
    (12345, 123456, 17, 1, 1, 3, 0, [0], 0, 0x0),
    (12345, 2**40, 2**33, 11200000, 16, 0, 3527263, [4985086, 5313746, 5615047, 5989326, 6317770, 7079134, 8206477, 8260250], 114509346, 0x3A9BBCDC),
    (12345, 3, 1, 2**62, 8, 1, 1147789423,
     [1372007204310791703, 1474674146680268916, 1550330429540080691, 1561701374789234460,
      1840467755766627213, 2348645595423640175, 2660161244673193022, 3578536005081654815],
     16386523756265490995, 0xA6329B489FB39F0D),
    (12345, 99, 5, 65536, 65536, 2, 21015, [21015, 21016, 21017, 21018, 21019, 21020, 21021, 21022], 2147450880, 0x3973345D8000),
]


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: f"seed{v[0]}-s{v[1]}-t{v[2]}-n{v[3]}-k{v[4]}")
def test_vectors(vec):
    seed, step, group, n, k, p, o, first, total, ordsum = vec
    gen = MaskGenerator(seed, pool=4)
    assert gen.rotation(step, group, n) == (p, o)
    pos = gen.positions_np(step, group, n, k)
    assert pos.dtype == np.int64 and pos.shape == (k,)
    assert pos[:8].tolist() == first
    vals = [int(x) for x in pos]
    assert sum(vals) == total
    assert sum((j + 1) * x for j, x in enumerate(vals)) % U64 == ordsum
    assert torch.equal(gen.positions(step, group, n, k), torch.from_numpy(pos))


@pytest.mark.parametrize("vec", [v for v in VECTORS if v[4] <= 1000], ids=lambda v: f"seed{v[0]}-n{v[3]}-k{v[4]}")
def test_vectors_match_reference(vec):
    seed, step, group, n, k, *_ = vec
    assert MaskGenerator(seed).positions_np(step, group, n, k).tolist() == ref_positions(seed, 4, step, group, n, k)


def test_algorithm_id_and_package_surface():
    assert MASK_ALGORITHM == "feistel-rotate-v1"
    # every name the package exports exists (the engine imports them from deltastore.masks)
    missing = [name for name in masks.__all__ if not hasattr(masks, name)]
    assert missing == []


def test_doc_examples_run():
    result = doctest.testmod(generator)
    assert result.attempted >= 1 and result.failed == 0


# ------------------------------------------------------------- properties

seeds = st.integers(0, U64 - 1)
steps = st.integers(0, U64 - 1)
groups = st.integers(0, 2**20)


@st.composite
def sizes(draw, max_n=200_000):
    n = draw(st.integers(1, max_n))
    k = draw(st.one_of(st.integers(0, n), st.sampled_from([0, n, n // 2])))
    return n, k


@given(seed=seeds, step=steps, group=groups, nk=sizes(), pool=st.integers(1, 8))
def test_exactly_k_distinct_in_range(seed, step, group, nk, pool):
    n, k = nk
    pos = MaskGenerator(seed, pool).positions_np(step, group, n, k)
    assert pos.shape == (k,) and pos.dtype == np.int64
    assert np.unique(pos).size == k
    if k:
        assert pos.min() >= 0 and pos.max() < n


@given(seed=seeds, step=steps, group=groups, nk=sizes(max_n=300))
def test_matches_scalar_reference(seed, step, group, nk):
    n, k = nk
    assert MaskGenerator(seed).positions_np(step, group, n, k).tolist() == ref_positions(seed, 4, step, group, n, k)


@given(seed=seeds, step=steps, group=groups, nk=sizes(), pool=st.integers(1, 8))
def test_positions_np_equal_torch_device_path(seed, step, group, nk, pool):
    """The torch construction used off CPU gives the numpy bits (checked here on CPU)."""
    n, k = nk
    gen = MaskGenerator(seed, pool)
    p, o = gen.rotation(step, group, n)
    b_t = base_set_torch(n, k, gen.base_key(group, p), torch.device("cpu"))
    assert b_t.dtype == torch.int64
    assert np.array_equal(b_t.numpy(), gen.base_np(group, p, n, k))
    assert np.array_equal(torch.remainder(b_t + o, n).numpy(), gen.positions_np(step, group, n, k))


@given(seed=seeds, step=steps, group=groups, nk=sizes())
def test_deterministic_across_fresh_generators(seed, step, group, nk):
    n, k = nk
    a = MaskGenerator(seed).positions(step, group, n, k)
    b = MaskGenerator(seed).positions(step, group, n, k)
    assert torch.equal(a, b)


@given(seed=seeds, group=groups, n=st.integers(1, 100_000), data=st.data())
def test_smaller_k_is_subset(seed, group, n, data):
    k1 = data.draw(st.integers(0, n))
    k2 = data.draw(st.integers(k1, n))
    gen = MaskGenerator(seed)
    small, big = gen.base_np(group, 1, n, k1), gen.base_np(group, 1, n, k2)
    assert np.isin(small, big).all()
    assert np.all(np.diff(big) > 0)  # sorted ascending, distinct


@given(seed=seeds, step=steps, group=groups, nk=sizes(), dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_gather_agrees_with_positions(seed, step, group, nk, dtype):
    n, k = nk
    gen = MaskGenerator(seed)
    flat = torch.arange(1, n + 1, dtype=torch.float64).to(dtype)
    pos = gen.positions(step, group, n, k)
    got = gen.gather(flat, step, group, k)
    assert got.dtype == dtype and torch.equal(got, flat[pos])
    p, o = gen.rotation(step, group, n)
    b = gen.base(group, p, n, k)
    assert torch.equal(gather_rotated(flat, b, o, method="index"), got)  # the accelerator path
    assert torch.equal(gather_rotated(flat, b, o, method="split"), got)  # wrap point found by torch
    assert torch.equal(gather_rotated(flat, b, o), got)


def test_gather_non_contiguous_and_k_zero():
    gen = MaskGenerator(11)
    base = torch.arange(2000.0)
    flat = base[::2]  # strided view, n = 1000
    assert torch.equal(gen.gather(flat, 4, 0, 300), flat[gen.positions(4, 0, 1000, 300)])
    assert gen.gather(flat, 4, 0, 0).shape == (0,)


@given(seed=seeds, step=st.integers(0, U64 - 2), group=groups, n=st.integers(100_000, 200_000), data=st.data())
def test_consecutive_steps_differ(seed, step, group, n, data):
    # Equal masks need equal pool index and offset: probability ~ 1/(4n) < 3e-6.
    k = data.draw(st.integers(1, n - 1))
    gen = MaskGenerator(seed)
    assert not np.array_equal(gen.positions_np(step, group, n, k), gen.positions_np(step + 1, group, n, k))


def test_groups_and_pools_differ_like_random_sets():
    gen = MaskGenerator(2024)
    n, k = 100_000, 50_000
    sets = [gen.base_np(t, p, n, k) for t in range(3) for p in range(4)]
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            # independent random k-subsets overlap k^2/n = 25000 (sd ~ 79)
            assert abs(np.intersect1d(sets[i], sets[j]).size - 25_000) < 800


def test_every_position_kept_at_the_rate():
    # Over many steps each position is kept with probability k/n (uniform rotation).
    gen = MaskGenerator(77)
    n, k, s = 1000, 300, 2000
    counts = np.zeros(n, dtype=np.int64)
    for step in range(s):
        counts[gen.positions_np(step, 9, n, k)] += 1
    assert counts.sum() == s * k
    # mean 600, binomial sd ~ 20.5: 7 sd bounds
    assert np.abs(counts - s * k / n).max() < 145


def test_cache_reuse_and_clear():
    gen = MaskGenerator(9)
    a = gen.base(1, 2, 5000, 1000)
    assert gen.base(1, 2, 5000, 1000) is a
    assert gen.base(1, 2, 5000, 1000, device="cpu") is a
    assert np.shares_memory(gen.base_np(1, 2, 5000, 1000), a.numpy())
    assert gen.cache_nbytes() == 1000 * 8
    with pytest.raises(ValueError):
        gen.base_np(1, 2, 5000, 1000)[0] = 7  # read-only
    gen.clear_cache()
    assert gen.cache_nbytes() == 0
    b = gen.base(1, 2, 5000, 1000)
    assert b is not a and torch.equal(a, b)


def test_rotation_ranges():
    gen = MaskGenerator(0, pool=3)
    for s in range(200):
        p, o = gen.rotation(s, 4, 17)
        assert 0 <= p < 3 and 0 <= o < 17
    assert {gen.rotation(s, 4, 17)[0] for s in range(200)} == {0, 1, 2}


# ------------------------------------------------------------- bad input

_gen = MaskGenerator(1)
_flat = torch.zeros(10)
_base = torch.tensor([1, 4, 7])

BAD_ARG = {
    "seed negative": lambda: MaskGenerator(-1),
    "seed 2**64": lambda: MaskGenerator(2**64),
    "seed float": lambda: MaskGenerator(1.0),
    "seed bool": lambda: MaskGenerator(True),
    "seed string": lambda: MaskGenerator("1"),
    "pool zero": lambda: MaskGenerator(1, pool=0),
    "pool float": lambda: MaskGenerator(1, pool=2.0),
    "rotation step negative": lambda: _gen.rotation(-1, 0, 10),
    "rotation step 2**64": lambda: _gen.rotation(2**64, 0, 10),
    "rotation group negative": lambda: _gen.rotation(0, -1, 10),
    "rotation n zero": lambda: _gen.rotation(0, 0, 0),
    "rotation n above 2**62": lambda: _gen.rotation(0, 0, 2**62 + 1),
    "base pool_index = pool": lambda: _gen.base(0, 4, 10, 5),
    "base pool_index negative": lambda: _gen.base(0, -1, 10, 5),
    "base k above n": lambda: _gen.base(0, 0, 10, 11),
    "base k negative": lambda: _gen.base(0, 0, 10, -1),
    "base_np n zero": lambda: _gen.base_np(0, 0, 0, 0),
    "base_key group float": lambda: _gen.base_key(0.5, 0),
    "positions k above n": lambda: _gen.positions(0, 0, 10, 11),
    "positions_np group float": lambda: _gen.positions_np(0, 0.5, 10, 3),
    "gather 2-D": lambda: _gen.gather(torch.zeros(2, 5), 0, 0, 3),
    "gather empty": lambda: _gen.gather(torch.zeros(0), 0, 0, 0),
    "gather not a tensor": lambda: _gen.gather(np.zeros(10), 0, 0, 3),
    "gather k above n": lambda: _gen.gather(_flat, 0, 0, 11),
    "gather_rotated offset = n": lambda: gather_rotated(_flat, _base, 10),
    "gather_rotated offset negative": lambda: gather_rotated(_flat, _base, -1),
    "gather_rotated base int32": lambda: gather_rotated(_flat, _base.int(), 0),
    "gather_rotated base 2-D": lambda: gather_rotated(_flat, _base[None], 0),
    "gather_rotated base a list": lambda: gather_rotated(_flat, [1, 4, 7], 0),
    "gather_rotated base too long": lambda: gather_rotated(torch.zeros(2), _base, 0),
    "gather_rotated method unknown": lambda: gather_rotated(_flat, _base, 0, method="roll"),
}


@pytest.mark.parametrize("call", BAD_ARG.values(), ids=BAD_ARG.keys())
def test_bad_argument(call):
    with pytest.raises(InvalidArgumentError, match="expected .*got") as info:
        call()
    assert isinstance(info.value, ValueError)
    assert not isinstance(info.value, InvalidPlanError)
