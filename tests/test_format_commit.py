"""The commit record (deltastore.format.commit)."""

from __future__ import annotations

import pytest
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from deltastore.errors import CorruptStoreError, StoreNotFoundError
from deltastore.format import COMMIT_VERSION, read_commit, write_commit
from deltastore.storage import LocalStoreIO


@given(n=st.integers(0, 2**62), fp=st.one_of(st.none(), st.text(max_size=20)),
       index=st.one_of(st.none(), st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=12), max_size=3)))
def test_round_trip(tmp_path_factory, n, fp, index):
    io = LocalStoreIO(tmp_path_factory.mktemp("c"))
    write_commit(io, n, fp, fsync=False, manifest_sha256="sha256:ab", index_digests=index)
    got = read_commit(io)
    assert (got["committed_steps"], got["model_fingerprint"], got["manifest_sha256"], got.get("index_digests")) == (n, fp, "sha256:ab", index)
    assert got["commit_version"] == COMMIT_VERSION and got["checksum"].startswith("sha256:")


@settings(max_examples=60)
@given(data=st.data())
def test_any_flipped_byte_is_caught(tmp_path_factory, data):
    io = LocalStoreIO(tmp_path_factory.mktemp("c"))
    write_commit(io, 1234, "sha256:00ff", fsync=False, manifest_sha256="sha256:ab", index_digests={"index/part-a.parquet": "crc32c:0000beef"})
    raw = bytearray(io.read("commit.json"))
    pos = data.draw(st.integers(0, len(raw) - 1))
    bit = data.draw(st.integers(0, 7))
    raw[pos] ^= 1 << bit
    io.write("commit.json", bytes(raw))
    try:
        got = read_commit(io)
    except CorruptStoreError as exc:
        assert "commit.json" in str(exc)
        return
    # Only a flip JSON cannot see survives: whitespace that stays whitespace, and nothing else.
    assert got == json.loads(write_and_read(tmp_path_factory))


def write_and_read(tmp_path_factory) -> bytes:
    io = LocalStoreIO(tmp_path_factory.mktemp("c"))
    write_commit(io, 1234, "sha256:00ff", fsync=False, manifest_sha256="sha256:ab", index_digests={"index/part-a.parquet": "crc32c:0000beef"})
    return io.read("commit.json")


def test_records_written_before_version_2_are_read_without_a_checksum(tmp_path):
    io = LocalStoreIO(tmp_path)
    io.write("commit.json", b'{"committed_steps": 3, "model_fingerprint": null}')
    assert read_commit(io)["committed_steps"] == 3
    io.write("commit.json", b'{"committed_steps": 3, "model_fingerprint": null, "commit_version": 7}')
    with pytest.raises(CorruptStoreError, match="commit_version"):
        read_commit(io)


@pytest.mark.parametrize("raw", [b"", b"[]", b'{"committed_steps": -1}', b'{"committed_steps": true}', b'{"committed_steps": "3"}', b'{"x": 1}'])
def test_malformed_records_are_corruption_naming_the_file(tmp_path, raw):
    io = LocalStoreIO(tmp_path)
    io.write("commit.json", raw)
    with pytest.raises(CorruptStoreError, match="commit.json: expected JSON with a non-negative integer committed_steps"):
        read_commit(io)


def test_a_missing_record_is_not_a_store(tmp_path):
    with pytest.raises(StoreNotFoundError, match="commit.json"):
        read_commit(LocalStoreIO(tmp_path))
