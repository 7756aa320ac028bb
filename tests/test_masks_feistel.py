"""The keyed bijection of feistel-rotate-v1 (deltastore/masks/feistel.py).

A scalar pure-Python reference, written from docs/MASKS.md, checks the
vectorised numpy and torch code (test_masks_generator imports it too); the
fixed vectors are the ones printed in docs/MASKS.md.
"""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deltastore.errors import InvalidArgumentError, InvalidPlanError
from deltastore.masks import (
    TAG_BASE,
    TAG_STEP,
    base_set_np,
    base_set_torch,
    derive_key,
    feistel,
    feistel_permute_np,
    feistel_permute_torch,
    round_keys,
    splitmix64,
)

U64 = 2**64
seeds = st.integers(0, U64 - 1)

# ------------------------------------------------------------- reference


def ref_splitmix64(x):
    z = (x + 0x9E3779B97F4A7C15) % U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % U64
    return z ^ (z >> 31)


def ref_key(seed, *words):
    h = ref_splitmix64(seed)
    for w in words:
        h = ref_splitmix64(h ^ w)
    return h


def ref_perm(x, n, key):
    """pi_key(x) on [0, n), one scalar at a time, straight from docs/MASKS.md."""
    b = max(2, math.ceil(math.log2(n)) if n > 1 else 0)
    b += b % 2
    h = b // 2
    ks = [ref_key(key, i) % 2**32 for i in range(4)]

    def f(r, k):
        x = (r ^ k) % 2**32
        x = (x * 0x45D9F3B) % 2**32
        x ^= x >> 16
        x = (x * 0x45D9F3B) % 2**32
        x ^= x >> 16
        return x % 2**h

    while True:
        left, right = x >> h, x % 2**h
        for k in ks:
            left, right = right, left ^ f(right, k)
        x = left * 2**h + right
        if x < n:
            return x


# ------------------------------------------------------------ test vectors


def test_splitmix64_published_values():
    # The reference splitmix64 stream seeded with 0, and the seed-1234567 output (Vigna's C code).
    assert [splitmix64(i * 0x9E3779B97F4A7C15 % U64) for i in range(4)] == [
        0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F, 0xF88BB8A8724C81EC,
    ]
    assert splitmix64(1234567) == 6457827717110365317


def test_key_and_permutation_vectors():
    k0 = derive_key(0, TAG_BASE, 0, 0)
    assert k0 == 0xFA88D1341E893AAA
    assert round_keys(k0) == (0x7DAB8303, 0x79E28D2F, 0xEC2F2AD0, 0x4F9933B7)
    assert derive_key(0, TAG_STEP, 0, 0) == 0x8B2D2C2021EDB422
    assert feistel_permute_np(np.arange(16), 16, k0).tolist() == [10, 1, 3, 14, 0, 13, 4, 6, 7, 8, 12, 5, 9, 11, 15, 2]
    assert feistel_permute_np(np.arange(10), 10, k0).tolist() == [9, 1, 3, 2, 0, 5, 4, 6, 7, 8]
    k1 = derive_key(12345, TAG_BASE, 0, 0)
    assert k1 == 0x618CD2948905B06E
    assert feistel_permute_np(np.arange(10), 10, k1).tolist() == [7, 3, 5, 6, 9, 1, 2, 4, 0, 8]


def test_doc_examples_run():
    result = doctest.testmod(feistel)
    assert result.attempted >= 4 and result.failed == 0


# ------------------------------------------------------------- properties


@given(seed=seeds, words=st.lists(seeds, max_size=4))
def test_derive_key_matches_reference(seed, words):
    assert derive_key(seed, *words) == ref_key(seed, *words)


@given(n=st.integers(1, 3000), key=seeds, data=st.data())
def test_permutation_matches_scalar_reference(n, key, data):
    ranks = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=50))
    got = feistel_permute_np(np.array(ranks, dtype=np.int64), n, key).tolist()
    assert got == [ref_perm(r, n, key) for r in ranks]


@given(n=st.integers(1, 5000), key=seeds)
def test_full_permutation_is_bijection_np_equals_torch(n, key):
    p_np = feistel_permute_np(np.arange(n), n, key)
    p_t = feistel_permute_torch(torch.arange(n), n, key)
    assert np.array_equal(np.sort(p_np), np.arange(n))
    assert np.array_equal(p_np, p_t.numpy())


@given(n=st.integers(1, 2**62), key=seeds, data=st.data())
def test_permute_np_equals_torch_any_width(n, key, data):
    ranks = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=200))
    p_np = feistel_permute_np(np.array(ranks, dtype=np.int64), n, key)
    p_t = feistel_permute_torch(torch.tensor(ranks, dtype=torch.int64), n, key)
    assert np.array_equal(p_np, p_t.numpy())
    assert p_np.min() >= 0 and p_np.max() < n
    # distinct ranks stay distinct (bijection)
    assert np.unique(p_np).size == len(set(ranks))


@given(key=seeds, data=st.data())
def test_permute_keeps_shape_and_dtype(key, data):
    n = data.draw(st.integers(1, 1000))
    ranks = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=6, max_size=6)), dtype=np.int32).reshape(2, 3)
    out = feistel_permute_np(ranks, n, key)
    assert out.shape == (2, 3) and out.dtype == np.int64
    assert np.array_equal(out.reshape(-1), feistel_permute_np(ranks.reshape(-1), n, key))
    t = feistel_permute_torch(torch.from_numpy(ranks), n, key)
    assert t.shape == (2, 3) and t.dtype == torch.int64 and np.array_equal(t.numpy(), out)


@given(n=st.integers(1, 100_000), key=seeds, data=st.data())
def test_base_set_is_sorted_image_of_first_k_ranks(n, key, data):
    k = data.draw(st.integers(0, min(n, 5000)))
    expected = np.sort(feistel_permute_np(np.arange(k), n, key))
    got = base_set_np(n, k, key)
    assert got.dtype == np.int64 and np.array_equal(got, expected)
    assert np.array_equal(base_set_torch(n, k, key).numpy(), expected)  # the accelerator code path, on CPU


@given(key=seeds, n=st.integers(1, 100_000), data=st.data())
def test_smaller_k_is_subset(key, n, data):
    k1 = data.draw(st.integers(0, n))
    k2 = data.draw(st.integers(k1, n))
    small, big = base_set_np(n, k1, key), base_set_np(n, k2, key)
    assert np.isin(small, big).all()
    assert np.all(np.diff(big) > 0)  # sorted ascending, distinct


# ------------------------------------------------------ paths that must agree


def test_chunk_boundaries_do_not_change_the_permutation():
    # 300 000 ranks span two CPU batches (2**18 each); the slices are one batch each.
    n, key = 1_000_003, derive_key(1, TAG_BASE, 2, 3)
    whole = feistel_permute_np(np.arange(300_000), n, key)
    assert np.array_equal(whole[:1000], feistel_permute_np(np.arange(1000), n, key))
    cross = np.arange(262_000, 263_000)
    assert np.array_equal(whole[262_000:263_000], feistel_permute_np(cross, n, key))
    assert np.array_equal(feistel_permute_torch(torch.arange(300_000), n, key).numpy(), whole)


@pytest.mark.parametrize(
    "n, k",
    [
        (50_000, 20_000),  # bitmap, one batch
        (1_000_000, 300_000),  # bitmap, two batches
        (2**20 + 1, 1000),  # sorted, one batch (n > max(16k, 2**20))
        (5_000_000, 300_000),  # sorted, two batches
        (777, 777),  # k = n: everything
    ],
)
def test_bitmap_and_sort_constructions_agree(n, k):
    key = derive_key(7, TAG_BASE, 1, 0)
    expected = np.sort(feistel_permute_np(np.arange(k), n, key))
    assert np.array_equal(base_set_np(n, k, key), expected)
    assert np.array_equal(base_set_torch(n, k, key, device="cpu").numpy(), expected)


def test_permutation_is_not_trivial():
    n = 2**16
    p = feistel_permute_np(np.arange(n), n, derive_key(5, TAG_BASE, 0, 0))
    assert (p == np.arange(n)).sum() < 20  # expected ~1 fixed point
    assert abs(np.corrcoef(np.arange(n), p)[0, 1]) < 0.03


# ------------------------------------------------------------- bad input

BAD_ARG = {
    "derive_key word negative": lambda: derive_key(1, -5),
    "derive_key word 2**64": lambda: derive_key(1, 2**64),
    "derive_key seed negative": lambda: derive_key(-1),
    "derive_key seed float": lambda: derive_key(1.0),
    "permute_np rank = n": lambda: feistel_permute_np(np.array([0, 10]), 10, 1),
    "permute_np rank negative": lambda: feistel_permute_np(np.array([-1]), 10, 1),
    "permute_np float ranks": lambda: feistel_permute_np(np.array([1.0]), 10, 1),
    "permute_np key 2**64": lambda: feistel_permute_np(np.array([1]), 10, 2**64),
    "permute_np n zero": lambda: feistel_permute_np(np.array([], dtype=np.int64), 0, 1),
    "permute_np n above 2**62": lambda: feistel_permute_np(np.array([1]), 2**62 + 1, 1),
    "permute_torch rank = n": lambda: feistel_permute_torch(torch.tensor([10]), 10, 1),
    "permute_torch float ranks": lambda: feistel_permute_torch(torch.tensor([1.0]), 10, 1),
    "permute_torch bool ranks": lambda: feistel_permute_torch(torch.tensor([True]), 10, 1),
    "permute_torch not a tensor": lambda: feistel_permute_torch([1, 2], 10, 1),
    "permute_torch key negative": lambda: feistel_permute_torch(torch.tensor([1]), 10, -1),
    "base_set_np k above n": lambda: base_set_np(10, 11, 1),
    "base_set_np k negative": lambda: base_set_np(10, -1, 1),
    "base_set_np n zero": lambda: base_set_np(0, 0, 1),
    "base_set_torch key 2**64": lambda: base_set_torch(10, 3, 2**64),
    "base_set_torch n float": lambda: base_set_torch(10.0, 3, 1),
}


@pytest.mark.parametrize("call", BAD_ARG.values(), ids=BAD_ARG.keys())
def test_bad_argument(call):
    with pytest.raises(InvalidArgumentError, match="expected .*got") as info:
        call()
    assert isinstance(info.value, ValueError)
    assert not isinstance(info.value, InvalidPlanError)
