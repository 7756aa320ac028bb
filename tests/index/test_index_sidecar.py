"""Lookup sidecars (deltastore.index.sidecar): the byte format of docs/FORMAT.md §6.1, and corrupt files.

``_read_spec`` decodes a sidecar from the specification alone (struct + numpy,
nothing from deltastore), so the format cannot drift from the document.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

import google_crc32c
import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deltastore.errors import CorruptStoreError, FormatVersionError
from deltastore.index import IndexWriter, SampleIndex, list_index
from deltastore.index.sidecar import write_sidecar
from deltastore.storage import LocalStoreIO


def _pad8up(n: int) -> int:
    return n + (-n % 8)


def _read_spec(raw: bytes) -> dict:
    """Every row of a sidecar as {id: [steps]}, read as FORMAT.md §6.1 says (versions 1 and 2)."""
    assert raw[:6] == b"DSIDS\x00"
    version, kind, width = struct.unpack_from("<HBB", raw, 6)
    assert version in (1, 2) and kind in (1, 2) and width in (4, 8)
    k, r, first, end, s = struct.unpack_from("<QQqqQ", raw, 16)
    body_crc, head_crc = struct.unpack_from("<II", raw, 56)
    assert head_crc == zlib.crc32(raw[:60])
    if version == 1:
        assert raw[10:16] == bytes(6) and body_crc == zlib.crc32(raw[64:])
    else:
        log2 = raw[10]
        assert 12 <= log2 <= 24 and raw[11:16] == bytes(5)
        block = 1 << log2
        body_len = 16 * k + 8 + _pad8up(width * r) + (8 * (k + 1) + _pad8up(s) if kind == 2 else 0)
        n_blocks = -(-body_len // block)
        table = raw[64 + body_len :]
        assert len(table) == 8 + _pad8up(4 * n_blocks) + 8 * -(-8 * k // block)
        prefix_crc, zero = struct.unpack_from("<II", table, 0)
        assert zero == 0 and prefix_crc == google_crc32c.value(raw[: 64 + body_len])
        assert body_crc == google_crc32c.value(table[8:])
        crcs = np.frombuffer(table, "<u4", n_blocks, 8)
        body = raw[64 : 64 + body_len]
        assert [google_crc32c.value(body[i : i + block]) for i in range(0, body_len, block)] == crcs.tolist()
        fences = np.frombuffer(table, "<i8" if kind == 1 else "<u8", offset=8 + _pad8up(4 * n_blocks))
        keys_all = np.frombuffer(raw, "<i8" if kind == 1 else "<u8", k, 64)
        assert fences.tolist() == keys_all[:: block // 8].tolist()
        raw = raw[: 64 + body_len]  # the sections, as in version 1
    pos = 64

    def section(dtype, count):
        nonlocal pos
        arr = np.frombuffer(raw, dtype=dtype, count=count, offset=pos)
        pos += arr.nbytes + (-arr.nbytes % 8)
        return arr

    keys = section("<i8" if kind == 1 else "<u8", k)
    starts = section("<i8", k + 1)
    steps = section(f"<u{width}", r)
    assert starts[0] == 0 and starts[-1] == r and np.all(np.diff(starts) > 0)
    out = {}
    if kind == 1:
        assert np.all(np.diff(keys) > 0)
        names = keys.tolist()
    else:
        offsets = section("<i8", k + 1)
        data = section(np.uint8, s).tobytes()
        names = [data[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
        for key, name in zip(keys.tolist(), names):
            assert key == int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")
        order = [(int(key), name.encode("utf-8")) for key, name in zip(keys.tolist(), names)]
        assert order == sorted(order)
    assert pos == len(raw)  # every byte accounted for
    for i, name in enumerate(names):
        rel = steps[starts[i] : starts[i + 1]].astype(np.int64)
        assert np.all(np.diff(rel) > 0) and rel.max() < end - first
        out[name] = (rel + first).tolist()
    return out


@pytest.mark.parametrize("id_type", ["int64", "string"])
@given(batches=st.lists(st.lists(st.integers(-3, 12), min_size=1, max_size=6), min_size=1, max_size=8), first=st.integers(0, 5))
def test_sidecar_bytes_follow_the_spec(tmp_path_factory, id_type, batches, first):
    io = LocalStoreIO(tmp_path_factory.mktemp("spec"))
    conv = (lambda b: b) if id_type == "int64" else (lambda b: [f"id-{x}\u00e9" for x in b])
    w = IndexWriter(io, id_type)
    expected: dict = {}
    for i, batch in enumerate(batches):
        w.add(first + i, 0, conv(batch))
        for sid in conv(batch):
            expected.setdefault(sid, set()).add(first + i)
    w.flush()
    (ref,) = list_index(io, "index").live
    got = _read_spec(io.read(f"index/{ref.sidecar_name}"))
    assert got == {sid: sorted(steps) for sid, steps in expected.items()}


def test_wide_step_ranges_use_8_byte_steps(tmp_path):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, "int64")
    w.add(0, 0, [1])
    w.add(2**33, 0, [1, 2])
    w.flush()
    (ref,) = list_index(io, "index").live
    raw = io.read(f"index/{ref.sidecar_name}")
    assert raw[9] == 8
    assert _read_spec(raw) == {1: [0, 2**33], 2: [2**33]}
    assert SampleIndex(io, "int64", 2**33 + 1).steps_for([2]).tolist() == [2**33]


def _one_part(tmp_path, id_type="int64"):
    io = LocalStoreIO(tmp_path)
    w = IndexWriter(io, id_type)
    w.add(0, 0, [1, 2] if id_type == "int64" else ["a", "b"])
    w.add(1, 0, [2] if id_type == "int64" else ["b"])
    w.flush()
    (ref,) = list_index(io, "index").live
    return io, tmp_path / "index" / ref.sidecar_name


def _reheader(raw: bytes, **fields) -> bytes:
    """The header with some fields replaced and its checksum made valid again (bytes 10-15 kept)."""
    names = ["magic", "version", "kind", "width", "extra", "k", "r", "first", "end", "s", "body_crc", "head_crc"]
    values = dict(zip(names, struct.unpack_from("<6sHBB6sQQqqQII", raw)))
    values.update(fields)
    head = struct.pack("<6sHBB6sQQqqQ", *(values[n] for n in names[:-2])) + struct.pack("<I", values["body_crc"])
    return head + struct.pack("<I", zlib.crc32(head)) + raw[64:]


@pytest.mark.parametrize(
    "damage, error, message",
    [
        (lambda raw: raw[:40], CorruptStoreError, "shorter than"),
        (lambda raw: b"XXXXXX" + raw[6:], CorruptStoreError, "magic"),
        (lambda raw: raw[:20] + b"\x01" + raw[21:], CorruptStoreError, "checksum"),
        (lambda raw: raw + b"\x00" * 8, CorruptStoreError, "bytes"),
        (lambda raw: _reheader(raw, version=3), FormatVersionError, "version 3"),
        (lambda raw: _reheader(raw, extra=bytes([11]) + bytes(5)), CorruptStoreError, "header bytes 10-15"),
        (lambda raw: _reheader(raw, body_crc=1), CorruptStoreError, "block table fails its checksum"),
        (lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), CorruptStoreError, "block table fails its checksum"),  # a fence
        (lambda raw: raw[:64] + bytes([raw[64] ^ 1]) + raw[65:], CorruptStoreError, "fails its checksum"),  # a key
        (lambda raw: _reheader(raw, kind=2), CorruptStoreError, "id type 'string'"),
        (lambda raw: _reheader(raw, first=1), CorruptStoreError, r"steps \[1, 2\)"),
        (lambda raw: _reheader(raw, width=3), CorruptStoreError, "3-byte"),
        (lambda raw: bytes(len(raw)), CorruptStoreError, "magic"),  # zero-filled: a torn write after a power cut
    ],
)
def test_damaged_sidecar_is_an_error_naming_it(tmp_path, damage, error, message):
    io, path = _one_part(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(error, match=message) as err:
        SampleIndex(io, "int64", 2).lookup([1])
    assert path.name in str(err.value)


def test_bad_row_starts_are_corrupt(tmp_path):
    """Row starts are checked where used (a version 1 file here: version 2's block CRC would catch the edit first)."""
    io, path = _one_part(tmp_path)
    (ref,) = list_index(io, "index").live
    table = pq.read_table(tmp_path / "index" / ref.name)
    write_sidecar(io, f"index/{ref.sidecar_name}", table, 0, 2, id_type="int64", fsync=False, version=1)
    raw = bytearray(path.read_bytes())
    k = struct.unpack_from("<Q", raw, 16)[0]
    struct.pack_into("<q", raw, 64 + 8 * k, 5)  # starts[0] must be 0
    body = raw[64:]
    struct.pack_into("<I", raw, 56, zlib.crc32(body))
    struct.pack_into("<I", raw, 60, zlib.crc32(raw[:60]))
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptStoreError, match="row starts"):
        SampleIndex(io, "int64", 2).lookup([1])


def test_string_sidecar_resolves_ids_by_their_bytes(tmp_path):
    io, path = _one_part(tmp_path, "string")
    index = SampleIndex(io, "string", 2)
    assert index.num_sidecar_parts == 1
    steps, unknown = index.lookup(["b", "a", "c"])
    assert steps.tolist() == [0, 1] and unknown == ["c"]
    assert index.samples_for(1) == ["b"]
