"""Faults in the sample index: every damaged index file is an error naming it, or changes no answer.

A corruption matrix over every kind of index file -- a Parquet part looked up
through its sidecar, a Parquet part without one (the pyarrow route), a
sidecar -- for int and string ids, compacted and not, read with the commit
record's digests and without (stores written before digests). Each file is
damaged (one byte flipped at the start, middle, footer or header, last byte
and at hypothesis-drawn offsets; truncated to several lengths; deleted) and
the index read again. The only acceptable outcomes:

* a ``CorruptStoreError`` (or ``FormatVersionError`` for a flipped version
  key) whose message names the damaged file -- or, for a part deleted from a
  store without digests, names the committed step range it held;
* the exact answers of the undamaged index. Never different answers.

With digests, every read that touches the damaged file must fail: a full scan
always does; a lookup answers from the sidecar alone, so a damaged Parquet
part of a part with a sidecar may leave its answer unchanged (the sidecar is
checked). Without digests, damage that no checksum covers may leave answers
unchanged, never change them (statistics are not trusted there).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deltastore.errors import CorruptStoreError, FormatVersionError
from deltastore.index import IndexWriter, SampleIndex
from deltastore.storage import LocalStoreIO

N_IDS = 40
STEPS = 12


def _ids(raw, id_type: str):
    return raw if id_type == "int64" else [f"sample-{int(i):05d}" for i in raw]


@dataclass
class Store:
    """A pristine index, its digests, its answers, and its files by kind."""

    root: Path
    id_type: str
    committed: int
    digests: dict
    files: dict  # name -> kind ("parquet+sidecar", "parquet", "sidecar")

    def path(self, name: str) -> Path:
        return self.root / "index" / name


def _build(root: Path, id_type: str, layout: str) -> Store:
    """Three flushed parts of 4 steps; the smallest has no sidecar. 'compacted' merges the first two."""
    io = LocalStoreIO(root)
    w = IndexWriter(io, id_type, row_group_size=16, sidecar_min_rows=20)
    rng = np.random.default_rng(7)
    for s in range(STEPS):
        per_step = 2 if s >= 8 else 8  # the last part holds 8 rows: no sidecar
        w.add(s, s // 4, _ids(rng.choice(N_IDS, per_step, replace=False), id_type))
        if s % 4 == 3:
            w.flush()
    if layout == "compacted":
        w.compact(8)
    names = sorted(p.name for p in (root / "index").iterdir())
    files = {}
    for n in names:
        if n.endswith(".ids"):
            files[n] = "sidecar"
        else:
            files[n] = "parquet+sidecar" if f"_{n[: -len('.parquet')]}.ids" in names else "parquet"
    assert set(files.values()) == {"sidecar", "parquet", "parquet+sidecar"}
    return Store(root, id_type, STEPS, w.digests(), files)


QUERIES = [list(range(0, N_IDS, 3)), [5], list(range(N_IDS + 2))]


def _lookups(index: SampleIndex, id_type: str) -> list:
    out = []
    for q in QUERIES:
        steps, unknown = index.lookup(_ids(q, id_type))
        out.append((steps.tolist(), list(unknown)))
    out += [list(index.samples_for(s)) for s in range(index.committed_steps)]
    return out


def _scans(index: SampleIndex) -> list:
    return [
        {k: list(v) for k, v in index.step_table().items()},
        list(index.sample_ids()),
        index.steps().tolist(),
        index.num_rows,
    ]


def _answers(store: Store, root: Path, digests, what: str):
    """('ok', answers) or ('error', message)."""
    index = SampleIndex(LocalStoreIO(root), store.id_type, store.committed, digests=digests)
    try:
        return "ok", (_lookups(index, store.id_type) if what == "lookup" else _scans(index))
    except (CorruptStoreError, FormatVersionError) as exc:
        return "error", str(exc)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    out = {}
    for id_type in ("int64", "string"):
        for layout in ("uncompacted", "compacted"):
            root = tmp_path_factory.mktemp(f"{id_type}-{layout}")
            store = _build(root / "pristine", id_type, layout)
            expected = {}
            for mode, digests in (("digests", store.digests), ("none", None)):
                for what in ("lookup", "scan"):
                    status, value = _answers(store, store.root, digests, what)
                    assert status == "ok", value
                    expected[mode, what] = value
            # Both modes answer alike on the sound store.
            assert expected["digests", "lookup"] == expected["none", "lookup"]
            assert expected["digests", "scan"] == expected["none", "scan"]
            out[id_type, layout] = (store, expected)
    return out


def _damage(path: Path, how: str, at: int, mask: int = 0xFF) -> None:
    raw = path.read_bytes()
    if how == "flip":
        b = bytearray(raw)
        b[at] ^= mask
        path.write_bytes(bytes(b))
    elif how == "truncate":
        path.write_bytes(raw[:at])
    else:
        path.unlink()


def _check_case(store: Store, expected: dict, work: Path, name: str, how: str, at: int, mask: int = 0xFF) -> dict:
    """Damage one file in a fresh copy, read with and without digests; assert soundness; return outcomes."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(store.root, work)
    _damage(work / "index" / name, how, at, mask)
    kind = store.files[name]
    outcomes = {}
    for mode, digests in (("digests", store.digests), ("none", None)):
        for what in ("lookup", "scan"):
            status, value = _answers(store, work, digests, what)
            case = f"{mode}/{what}: {how} {name} ({kind}) at {at} ^ {mask:#x}"
            if status == "error":
                named = name in value or (
                    # A deleted part leaves nothing to name in a store without digests but its steps.
                    mode == "none" and how == "delete" and "are in no index part" in value
                )
                assert named, f"{case}: error does not name the file: {value}"
                outcomes[mode, what] = "caught"
            else:
                assert value == expected[mode, what], f"{case}: a different answer"
                # Lookups answer from the sidecar alone; full scans read only a sidecar's header and
                # block table (version 2), its blocks are checked when a lookup reads them.
                must_fail = mode == "digests" and not (what == "lookup" and kind == "parquet+sidecar") and not (
                    what == "scan" and kind == "sidecar"
                )
                assert not must_fail, f"{case}: damage went unnoticed"
                outcomes[mode, what] = "same"
    return outcomes


def _offsets(path: Path, kind: str) -> dict[str, int]:
    raw = path.read_bytes()
    n = len(raw)
    if kind == "sidecar":
        header = {"header: id kind": 8, "header: block size": 10, "header: row count": 24, "header: table crc": 57}
        # Version 2: the sections (blocks), then the block table: prefix CRC, block CRCs, fences.
        k, r, _, _, s = struct.unpack_from("<QQqqQ", raw, 16)
        width, pad8 = raw[9], (lambda x: x + (-x % 8))
        table = 64 + 16 * k + 8 + pad8(width * r) + (8 * (k + 1) + pad8(s) if raw[8] == 2 else 0)
        table_parts = {"block 0: first key": 64, "block 0: steps": 64 + 16 * k + 8, "table: prefix crc": table,
                       "table: block 0 crc": table + 8, "table: first fence": n - 8}
        assert raw[6] == 2 and table < n
        return {"start": 0, **header, **table_parts, "middle": n // 2, "last byte": n - 1}
    footer_len = int.from_bytes(raw[-8:-4], "little")
    footer = n - 8 - footer_len
    return {
        "start": 0, "first page": 8, "middle": n // 2, "footer start": footer, "footer middle": footer + footer_len // 2,
        "footer length": n - 7, "last byte": n - 1,
    }


LAYOUTS = [(i, layout) for i in ("int64", "string") for layout in ("uncompacted", "compacted")]


@pytest.mark.parametrize("id_type, layout", LAYOUTS)
def test_fixed_corruption_matrix(stores, tmp_path, id_type, layout):
    """Flips at named offsets, truncations to several lengths and deletion, for every file of the index."""
    store, expected = stores[id_type, layout]
    tried = 0
    for name, kind in store.files.items():
        size = store.path(name).stat().st_size
        for at in _offsets(store.path(name), kind).values():
            _check_case(store, expected, tmp_path / "w", name, "flip", at)
            tried += 1
        for length in sorted({0, 1, 4, size // 2, size - 8, size - 1}):
            _check_case(store, expected, tmp_path / "w", name, "truncate", length)
            tried += 1
        outcomes = _check_case(store, expected, tmp_path / "w", name, "delete", 0)
        tried += 1
        # Absence is never data: with digests every deletion is caught, lookups included.
        assert outcomes["digests", "lookup"] == outcomes["digests", "scan"] == "caught", name
        if kind != "sidecar":  # a lost sidecar only sends lookups to the Parquet part
            assert outcomes["none", "lookup"] == "caught", name
    assert tried >= len(store.files) * 13  # every file flipped, truncated and deleted


@pytest.mark.parametrize("id_type, layout", LAYOUTS)
@settings(max_examples=40)
@given(data=st.data())
def test_random_flips(stores, tmp_path_factory, id_type, layout, data):
    """One byte flipped anywhere, with any nonzero mask, in any file: caught or harmless, never a different answer."""
    store, expected = stores[id_type, layout]
    name = data.draw(st.sampled_from(sorted(store.files)), label="file")
    size = store.path(name).stat().st_size
    at = data.draw(st.integers(0, size - 1), label="offset")
    mask = data.draw(st.integers(1, 255), label="mask")
    _check_case(store, expected, tmp_path_factory.mktemp("w") / "w", name, "flip", at, mask)


# --------------------------------------------------------------------------- what was seen on main


def _part_names(store: Store, kind: str) -> list[str]:
    return sorted(n for n, k in store.files.items() if k == kind)


@pytest.mark.parametrize("id_type", ["int64", "string"])
def test_deleting_an_uncompacted_part_is_refused_with_its_steps(stores, tmp_path, id_type):
    """Before: verify flagged it, but forget's lookup subtracted only some of the affected steps."""
    store, _ = stores[id_type, "uncompacted"]
    work = tmp_path / "w"
    shutil.copytree(store.root, work)
    middle = sorted(n for n in store.files if n.startswith("part-"))[1]  # steps [4, 8)
    (work / "index" / middle).unlink()
    io = LocalStoreIO(work)
    with pytest.raises(CorruptStoreError, match=r"committed steps \[4, 8\) are in no index part") as err:
        SampleIndex(io, id_type, STEPS).lookup(_ids([1, 2, 3], id_type))
    assert middle in str(err.value)  # its orphan sidecar says which part went missing
    assert err.value.step == 4
    with pytest.raises(CorruptStoreError, match=middle):
        SampleIndex(io, id_type, STEPS, digests=store.digests).lookup(_ids([1, 2, 3], id_type))


@pytest.mark.parametrize("id_type", ["int64", "string"])
def test_a_flipped_sample_id_in_a_parquet_page_is_caught(stores, tmp_path, id_type):
    """Before: a flipped byte in a sample id of a Parquet part passed and gave a silently wrong lookup."""
    store, _ = stores[id_type, "uncompacted"]
    (name,) = _part_names(store, "parquet")  # looked up through pyarrow: its pages are the answer
    md = pq.ParquetFile(store.path(name)).metadata
    col = md.row_group(0).column(0)
    assert col.path_in_schema == "sample_id"
    for digests in (store.digests, None):
        for at in range(col.data_page_offset + 8, col.data_page_offset + col.total_compressed_size):
            work = tmp_path / "w"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(store.root, work)
            _damage(work / "index" / name, "flip", at)
            index = SampleIndex(LocalStoreIO(work), id_type, STEPS, digests=digests)
            try:
                got = index.lookup(_ids(range(N_IDS), id_type))
            except CorruptStoreError as exc:
                assert name in str(exc)
                continue
            # The flip hit a page header field that no answer depends on.
            truth = SampleIndex(LocalStoreIO(store.root), id_type, STEPS).lookup(_ids(range(N_IDS), id_type))
            assert got[0].tolist() == truth[0].tolist() and got[1] == truth[1]
            assert digests is None, "a flip the digest missed"


def test_pyarrow_honours_page_checksums_for_the_encodings_used(tmp_path):
    """write_page_checksum + page_checksum_verification (pyarrow 26) catch a flip in DELTA pages, zstd or not."""
    from deltastore.index.parts import _parquet_options, index_schema

    for id_type, ids in (("int64", pa.array(np.arange(200))), ("string", pa.array([f"s{i:04d}" for i in range(200)]))):
        table = pa.Table.from_arrays(
            [ids, pa.array(np.arange(200) % 7), pa.array(np.zeros(200, np.int32))], schema=index_schema(id_type)
        )
        for compression in (None, "zstd"):
            path = tmp_path / f"{id_type}-{compression}.parquet"
            pq.write_table(table, path, **_parquet_options(id_type, compression, 64))
            raw = bytearray(path.read_bytes())
            col = pq.ParquetFile(path).metadata.row_group(0).column(0)
            assert "DELTA_BINARY_PACKED" in col.encodings or "DELTA_BYTE_ARRAY" in col.encodings
            raw[col.data_page_offset + col.total_compressed_size - 3] ^= 0x10  # inside the page body
            damaged = pa.BufferReader(bytes(raw))
            with pytest.raises(OSError, match="CRC"):
                pq.ParquetFile(damaged, page_checksum_verification=True).read()


FOOTER_SWEEP = textwrap.dedent(
    """
    import shutil, sys
    from pathlib import Path
    from deltastore.errors import DeltaStoreError
    from deltastore.index import SampleIndex
    from deltastore.storage import LocalStoreIO

    src, work, name, id_type, steps = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
    shutil.copytree(src, work)
    path = work / "index" / name
    raw = path.read_bytes()
    footer = len(raw) - 8 - int.from_bytes(raw[-8:-4], "little")
    caught = 0
    for at in range(footer, len(raw)):
        for mask in (0xFF, 0x01):
            b = bytearray(raw)
            b[at] ^= mask
            path.write_bytes(bytes(b))
            try:
                SampleIndex(LocalStoreIO(work), id_type, steps).lookup([5] if id_type == "int64" else ["sample-00005"])
            except DeltaStoreError:
                caught += 1
    print(caught, 2 * (len(raw) - footer))
    """
)


@pytest.mark.parametrize("id_type", ["int64", "string"])
def test_a_damaged_footer_never_kills_the_process(stores, tmp_path, id_type):
    """pyarrow 26 aborts the process (C++ exception through ``.statistics``) on a few damaged footers.

    Without a digest the reader must never touch a footer's statistics: every
    byte of the footer of a part read through pyarrow is flipped, in a child
    process, which must finish.
    """
    store, _ = stores[id_type, "uncompacted"]
    (name,) = _part_names(store, "parquet")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", FOOTER_SWEEP, str(store.root), str(tmp_path / "w"), name, id_type, str(STEPS)],
        capture_output=True, text=True, cwd=root, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    caught, tried = map(int, out.stdout.split())
    assert tried > 1000 and caught > tried // 2


@pytest.mark.parametrize("id_type", ["int64", "string"])
def test_a_flipped_row_group_count_is_caught(stores, tmp_path, id_type):
    """pyarrow reads a row group whose footer count went 16 -> -17 (one bit) as fewer rows, silently."""
    store, expected = stores[id_type, "compacted"]
    (name,) = _part_names(store, "parquet+sidecar")
    raw = store.path(name).read_bytes()
    footer = len(raw) - 8 - int.from_bytes(raw[-8:-4], "little")
    counts = [pq.ParquetFile(store.path(name)).metadata.row_group(i).num_rows for i in range(2)]
    hits = []
    for at in range(footer, len(raw) - 8):
        b = bytearray(raw)
        b[at] ^= 0x01
        try:
            md = pq.ParquetFile(pa.BufferReader(bytes(b))).metadata
            if [md.row_group(i).num_rows for i in range(2)] != counts and md.num_rows == sum(
                md.row_group(i).num_rows for i in range(md.num_row_groups)
            ) - md.row_group(0).num_rows - md.row_group(1).num_rows + sum(counts):
                hits.append(at)
        except (OSError, pa.ArrowException):
            continue
    assert hits, "no single flip changes only a row group's count"
    for at in hits[:4]:
        outcomes = _check_case(store, expected, tmp_path / "w", name, "flip", at, 0x01)
        assert outcomes["none", "scan"] == outcomes["digests", "scan"] == "caught"
