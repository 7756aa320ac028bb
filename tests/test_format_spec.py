"""The format is readable with standard tools and the spec in docs/FORMAT.md alone."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.dataset as pads
import pytest
import zarr

from deltastore import errors
from deltastore.format import with_checksum
from deltastore.masks import MaskGenerator
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader

from .helpers import record


def _decode(values: np.ndarray, scales, value_dtype: str, block: int, k: int) -> np.ndarray:
    if value_dtype == "bfloat16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    if value_dtype == "int8":
        return values.astype(np.float32) * np.repeat(scales, block)[: values.shape[0]]
    if value_dtype == "int4":  # two's-complement nibbles, the even value low; k from the group
        nib = np.stack([values & 15, values >> 4], axis=-1).reshape(-1).astype(np.int8)
        q = np.where(nib > 7, nib - 16, nib)[:k]
        return q.astype(np.float32) * np.repeat(scales, block)[:k]
    return values.astype(np.float32)


@pytest.mark.parametrize("value_dtype,mode", [("int8", "random"), ("int4", "random"), ("bfloat16", "random"), ("float32", "magnitude"), ("float16", "global")])
def test_a_step_rebuilt_from_zarr_and_the_spec_matches_the_reader(tmp_path, value_dtype, mode):
    record(tmp_path / "s", steps=5, plan=PruningPlan.layerwise(0.8, 0.4, mode=mode), value_dtype=value_dtype, steps_per_shard=4)
    g = zarr.open_group(str(tmp_path / "s"), mode="r")
    manifest = g.attrs["deltastore"]
    committed = json.loads((tmp_path / "s" / "commit.json").read_text())["committed_steps"]
    assert committed == 5
    masks = MaskGenerator(manifest["mask"]["seed"], manifest["mask"]["pool"])
    block = manifest["values"]["int8_block"]
    reader = StoreReader(tmp_path / "s")
    step = 3
    for grp in manifest["groups"]:
        arrays = g[grp["path"]]
        vals = _decode(arrays["values"][step], arrays["scales"][step] if value_dtype in ("int8", "int4") else None, value_dtype, block, grp["k"])
        flat = np.zeros(grp["n"], dtype=np.float32)
        if grp["selection"] == "all":
            flat[:] = vals
        elif grp["selection"] == "random":
            flat[masks.positions_np(step, grp["id"], grp["n"], grp["k"])] = vals
        else:
            idx = arrays["indices"][step]
            assert np.all(np.diff(idx) > 0)
            flat[idx] = vals
        for name, off, n in zip(grp["tensors"], grp["offsets"], grp["numels"]):
            expect = reader.read_step(step, name).reshape(-1).numpy()
            np.testing.assert_array_equal(flat[off : off + n], expect)


def test_index_opens_with_pyarrow_dataset(tmp_path):
    record(tmp_path / "s", steps=4, batch=8)
    table = pads.dataset(str(tmp_path / "s" / "index"), format="parquet").to_table()
    assert table.schema.names == ["sample_id", "step", "epoch"]
    assert table.num_rows == 32
    steps = table.column("step").to_numpy()
    ids = table.column("sample_id").to_numpy()
    assert sorted(ids[steps == 2].tolist()) == list(range(16, 24))


def test_unknown_selection_is_refused(tmp_path):
    record(tmp_path / "s", steps=1)
    meta = json.loads((tmp_path / "s" / "zarr.json").read_text())
    meta["attributes"]["deltastore"]["groups"][0]["selection"] = "psychic"
    (tmp_path / "s" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(errors.FormatVersionError, match="psychic"):
        StoreReader(tmp_path / "s")


def test_uncommitted_rows_are_invisible(tmp_path):
    record(tmp_path / "s", steps=6, steps_per_shard=2)
    commit = tmp_path / "s" / "commit.json"
    obj = json.loads(commit.read_text())
    obj["committed_steps"] = 4  # as if the last flush had not committed (a record a writer could have written)
    commit.write_text(json.dumps(with_checksum(obj)))
    r = StoreReader(tmp_path / "s")
    assert r.committed_steps == 4
    with pytest.raises(errors.InvalidArgumentError):
        r.read_step(5, "fc1.weight")
    steps, unknown = r.index.lookup([40, 0])  # sample 40 was only in step 5
    assert steps.tolist() == [0] and unknown == [40]


@pytest.mark.parametrize("value_dtype,codec", [("int8", "blosc-lz4"), ("float32", "blosc-zstd"), ("bfloat16", "blosc-zstd")])
def test_a_store_without_a_named_codec_gets_its_value_formats_default(tmp_path, value_dtype, codec):
    record(tmp_path / "s", steps=2, value_dtype=value_dtype)
    assert StoreReader(tmp_path / "s").manifest.codec == codec
    comp = zarr.open_group(str(tmp_path / "s"), mode="r")[StoreReader(tmp_path / "s").manifest.groups[0].path + "/values"].compressors
    assert [type(c).__name__ for c in comp] == ["BloscCodec", "Crc32cCodec"]
    assert comp[0].cname.value == codec.split("-")[1]
