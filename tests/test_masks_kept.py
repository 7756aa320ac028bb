"""kept_count (deltastore/masks/kept.py): k = floor((1 - rate) * n + 0.5), the k of every group."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deltastore.errors import InvalidArgumentError, InvalidPlanError
from deltastore.masks import kept, kept_count


@pytest.mark.parametrize(
    "n, rate, k",
    [
        (0, 0.0, 0),
        (1, 0.0, 1),
        (1, 0.5, 1),  # floor(0.5 + 0.5): halves round up
        (1, 0.51, 0),
        (3, 0.5, 2),
        (10, 0.25, 8),
        (10, 0.999, 0),
        (11_200_000, 0.5, 5_600_000),
        (11_200_000, 0.9, 1_120_000),
        (2**62, 0.0, 2**62),
        (7, 0, 7),  # integer rate accepted
        (100, np.float32(0.25), 75),
    ],
)
def test_kept_count_edges(n, rate, k):
    assert kept_count(n, rate) == k


@given(n=st.integers(0, 2**40), rate=st.floats(0.0, 1.0, exclude_max=True))
def test_kept_count_is_rounded_share(n, rate):
    k = kept_count(n, rate)
    assert 0 <= k <= n
    assert abs(k - (1.0 - rate) * n) <= 0.5 + n * 2**-50


@given(n=st.integers(0, 2**40), a=st.floats(0.0, 1.0, exclude_max=True), b=st.floats(0.0, 1.0, exclude_max=True))
def test_kept_count_falls_as_the_rate_rises(n, a, b):
    lo, hi = min(a, b), max(a, b)
    assert kept_count(n, hi) <= kept_count(n, lo)


def test_doc_examples_run():
    result = doctest.testmod(kept)
    assert result.attempted >= 1 and result.failed == 0


BAD_PLAN = {
    "rate negative": lambda: kept_count(10, -0.1),
    "rate one": lambda: kept_count(10, 1.0),
    "rate above one": lambda: kept_count(10, 1.5),
    "rate nan": lambda: kept_count(10, float("nan")),
    "rate inf": lambda: kept_count(10, float("inf")),
    "rate string": lambda: kept_count(10, "0.5"),
    "rate bool": lambda: kept_count(10, True),
}

BAD_ARG = {
    "n negative": lambda: kept_count(-1, 0.5),
    "n too large": lambda: kept_count(2**62 + 1, 0.5),
    "n float": lambda: kept_count(10.0, 0.5),
}


@pytest.mark.parametrize("call", BAD_PLAN.values(), ids=BAD_PLAN.keys())
def test_bad_plan_input(call):
    with pytest.raises(InvalidPlanError, match="expected .*got"):
        call()


@pytest.mark.parametrize("call", BAD_ARG.values(), ids=BAD_ARG.keys())
def test_bad_argument(call):
    with pytest.raises(InvalidArgumentError, match="expected .*got") as info:
        call()
    assert not isinstance(info.value, InvalidPlanError)
