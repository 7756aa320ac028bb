"""Index digests and coverage (deltastore.index.digests, .coverage): what the commit record carries and checks.

The writer digests every part and sidecar as it writes them; a reader given
those digests reads exactly the recorded parts, each checked before use; the
parts must tile the committed steps, with digests or without.
"""

from __future__ import annotations

import contextlib
import io as pyio
import shutil
import tempfile
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deltastore.errors import CorruptStoreError, InvalidArgumentError
from deltastore.index import Digest, IndexWriter, SampleIndex, digest_of, digests_from_json, digests_to_json, list_index
from deltastore.index.digests import DigestingFile
from deltastore.storage import LocalStoreIO


def _files(io: LocalStoreIO) -> dict[str, bytes]:
    return {f"index/{p.name}": p.read_bytes() for p in sorted((io.root / "index").iterdir())}


def _check_digests(w: IndexWriter) -> None:
    """The writer's digests name exactly the live files, and each matches their bytes."""
    files = _files(w.io)
    digests = w.digests()
    assert set(digests) == set(files)
    for key, digest in digests.items():
        assert digest == digest_of(files[key]) == Digest(len(files[key]), google_crc32c.value(files[key]))


def _write_steps(w: IndexWriter, steps, every: int = 3) -> None:
    for s in steps:
        w.add(s, 0, [s, 100 + s % 5])
        if s % every == every - 1:
            w.flush()
    w.flush()


# --------------------------------------------------------------------------- digests


def test_digest_json_round_trip_and_malformed_records():
    d = {"index/part-000000000000-000000000004-0000abcd.parquet": Digest(1234, 0x0A1B2C3D)}
    as_json = digests_to_json(d)
    assert as_json == {"index/part-000000000000-000000000004-0000abcd.parquet": {"size": 1234, "crc32c": "0a1b2c3d"}}
    assert digests_from_json(as_json) == d
    assert digests_from_json(None) is None
    assert str(Digest(5, 255)) == "crc32c:000000ff (5 bytes)"
    for bad in (
        [1, 2],
        {"k": {"size": -1, "crc32c": "0a1b2c3d"}},
        {"k": {"size": 1, "crc32c": "0A1B2C3D"}},
        {"k": {"size": 1, "crc32c": "0a1b2c3"}},
        {"k": {"size": True, "crc32c": "0a1b2c3d"}},
        {"k": {"size": 1, "crc32c": "0a1b2c3d", "extra": 0}},
        {"k": "crc32c:0a1b2c3d"},
    ):
        with pytest.raises(CorruptStoreError, match="expected"):
            digests_from_json(bad)


@given(chunks=st.lists(st.binary(max_size=300), max_size=8))
def test_digesting_file_digests_what_it_passes_on(chunks):
    out = pyio.BytesIO()
    f = DigestingFile(out)
    for c in chunks:
        f.write(memoryview(c) if len(c) % 2 else c)
    assert out.getvalue() == b"".join(chunks)
    assert f.digest == digest_of(out.getvalue()) and f.tell() == len(out.getvalue())


@pytest.mark.parametrize("id_type", ["int64", "string"])
def test_writer_digests_follow_flush_compact_truncate(tmp_path, id_type):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, id_type, sidecar_min_rows=4)
    conv = (lambda xs: xs) if id_type == "int64" else (lambda xs: [f"id{x}" for x in xs])
    for s in range(10):
        w.add(s, 0, conv([s, 100 + s % 3]))
        if s % 3 == 2:
            w.flush()
            _check_digests(w)
    w.flush()
    _check_digests(w)
    assert sum(k.endswith(".ids") for k in w.digests()) == 3  # the 2-row last part has no sidecar
    recorded = []
    w.compact(9, commit=recorded.append)
    _check_digests(w)
    assert recorded == [w.digests()]  # the record handed to commit is what is left
    w.truncate(7, commit=recorded.append)
    _check_digests(w)
    assert len(recorded) == 2
    index = SampleIndex(io, id_type, 7, digests=w.digests())
    assert index.steps_for(conv([100])).tolist() == [0, 3, 6]


# --------------------------------------------------------------------------- reading with digests


@contextlib.contextmanager
def _copy(io: LocalStoreIO):
    d = Path(tempfile.mkdtemp(prefix="deltastore-digests-"))
    try:
        shutil.copytree(io.root, d / "s")
        yield LocalStoreIO(d / "s")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_reader_with_digests_refuses_a_missing_or_damaged_object(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "int64")
    _write_steps(w, range(9))
    digests = w.digests()
    assert SampleIndex(io, "int64", 9, digests=digests).steps_for([4]).tolist() == [4]
    for key in digests:
        name = key.split("/")[1]
        with _copy(io) as c:
            (c.root / key).unlink()
            with pytest.raises(CorruptStoreError, match=f"missing: {key}"):
                SampleIndex(c, "int64", 9, digests=digests).lookup([4])
        with _copy(io) as c:
            raw = bytearray((c.root / key).read_bytes())
            raw[len(raw) // 2] ^= 1
            (c.root / key).write_bytes(bytes(raw))
            with pytest.raises(CorruptStoreError, match=f"{name} fails its checksum"):
                # A full scan reads the Parquet parts; a sidecar's blocks are checked when read (check reads all).
                index = SampleIndex(c, "int64", 9, digests=digests)
                index.step_table() if key.endswith(".parquet") else index.check()
        with _copy(io) as c:
            (c.root / key).write_bytes((c.root / key).read_bytes()[:-1])
            with pytest.raises(CorruptStoreError, match=f"{name}: expected {digests[key].size} bytes"):
                SampleIndex(c, "int64", 9, digests=digests).step_table()


def test_reader_with_digests_checks_the_record_itself(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "int64")
    _write_steps(w, range(6))
    digests = w.digests()
    parts = sorted(k for k in digests if k.endswith(".parquet"))
    # A record that skips a part: a gap in the committed steps, named.
    without = {k: v for k, v in digests.items() if parts[1][len("index/") : -len(".parquet")] not in k}
    with pytest.raises(CorruptStoreError, match=r"committed steps \[3, 6\) are in no index part"):
        SampleIndex(io, "int64", 6, digests=without).lookup([1])
    # A counter beyond the recorded parts is a gap too.
    with pytest.raises(CorruptStoreError, match=r"steps \[6, 7\)"):
        SampleIndex(io, "int64", 7, digests=digests).lookup([1])
    # Keys outside the prefix are someone else's; odd names inside it are refused.
    SampleIndex(io, "int64", 6, digests={**digests, "g0000/values/c/0/0": Digest(1, 1)}).lookup([1])
    with pytest.raises(CorruptStoreError, match="not an index part or sidecar name"):
        SampleIndex(io, "int64", 6, digests={**digests, "index/notes.txt": Digest(1, 1)}).lookup([1])
    with pytest.raises(CorruptStoreError, match="sidecar of .* but not the part"):
        SampleIndex(io, "int64", 6, digests={k: v for k, v in digests.items() if k != parts[0]}).lookup([1])


def test_parts_outside_the_record(tmp_path):
    """Crash leftovers (containing or inside a recorded part, or uncommitted) are ignored; anything else is named."""
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "int64")
    _write_steps(w, range(6))
    digests = w.digests()
    other = LocalStoreIO(tmp_path / "other")

    def foreign(first: int, end: int) -> str:
        o = IndexWriter(other, "int64")
        o.add(first, 0, [999])
        key = o.flush(first_step=first, end_step=end)
        shutil.copy2(other.root / key, io.root / key)
        shutil.rmtree(other.root)
        return key

    a = foreign(0, 6)  # contains every recorded part: an unrecorded compaction
    b = foreign(3, 6)  # equal to a recorded part's range
    c = foreign(6, 9)  # uncommitted tail
    index = SampleIndex(io, "int64", 6, digests=digests)
    assert index.lookup([999])[1] == [999] and index.steps_for([3]).tolist() == [3]
    d = foreign(2, 4)  # straddles two recorded parts: no crash leaves it
    with pytest.raises(CorruptStoreError, match=d.split("/")[1] + ".*not in the commit record"):
        SampleIndex(io, "int64", 6, digests=digests).lookup([3])
    # Without digests these are ordinary parts (live or dead by the listing rules).
    assert {a, b, c, d} <= {r.key for r in list_index(io, "index").live + list_index(io, "index").dead}


def test_overlapping_recorded_parts_are_refused(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "int64")
    _write_steps(w, range(6))
    w.compact(6)
    merged = w.digests()
    (key,) = [k for k in merged if k.endswith(".parquet")]
    twin = key[: -len("12345678.parquet")] + "ffffffff.parquet"
    shutil.copy2(io.root / key, io.root / twin)
    with pytest.raises(CorruptStoreError, match="overlaps"):
        SampleIndex(io, "int64", 6, digests={**merged, twin: merged[key]}).lookup([1])


# --------------------------------------------------------------------------- crash safety with a record


class _Crash(Exception):
    pass


@pytest.mark.parametrize("when", ["before the record", "after the record"])
def test_compaction_crash_keeps_the_store_readable(tmp_path, when):
    """Commit hook: the merged part is written before it runs and nothing recorded is deleted before it returns."""
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "string")
    for s in range(8):
        w.add(s, 0, [f"s{s}", "all"])
        if s % 2:
            w.flush()
    record = {"digests": w.digests()}
    before = set(_files(io))
    expected = SampleIndex(io, "string", 8, digests=record["digests"]).step_table()

    def hook(digests):
        assert before <= set(_files(io))  # nothing the old record lists is gone yet
        assert len(set(_files(io)) - before) == 2  # the merged part and its sidecar are there
        if when == "after the record":
            record["digests"] = digests
        raise _Crash

    with pytest.raises(_Crash):
        w.compact(8, commit=hook)
    reader = SampleIndex(io, "string", 8, digests=record["digests"])
    assert reader.step_table() == expected
    assert reader.num_parts == (4 if when == "before the record" else 1)
    # Recovery: a writer opened at the record deletes what the record does not list.
    r = IndexWriter(io, "string", digests=record["digests"])
    r.truncate(8)
    assert set(_files(io)) == set(record["digests"]) == set(r.digests())
    assert SampleIndex(io, "string", 8, digests=r.digests()).step_table() == expected


def test_writer_with_a_record_checks_what_it_reads(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "int64")
    _write_steps(w, range(6))
    digests = w.digests()
    key = sorted(k for k in digests if k.endswith(".parquet"))[0]
    raw = bytearray((io.root / key).read_bytes())
    raw[len(raw) // 2] ^= 0x40
    (io.root / key).write_bytes(bytes(raw))
    with pytest.raises(CorruptStoreError, match="fails its checksum"):
        IndexWriter(io, "int64", digests=digests).compact(6)  # never merged into a part with a valid digest
    assert set(_files(io)) == set(digests)
    (io.root / key).unlink()
    with pytest.raises(CorruptStoreError, match=f"missing: {key}"):
        IndexWriter(io, "int64", digests=digests)
    with pytest.raises(InvalidArgumentError, match="parts and sidecars"):
        IndexWriter(io, "int64", digests={"index/commit.json": Digest(1, 1)})


def test_legacy_index_is_adopted_once_checked(tmp_path):
    """A store written before digests: the writer reads every live object whole before digesting it."""
    io = LocalStoreIO(tmp_path)
    _write_steps(IndexWriter(io, "int64"), range(6))
    files = _files(io)
    w = IndexWriter(io, "int64")
    assert w.digests() == {k: digest_of(v) for k, v in files.items()}
    with _copy(io) as c:
        key = sorted(k for k in files if k.endswith(".ids"))[0]
        raw = bytearray((c.root / key).read_bytes())
        raw[-1] ^= 1
        (c.root / key).write_bytes(bytes(raw))
        with pytest.raises(CorruptStoreError, match="fails its checksum"):
            IndexWriter(c, "int64").digests()


def test_reader_rereads_a_record_after_a_concurrent_compaction(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "string")
    for s in range(4):
        w.add(s, 0, [f"s{s}", "all"])
        w.flush()
    record = {"digests": digests_to_json(w.digests())}
    reads = []

    def current():
        reads.append(1)
        return record["digests"]

    index = SampleIndex(io, "string", 4, digests=current)
    assert index.steps_for(["all"]).tolist() == [0, 1, 2, 3]
    w.compact(4, commit=lambda d: record.update(digests=digests_to_json(d)))
    assert index.sample_ids() == ["all", "s0", "s1", "s2", "s3"]  # lists again, re-reads the record
    assert len(reads) == 2 and index.num_parts == 1
    fixed = SampleIndex(io, "string", 4, digests=digests_from_json(record["digests"]))
    assert fixed.num_rows == 8


# --------------------------------------------------------------------------- coverage


def test_coverage_without_digests(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "int64", sidecar_min_rows=100)  # no sidecars: nothing names a deleted part
    _write_steps(w, range(9))
    parts = [r.key for r in list_index(io, "index").live]
    assert SampleIndex(io, "int64", 9).steps().tolist() == list(range(9))
    (io.root / parts[1]).unlink()
    with pytest.raises(CorruptStoreError, match=r"committed steps \[3, 6\) are in no index part") as err:
        SampleIndex(io, "int64", 9).lookup([1])
    assert err.value.step == 3
    # Rows at or above the counter are the uncommitted tail: a reader at 3 needs only the first part.
    assert SampleIndex(io, "int64", 3).steps().tolist() == [0, 1, 2]


def test_steps_without_rows_still_lie_in_a_part(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "int64")
    w.add(0, 0, [])
    w.add(1, 0, [7])
    w.add(3, 0, [])
    assert list_index(io, "index").live == []
    key = w.flush()
    assert key.split("/")[1].startswith("part-000000000000-000000000004-")
    assert w.flush(first_step=4, end_step=6).split("/")[1].startswith("part-000000000004-000000000006-")
    assert w.flush() is None
    w.add(6, 0, [8])
    w.add(9, 0, [9])
    w.flush()
    index = SampleIndex(io, "int64", 10)
    assert index.steps().tolist() == [1, 6, 9] and index.samples_for(5).tolist() == []
    w.truncate(8)  # the straddling part [6, 10) becomes [6, 8), its rows at 9 dropped
    assert [(r.first, r.end) for r in list_index(io, "index").live] == [(0, 4), (4, 6), (6, 8)]
    w.truncate(7)
    w.truncate(6)
    assert [(r.first, r.end) for r in list_index(io, "index").live] == [(0, 4), (4, 6)]
    with pytest.raises(InvalidArgumentError, match="non-empty part range"):
        w.flush(first_step=6, end_step=6)


@given(st.lists(st.integers(0, 2), min_size=1, max_size=12), st.data())
def test_any_recording_tiles_its_steps(sizes, data):
    """Random batch sizes (empty ones too), flushes, compactions and truncations: parts tile [0, end_step)."""
    d = Path(tempfile.mkdtemp(prefix="deltastore-tiles-"))
    try:
        io = LocalStoreIO(d)
        w = IndexWriter(io, "int64")
        for s, n in enumerate(sizes):
            w.add(s, 0, np.arange(n) + 10 * s)
            if data.draw(st.booleans()):
                w.flush()
        w.flush()
        assert w.end_step == len(sizes)  # steps without rows too
        action = data.draw(st.sampled_from(["none", "compact", "truncate"]))
        cut = data.draw(st.integers(0, len(sizes)))
        if action == "compact":
            w.compact(cut)
        elif action == "truncate":
            w.truncate(cut)
        live = list_index(io, "index").live
        covered = 0
        for r in live:
            assert r.first == covered
            covered = r.end
        assert covered == w.end_step == (cut if action == "truncate" else len(sizes))
        SampleIndex(io, "int64", w.end_step, digests=w.digests()).steps()
    finally:
        shutil.rmtree(d, ignore_errors=True)
