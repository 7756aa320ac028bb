"""A store opens in plain Zarr without warnings (issue 10, item 6; FORMAT.md §2.1).

The root's consolidated metadata, written at close, lets zarr list every group and array
without listing the store's folder (whose non-Zarr entries make zarr warn). It must describe
exactly the committed steps, vanish before an append grows any array, never be used by our
reader, and leave old stores (commit records 1 and 2) readable.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from deltastore.errors import CorruptStoreError, RecordingFailedError
from deltastore.format import read_commit
from deltastore.format.consolidated import CONSOLIDATED_KEY, consolidated_json, root_bytes
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader
from deltastore.record import Recorder
from deltastore.storage import LocalStoreIO
from deltastore.verify import verify_store

from .helpers import TinyNet, make_optimizer, record, train_steps

FIXTURES = Path(__file__).parent / "fixtures"
README = Path(__file__).resolve().parent.parent / "README.md"
PLANS = {"int8-magnitude": ("int8", PruningPlan.layerwise(0.8, 0.4, mode="magnitude")),
         "f32-dense": ("float32", PruningPlan.dense())}


@contextlib.contextmanager
def no_warnings():
    """Every warning is an error inside (a ZarrUserWarning from listing fails the test)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def root(path) -> dict:
    return json.loads((Path(path) / "zarr.json").read_bytes())


def expected_nodes(reader: StoreReader) -> dict[str, tuple]:
    """Every group path -> its tensors, and every array path -> (shape, tensors), as the manifest says."""
    m, out = reader.manifest, {}
    for g in m.groups:
        out[g.path] = tuple(g.tensors)
        for name, (cols, _, _) in m.arrays(g).items():
            out[f"{g.path}/{name}"] = ((reader.committed_steps, cols), tuple(g.tensors))
    return out


def check_plain_zarr_listing(path, *, legacy: bool = False) -> None:
    """members(), tree(), arrays(), groups() list every group and array, no warning, committed shapes, tensor names."""
    want = expected_nodes(StoreReader(path))
    with no_warnings():
        g = zarr.open_group(str(path), mode="r")
        members = dict(g.members(max_depth=None))
        tree = str(g.tree())
        top_arrays = list(g.arrays())
        groups = dict(g.groups())
        sub_arrays = {f"{p}/{n}": a for p, sub in groups.items() for n, a in sub.arrays()}
    assert set(members) == set(want)
    assert set(groups) == {p for p in want if "/" not in p} and top_arrays == []
    assert set(sub_arrays) == {p for p in want if "/" in p}
    for p, (shape, tensors) in ((p, v) for p, v in want.items() if "/" in p):
        arr = members[p]
        assert isinstance(arr, zarr.Array) and arr.shape == shape == sub_arrays[p].shape, p
        assert re.search(rf"{p.split('/')[1]} \({shape[0]}, {shape[1]}\)", tree), (p, tree)
        if not legacy:
            assert tuple(arr.attrs["tensors"]) == tensors, p
    for p in groups:
        assert tuple(members[p].attrs["tensors"]) == want[p]


@pytest.mark.parametrize("name", sorted(PLANS))
def test_a_closed_store_lists_in_plain_zarr_without_warnings(tmp_path, name):
    value_dtype, plan = PLANS[name]
    record(tmp_path / "s", steps=5, plan=plan, value_dtype=value_dtype, steps_per_shard=2)
    check_plain_zarr_listing(tmp_path / "s")
    assert read_commit(LocalStoreIO(tmp_path / "s"))["commit_version"] == 3
    assert verify_store(tmp_path / "s").ok
    # What plain zarr reads through the consolidated metadata is what our reader reads.
    reader = StoreReader(tmp_path / "s")
    g = zarr.open_group(str(tmp_path / "s"), mode="r")
    for grp in reader.manifest.groups:
        if value_dtype == "float32":
            values, _ = reader.read_rows(grp.id, range(5))
            assert np.array_equal(g[f"{grp.path}/values"][:], values.numpy())
        if grp.selection.stores_indices:
            _, idx = reader.read_rows(grp.id, range(5))
            assert np.array_equal(g[f"{grp.path}/indices"][:], idx.numpy())


def test_consolidated_metadata_is_byte_for_byte_what_zarr_writes(tmp_path):
    record(tmp_path / "s", steps=3, plan=PruningPlan.layerwise(0.8, 0.4, mode="magnitude"), value_dtype="int8")
    ours = (tmp_path / "s" / "zarr.json").read_bytes()
    stripped = root(tmp_path / "s")
    del stripped[CONSOLIDATED_KEY]
    (tmp_path / "s" / "zarr.json").write_bytes(root_bytes(stripped["attributes"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's own consolidation lists the folder, and warns
        zarr.consolidate_metadata(str(tmp_path / "s"))
    assert (tmp_path / "s" / "zarr.json").read_bytes() == ours


def test_append_removes_it_before_growing_and_close_writes_it_again(tmp_path):
    path = tmp_path / "s"
    model, _, _ = record(path, steps=4, steps_per_shard=2, optimizer="sgd")
    assert CONSOLIDATED_KEY in root(path)
    opt = make_optimizer("sgd", model.parameters())
    rec = Recorder(path, model, opt, mode="a")
    assert CONSOLIDATED_KEY not in root(path)  # before any step: plain zarr never sees stale shapes
    assert StoreReader(path).committed_steps == 4 and verify_store(path).ok  # readable while recording
    train_steps(rec, model, opt, 4, 3)
    rec.flush()
    assert CONSOLIDATED_KEY not in root(path)
    rec.close()
    assert root(path)[CONSOLIDATED_KEY] == consolidated_json(StoreReader(path).manifest, 7)
    check_plain_zarr_listing(path)
    assert verify_store(path).ok


class FailingIO(LocalStoreIO):
    """A local store whose writes of one key fail as a full disk would (from the ``after``-th one on)."""

    def __init__(self, root_dir, key: str, after: int = 1):
        super().__init__(root_dir)
        self.key, self.after, self.seen = key, after, 0

    @contextlib.contextmanager
    def writer(self, key, *, fsync=False):
        if key == self.key:
            self.seen += 1
            if self.seen >= self.after:
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
        with super().writer(key, fsync=fsync) as f:
            yield f


def test_a_crash_mid_recording_leaves_no_stale_consolidated_shapes(tmp_path):
    """A flush that grows the arrays and dies before its commit record (what a crash leaves)."""
    path = tmp_path / "s"
    model, _, _ = record(path, steps=4, steps_per_shard=2, optimizer="sgd")
    opt = make_optimizer("sgd", model.parameters())
    rec = Recorder(FailingIO(path, "commit.json", after=2), model, opt, mode="a")  # 1: the record written at open
    with pytest.raises(RecordingFailedError):
        train_steps(rec, model, opt, 4, 4)
        rec.flush()
    with contextlib.suppress(RecordingFailedError):
        rec.close()
    meta = root(path)
    assert CONSOLIDATED_KEY not in meta  # the arrays now have more rows than are committed
    rows = json.loads((path / "g0000" / "values" / "zarr.json").read_bytes())["shape"][0]
    assert rows > StoreReader(path).committed_steps == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no consolidated metadata: zarr lists the folder, and warns (documented)
        g = zarr.open_group(str(path), mode="r")
        assert g.metadata.consolidated_metadata is None and g["g0000/values"].shape[0] == rows
    assert verify_store(path).ok
    # Resuming drops the tail; the next close describes exactly the committed steps.
    rec = Recorder(path, model, opt, mode="a")
    rec.close()
    assert root(path)[CONSOLIDATED_KEY] == consolidated_json(StoreReader(path).manifest, 4)
    check_plain_zarr_listing(path)


def test_a_recording_never_closed_has_no_consolidated_metadata(tmp_path):
    model = TinyNet(0)
    opt = make_optimizer("sgd", model.parameters())
    rec = Recorder(tmp_path / "s", model, opt, steps_per_shard=2)
    train_steps(rec, model, opt, 0, 3)
    rec.flush()
    rec.writer.abort()  # what a killed process leaves (the lock released)
    assert CONSOLIDATED_KEY not in root(tmp_path / "s")
    assert StoreReader(tmp_path / "s").committed_steps == 3 and verify_store(tmp_path / "s").ok


def test_a_failed_root_write_at_close_leaves_a_sound_store(tmp_path):
    path = tmp_path / "s"
    io = FailingIO(path, "zarr.json", after=2)  # 1: creation (through zarr); 2: the rewrite at close
    model = TinyNet(0)
    opt = make_optimizer("sgd", model.parameters())
    rec = Recorder(io, model, opt, steps_per_shard=2)
    train_steps(rec, model, opt, 0, 3)
    with pytest.raises(RecordingFailedError, match="consolidated metadata") as info:
        rec.close()
    assert info.value.committed_steps == 3
    assert CONSOLIDATED_KEY not in root(path)
    commit = read_commit(LocalStoreIO(path))
    assert commit["model_fingerprint"] is not None and commit["trained"] is not None  # committed before the rewrite
    assert StoreReader(path).committed_steps == 3 and verify_store(path).ok
    Recorder(path, model, opt, mode="a").close()  # a later close writes it
    check_plain_zarr_listing(path)


def _flip_root_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("flip") / "s"
    record(path, steps=3, plan=PruningPlan.layerwise(0.8, 0.4, mode="magnitude"), value_dtype="int8", steps_per_shard=2)
    reader = StoreReader(path)
    sums = reader.sum_updates(range(3)).updates
    return path, (path / "zarr.json").read_bytes(), sums


@pytest.fixture(scope="module")
def flip_store(tmp_path_factory):
    return _flip_root_store(tmp_path_factory)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255), text=st.booleans())
def test_a_flipped_byte_in_the_consolidated_metadata_is_caught_or_harmless(flip_store, where, xor, text):
    """Verify reports it, or the reader refuses the store, or the JSON is unchanged (whitespace):
    never a different answer, because the reader does not use it. ``text``: a byte that is not
    indentation (most flips of indentation only break the JSON)."""
    path, raw, sums = flip_store
    start = raw.index(b'"consolidated_metadata"')
    end = raw.rindex(b'"node_type"')  # zarr writes attributes, zarr_format, consolidated_metadata, then the root's node_type
    span = [i for i in range(start, end) if raw[i] not in b" \n"] if text else range(start, end)
    pos = span[int(where * len(span))]
    bad = bytearray(raw)
    bad[pos] ^= xor
    (path / "zarr.json").write_bytes(bytes(bad))
    try:
        try:
            reader = StoreReader(path)
        except CorruptStoreError:
            return  # refused (not JSON, or not the group a version-3 record allows)
        unchanged = _json_or_none(bytes(bad)) == json.loads(raw)
        assert verify_store(path).ok == unchanged, (pos, xor)
        got = reader.sum_updates(range(3)).updates
        assert all(torch.equal(got[k], sums[k]) for k in sums)
    finally:
        (path / "zarr.json").write_bytes(raw)


def _json_or_none(data: bytes):
    try:
        return json.loads(data)
    except ValueError:
        return None


def test_the_reader_never_uses_consolidated_metadata_and_verify_names_it(tmp_path):
    path = tmp_path / "s"
    record(path, steps=3, steps_per_shard=2)
    sums = StoreReader(path).sum_updates(range(3)).updates
    meta = root(path)
    meta[CONSOLIDATED_KEY]["metadata"]["g0000/values"]["shape"][0] = 2  # stale: one row short
    meta[CONSOLIDATED_KEY]["metadata"]["g0001/values"]["codecs"] = []  # a codec plain zarr would misread with
    (path / "zarr.json").write_text(json.dumps(meta, indent=2))
    got = StoreReader(path).sum_updates(range(3)).updates
    assert all(torch.equal(got[k], sums[k]) for k in sums)
    problems = [str(p) for p in verify_store(path).problems]
    assert len(problems) == 1 and "consolidated metadata describing 3 committed steps" in problems[0], problems
    assert "g0000/values.shape" in problems[0]


def test_a_version_3_root_allows_nothing_else_unpinned(tmp_path):
    """Version 3 pins the manifest, not the file: other content in the root is refused, a changed manifest too."""
    path = tmp_path / "s"
    record(path, steps=2)
    good = root(path)
    extra = json.loads(json.dumps(good))
    extra["attributes"]["note"] = "added by hand"
    (path / "zarr.json").write_text(json.dumps(extra))
    with pytest.raises(CorruptStoreError, match="only attribute is the manifest"):
        StoreReader(path)
    changed = json.loads(json.dumps(good))
    changed["attributes"]["deltastore"]["steps_per_shard"] += 1
    (path / "zarr.json").write_text(json.dumps(changed))
    with pytest.raises(CorruptStoreError, match="manifest was damaged or edited"):
        StoreReader(path)
    (path / "zarr.json").write_text(json.dumps(good, indent=5))  # other whitespace, same JSON: the same store
    assert verify_store(path).ok


def _fixture_copy(tmp_path, version: str, name: str) -> tuple[Path, dict, dict]:
    store = tmp_path / name
    shutil.copytree(FIXTURES / version / name, store)
    meta = json.loads((FIXTURES / version / f"{name}.json").read_text())
    return store, meta, load_file(str(FIXTURES / version / f"{name}.expected.safetensors"))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_old_stores_read_verify_and_upgrade_on_append(tmp_path, version):
    """Stores with commit records 1 and 2 (written before this change) read as before; appending
    upgrades the record to version 3 and the next close writes the consolidated metadata."""
    store, meta, expected = _fixture_copy(tmp_path, version, "f32-global")
    old_commit = read_commit(LocalStoreIO(store))
    assert old_commit.get("commit_version", 1) == int(version[1])
    assert CONSOLIDATED_KEY not in root(store)
    reader = StoreReader(store)
    assert reader.committed_steps == meta["committed_steps"] and reader.model_fingerprint == meta["model_fingerprint"]
    sums = reader.sum_updates(range(reader.committed_steps)).updates
    assert all(torch.equal(sums[k], expected[f"sum_all/{k}"]) for k in sums)
    assert verify_store(store).ok
    # Appending: the model is a stand-in with the fixture's tensors (the steps it adds are its own).
    from tests.fixtures.make_compat_stores import Net

    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rec = Recorder(store, model, opt, mode="a")
    x = torch.randn(6, 1, 8, 8)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), torch.zeros(6, dtype=torch.long)).backward()
    rec.samples(list(range(2000, 2006)))
    opt.step()
    rec.close()
    commit = read_commit(LocalStoreIO(store))
    assert commit["commit_version"] == 3 and commit["committed_steps"] == meta["committed_steps"] + 1
    check_plain_zarr_listing(store, legacy=version == "v1")  # v1 arrays predate their tensors attribute
    reader = StoreReader(store)
    again = reader.sum_updates(range(meta["committed_steps"])).updates  # the old steps mean what they meant
    assert all(torch.equal(again[k], expected[f"sum_all/{k}"]) for k in again)
    assert verify_store(store).ok


def test_readme_plain_zarr_snippet_runs_without_warnings(tmp_path, monkeypatch, capsys):
    """The README's "Reading a store without deltastore" block, verbatim, on a closed store."""
    section = README.read_text().split("## Reading a store without deltastore", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    record(tmp_path / "run.ds", steps=3, plan=PruningPlan.layerwise(0.8, 0.4, mode="magnitude"), value_dtype="int8")
    monkeypatch.chdir(tmp_path)
    with no_warnings():
        exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    for grp in StoreReader(tmp_path / "run.ds").manifest.groups:
        assert f"{grp.path}/values" in out and str(list(grp.tensors)) in out, grp.path


def test_the_record_version_decides_what_the_manifest_digest_covers(tmp_path):
    """Version 3 pins the manifest's JSON; the same digest under version 2 (the bytes rule) is refused,
    and a version-2 record pinning the bytes is refused once the root gains consolidated metadata."""
    from deltastore.format.commit import canonical, sha256_of, with_checksum

    path = tmp_path / "s"
    record(path, steps=2)
    io = LocalStoreIO(path)
    commit = read_commit(io)
    body = {k: v for k, v in commit.items() if k != "checksum"}

    def write(record_):
        (path / "commit.json").write_text(json.dumps(with_checksum(record_)))

    assert commit["manifest_sha256"] == sha256_of(canonical(root(path)["attributes"]["deltastore"]))
    write({**body, "commit_version": 2})  # JSON digest under the bytes rule
    with pytest.raises(CorruptStoreError, match="manifest was damaged or edited"):
        StoreReader(path)
    write({**body, "commit_version": 2, "manifest_sha256": sha256_of((path / "zarr.json").read_bytes())})
    assert StoreReader(path).committed_steps == 2  # the bytes rule holds for these bytes...
    stripped = root(path)
    del stripped[CONSOLIDATED_KEY]
    (path / "zarr.json").write_bytes(root_bytes(stripped["attributes"]))
    with pytest.raises(CorruptStoreError, match="manifest was damaged or edited"):
        StoreReader(path)  # ...and breaks when the root is rewritten, which version 3 allows
    write(body)
    assert StoreReader(path).committed_steps == 2 and verify_store(path).ok
