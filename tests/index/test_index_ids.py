"""Sample ids (deltastore.index.ids): parsing at the edge, the SampleIds contract, string hashing."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deltastore.errors import DeltaStoreError, InvalidArgumentError, SampleIdTypeError
from deltastore.index import SampleIds, hash_strings, parse_sample_ids


@pytest.mark.parametrize(
    "ids, got",
    [
        ([1.0, 2.0], "float"),
        ([True, False], "bool"),
        ([1, "a"], "a mix of int and str"),
        (["a", "b"], "str"),
        (np.array([0.5]), "float64"),
        (np.array([True]), "bool"),
        (np.array(["x"]), "<U1"),
        (np.array([[1, 2]]), "shape"),
        (torch.tensor([1.0]), "torch.float32"),
        (torch.tensor([True]), "torch.bool"),
        (np.array([2**64 - 1], dtype=np.uint64), "uint64"),
        ([2**70], "int64 range"),
        (pa.array([1.5]), "double"),
        (pa.array([1, None]), "null"),
        (7, "single int"),
        ("abc", "single str"),
    ],
)
def test_bad_int_ids(ids, got):
    with pytest.raises(SampleIdTypeError, match="int64") as err:
        parse_sample_ids(ids, "int64")
    assert got in str(err.value)
    assert isinstance(err.value, TypeError) and isinstance(err.value, DeltaStoreError)


@pytest.mark.parametrize(
    "ids, got",
    [
        ([1, 2], "int"),
        (["a", 2], "a mix of int and str"),
        ([b"a"], "bytes"),
        (np.array([1, 2]), "int64"),
        (torch.tensor([1, 2]), "torch tensor"),
        (pa.array([1]), "int64"),
        (["\ud800"], "Unicode"),
        ("abc", "single str"),
    ],
)
def test_bad_string_ids(ids, got):
    with pytest.raises(SampleIdTypeError, match="str") as err:
        parse_sample_ids(ids, "string")
    assert got in str(err.value)


def test_accepted_id_forms():
    expected = [3, 1, 2]
    for ids in (
        [3, 1, 2],
        (3, 1, 2),
        np.array(expected, dtype=np.int32),
        np.array(expected, dtype=np.uint8),
        torch.tensor(expected),
        pa.array(expected),
        (x for x in expected),
        [np.int64(3), 1, np.int16(2)],
        np.array(expected, dtype=object),
    ):
        out = parse_sample_ids(ids, "int64")
        assert out.values.dtype == np.int64 and out.tolist() == expected
    assert parse_sample_ids(range(2, 5), "int64").tolist() == [2, 3, 4]
    assert parse_sample_ids([], "int64").tolist() == []
    assert parse_sample_ids([np.str_("a"), "b"], "string").tolist() == ["a", "b"]
    assert type(parse_sample_ids(np.array(["a"]), "string").values[0]) is str
    assert parse_sample_ids(pa.array(["a", "b"]), "string").tolist() == ["a", "b"]
    assert parse_sample_ids((), "string").tolist() == []


def test_unknown_id_type():
    with pytest.raises(InvalidArgumentError, match="id type"):
        parse_sample_ids([1], "uuid")


def test_sample_ids_are_parsed_once_and_owned():
    buf = np.array([5, 1, 5, 3])
    ids = parse_sample_ids(buf, "int64")
    buf[:] = 0  # the caller reuses its buffer: the parsed ids keep their values
    assert ids.tolist() == [5, 1, 5, 3]
    assert not ids.values.flags.writeable
    assert parse_sample_ids(ids, "int64") is ids  # already parsed: returned as it is
    assert len(ids) == 4 and list(ids) == [5, 1, 5, 3]
    assert ids.unique().tolist() == [1, 3, 5]
    assert ids.unique() is ids.unique()  # computed once
    assert np.concatenate([ids, ids]).tolist() == [5, 1, 5, 3] * 2  # callers that merge batches
    assert "SampleIds('int64', [5, 1, 5, 3])" == repr(ids)
    strs = parse_sample_ids(["b", "a", "b"], "string")
    assert strs.values == ("b", "a", "b") and strs.unique() == ("a", "b")
    with pytest.raises(SampleIdTypeError, match="SampleIds of string"):
        parse_sample_ids(strs, "int64")
    with pytest.raises(SampleIdTypeError, match="parse_sample_ids"):
        SampleIds("int64", np.array([1, 2]))  # writable: not built by parse_sample_ids
    with pytest.raises(SampleIdTypeError, match="parse_sample_ids"):
        SampleIds("string", ["a"])


def test_concat_keeps_order_and_type():
    a, b = parse_sample_ids([3, 1], "int64"), parse_sample_ids([2], "int64")
    both = SampleIds.concat([a, b])
    assert both.tolist() == [3, 1, 2] and not both.values.flags.writeable
    s = SampleIds.concat([parse_sample_ids(["x"], "string"), parse_sample_ids(["y", "x"], "string")])
    assert s.values == ("x", "y", "x")
    with pytest.raises(SampleIdTypeError, match="one id type"):
        SampleIds.concat([a, parse_sample_ids(["x"], "string")])
    with pytest.raises(InvalidArgumentError, match="at least one"):
        SampleIds.concat([])


def test_hash_strings_is_blake2b_with_an_8_byte_digest():
    # Test vectors: the format depends on these keys (docs/FORMAT.md, sample index).
    for s in ("", "sample-000000001", "\u00e9\U0001f600/"):
        expected = int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")
        assert int(hash_strings([s])[0]) == expected
    pinned = {"": 0xB4B2797457A0A6E4, "a": 0x2F42665B399EF840, "sample-000000001": 0x224D2638609AC86B}
    assert hash_strings(list(pinned)).tolist() == list(pinned.values())
    assert hash_strings([]).dtype == np.uint64 and len(hash_strings([])) == 0


@given(st.lists(st.text(max_size=6), max_size=20))
def test_parse_then_unique_is_sorted_set(strings):
    ids = parse_sample_ids(strings, "string")
    assert list(ids.unique()) == sorted(set(strings))
    assert ids.tolist() == strings
