"""The manifest (deltastore.format.manifest): JSON round trip, groups, refusing what is not ours."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deltastore.errors import CorruptStoreError, FormatVersionError, StoreNotFoundError
from deltastore.format import FORMAT_VERSION, Manifest, build_groups, load_manifest, model_fingerprint
from deltastore.plan import PruningPlan, TensorSpec
from deltastore.storage import LocalStoreIO

SPECS = [TensorSpec("conv.weight", (4, 1, 3, 3), "float32"), TensorSpec("conv.bias", (4,), "float32"),
         TensorSpec("fc.weight", (3, 64), "float32"), TensorSpec("bn.running_mean", (4,), "float32", "buffer")]
PLANS = [PruningPlan.dense(), PruningPlan.layerwise(), PruningPlan.uniform(0.5, mode="magnitude"),
         PruningPlan.uniform(0.7, mode="global"), PruningPlan.by_pattern({"fc.*": 0.9})]


def _manifest(plan, value_dtype="int8") -> Manifest:
    return Manifest(tuple(SPECS), tuple(build_groups(SPECS, plan)), plan, 3, 4, value_dtype, 256, "blosc-lz4", 5, 8, "int64")


@settings(max_examples=30)
@given(plan=st.sampled_from(PLANS), value_dtype=st.sampled_from(["int8", "float32", "bfloat16", "float16"]))
def test_json_round_trip(plan, value_dtype):
    m = _manifest(plan, value_dtype)
    back = Manifest.from_json(json.loads(json.dumps(m.to_json())))
    assert back == m
    assert back.values.name == value_dtype


def test_groups_cover_every_tensor_once():
    for plan in PLANS:
        groups = build_groups(SPECS, plan)
        names = [t for g in groups for t in g.tensors]
        assert sorted(names) == sorted(s.name for s in SPECS)
        for g in groups:
            assert 0 <= g.k <= g.n
            if g.selection.name == "all":
                assert g.k == g.n
    (glob,) = [g for g in build_groups(SPECS, PLANS[3]) if len(g.tensors) > 1]
    assert glob.selection.name == "magnitude" and glob.offsets == (0, 36)


def test_arrays_follow_the_value_format_and_the_selection():
    m = _manifest(PruningPlan.uniform(0.5, mode="magnitude"))
    w = m.group_of("fc.weight")
    assert list(m.arrays(w)) == ["values", "scales", "indices"]
    r = _manifest(PruningPlan.layerwise(), "float32")
    assert list(r.arrays(r.group_of("fc.weight"))) == ["values"]


@pytest.mark.parametrize("mutate,error,match", [
    (lambda o: o.update(format="other"), CorruptStoreError, "expected a deltastore manifest"),
    (lambda o: o.update(format_version=FORMAT_VERSION + 1), FormatVersionError, "upgrade deltastore"),
    (lambda o: o["mask"].update(algorithm="xorshift"), FormatVersionError, "unknown mask algorithm"),
    (lambda o: o["groups"][0].update(selection="pickle"), FormatVersionError, "unknown selection"),
    (lambda o: o.pop("values"), CorruptStoreError, "malformed manifest"),
])
def test_manifests_we_cannot_read_are_refused(mutate, error, match):
    obj = json.loads(json.dumps(_manifest(PruningPlan.layerwise()).to_json()))
    mutate(obj)
    with pytest.raises(error, match=match):
        Manifest.from_json(obj)


def test_load_manifest_reads_the_group_metadata_and_names_the_file(tmp_path):
    io = LocalStoreIO(tmp_path)
    with pytest.raises(StoreNotFoundError, match="expected a deltastore store"):
        load_manifest(io)
    m = _manifest(PruningPlan.layerwise())
    io.write("zarr.json", json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"deltastore": m.to_json()}}).encode())
    assert load_manifest(io) == m
    io.write("zarr.json", b"{not json")
    with pytest.raises(CorruptStoreError, match="zarr.json: expected Zarr v3 group metadata"):
        load_manifest(io)
    io.write("zarr.json", json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}).encode())
    with pytest.raises(CorruptStoreError, match="not a deltastore store"):
        load_manifest(io)


def test_fingerprint_depends_on_names_dtypes_shapes_and_bytes():
    a = {"w": torch.zeros(2, 3)}
    fp = model_fingerprint(a)
    assert fp.startswith("sha256:") and fp == model_fingerprint({"w": torch.zeros(2, 3)})
    assert fp != model_fingerprint({"v": torch.zeros(2, 3)})
    assert fp != model_fingerprint({"w": torch.zeros(3, 2)})
    assert fp != model_fingerprint({"w": torch.zeros(2, 3, dtype=torch.float64)})
    b = torch.zeros(2, 3)
    b[1, 2] = 1e-30
    assert fp != model_fingerprint({"w": b})


CRAFTED = {
    "zero int8 block": (lambda o: o["values"].update(int8_block=0), "int8_block"),
    "zero steps per shard": (lambda o: o.update(steps_per_shard=0), "steps_per_shard"),
    "huge steps per shard": (lambda o: o.update(steps_per_shard=10**12), "steps_per_shard"),
    "k above n": (lambda o: o["groups"][2].update(k=10**9), "k in"),
    "group numel disagrees with the shape": (lambda o: o["groups"][0].update(numels=[7]), "expected offset 0 and 36 elements"),
    "tensor in two groups": (lambda o: o["groups"][1].update(tensors=["conv.weight"]), "named once"),
    "tensor in no group": (lambda o: o["groups"].pop(), "not grouped|named once|exactly one group"),
    "duplicate tensor": (lambda o: o["tensors"].append(dict(o["tensors"][0])), "unique"),
    "negative shape": (lambda o: o["tensors"][0].update(shape=[-4, 1, 3, 3]), "shape"),
    "unknown id type": (lambda o: o.update(sample_id_type="pickle"), "sample_id_type"),
    "group id out of order": (lambda o: o["groups"][0].update(id=5), "expected id 0"),
}


@pytest.mark.parametrize("mutate,match", CRAFTED.values(), ids=CRAFTED.keys())
def test_crafted_manifests_are_refused_before_use(tmp_path, mutate, match):
    obj = json.loads(json.dumps(_manifest(PruningPlan.layerwise()).to_json()))
    mutate(obj)
    io = LocalStoreIO(tmp_path)
    io.write("zarr.json", json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"deltastore": obj}}).encode())
    with pytest.raises(CorruptStoreError, match=match):
        load_manifest(io)
