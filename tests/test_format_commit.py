"""The commit record (deltastore.format.commit)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deltastore.errors import CorruptStoreError, StoreNotFoundError
from deltastore.format import read_commit, write_commit
from deltastore.storage import LocalStoreIO


@given(n=st.integers(0, 2**62), fp=st.one_of(st.none(), st.text(max_size=20)))
def test_round_trip(tmp_path_factory, n, fp):
    io = LocalStoreIO(tmp_path_factory.mktemp("c"))
    write_commit(io, n, fp, fsync=False)
    assert read_commit(io) == {"committed_steps": n, "model_fingerprint": fp}


@pytest.mark.parametrize("raw", [b"", b"[]", b'{"committed_steps": -1}', b'{"committed_steps": true}', b'{"committed_steps": "3"}', b'{"x": 1}'])
def test_malformed_records_are_corruption_naming_the_file(tmp_path, raw):
    io = LocalStoreIO(tmp_path)
    io.write("commit.json", raw)
    with pytest.raises(CorruptStoreError, match="commit.json: expected JSON with a non-negative integer committed_steps"):
        read_commit(io)


def test_a_missing_record_is_not_a_store(tmp_path):
    with pytest.raises(StoreNotFoundError, match="commit.json"):
        read_commit(LocalStoreIO(tmp_path))
