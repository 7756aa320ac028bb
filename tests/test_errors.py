"""One test per documented error of the engine: each says what was expected and what came."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deltastore import errors
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader
from deltastore.record import Recorder
from deltastore.verify import verify_store

from .helpers import TinyNet, data, make_optimizer, record


def _one_step(rec, model, opt, ids=None):
    x, y = data()
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x[:4]), y[:4]).backward()
    if ids is not None:
        rec.samples(ids)
    opt.step()


def test_store_that_exists_is_never_overwritten(tmp_path):
    record(tmp_path / "s", steps=2)
    before = sorted(p.name for p in (tmp_path / "s").iterdir())
    model = TinyNet()
    with pytest.raises(errors.StoreExistsError, match="never overwrites"):
        Recorder(tmp_path / "s", model, make_optimizer("adam", model.parameters()))
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == before
    assert StoreReader(tmp_path / "s").committed_steps == 2


def test_append_with_mismatched_model_names_the_differences(tmp_path):
    record(tmp_path / "s", steps=2)
    other = TinyNet(width=4)
    with pytest.raises(errors.ModelMismatchError, match=r"conv.weight: expected parameter float32\[6, 1, 3, 3\], got parameter float32\[4, 1, 3, 3\]"):
        Recorder(tmp_path / "s", other, make_optimizer("adam", other.parameters()), mode="a")


def test_append_with_unknown_parameter(tmp_path):
    record(tmp_path / "s", steps=2)
    model = TinyNet()
    model.extra = torch.nn.Linear(2, 2)
    with pytest.raises(errors.ModelMismatchError, match="unknown extra.weight"):
        Recorder(tmp_path / "s", model, make_optimizer("adam", model.parameters()), mode="a")


def test_optimizer_parameter_outside_the_model(tmp_path):
    model = TinyNet()
    stray = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(errors.ModelMismatchError, match="belong to the model"):
        Recorder(tmp_path / "s", model, make_optimizer("adam", list(model.parameters()) + [stray]))


@pytest.mark.parametrize("bad", [[0.5, 1.5], ["a", "b"], [True, False], np.array([1.0, 2.0])])
def test_wrong_sample_id_types_for_an_integer_store(tmp_path, bad):
    model = TinyNet()
    opt = make_optimizer("adam", model.parameters())
    with Recorder(tmp_path / "s", model, opt) as rec:
        with pytest.raises(errors.SampleIdTypeError, match="int"):
            rec.samples(bad)


def test_integer_ids_for_a_string_store(tmp_path):
    model = TinyNet()
    opt = make_optimizer("adam", model.parameters())
    with Recorder(tmp_path / "s", model, opt, sample_id_type="string") as rec:
        with pytest.raises(errors.SampleIdTypeError, match="str"):
            rec.samples([1, 2])
        rec.samples(["alice", "bob"])
        _one_step(rec, model, opt)
    assert StoreReader(tmp_path / "s").index.steps_for(["bob"]).tolist() == [0]


def test_newer_format_version_is_refused(tmp_path):
    record(tmp_path / "s", steps=1)
    meta = json.loads((tmp_path / "s" / "zarr.json").read_text())
    meta["attributes"]["deltastore"]["format_version"] = 99
    (tmp_path / "s" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(errors.FormatVersionError, match="format version 99.*reads up to 1"):
        StoreReader(tmp_path / "s")


def test_recorder_used_after_close(tmp_path):
    model = TinyNet()
    opt = make_optimizer("adam", model.parameters())
    rec = Recorder(tmp_path / "s", model, opt)
    rec.close()
    with pytest.raises(errors.RecorderClosedError, match="closed"):
        rec.samples([1, 2])
    # The hooks are gone: the optimizer steps freely and nothing is recorded.
    _one_step(None, model, opt)
    assert StoreReader(tmp_path / "s").committed_steps == 0


def test_step_without_sample_ids_is_refused_before_it_changes_the_model(tmp_path):
    model = TinyNet()
    opt = make_optimizer("adam", model.parameters())
    with Recorder(tmp_path / "s", model, opt) as rec:
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        with pytest.raises(errors.MissingSampleIdsError, match="before optimizer.step"):
            _one_step(rec, model, opt)
        assert all(torch.equal(before[k], v) for k, v in model.named_parameters())
        with pytest.raises(errors.MissingSampleIdsError, match="at least one"):
            rec.samples([])


def test_missing_store(tmp_path):
    with pytest.raises(errors.StoreNotFoundError, match="expected a deltastore store"):
        StoreReader(tmp_path / "nothing")


def test_empty_directory_is_not_a_store(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(errors.StoreNotFoundError):
        StoreReader(tmp_path / "e")


def test_corrupted_commit_file(tmp_path):
    record(tmp_path / "s", steps=1)
    (tmp_path / "s" / "commit.json").write_text("{not json")
    with pytest.raises(errors.CorruptStoreError, match="committed_steps"):
        StoreReader(tmp_path / "s")


def test_corrupted_manifest(tmp_path):
    record(tmp_path / "s", steps=1)
    (tmp_path / "s" / "zarr.json").write_text("garbage")
    with pytest.raises(errors.CorruptStoreError, match="zarr.json"):
        StoreReader(tmp_path / "s")


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_chunk_names_step_and_tensor(tmp_path):
    record(tmp_path / "s", steps=6, steps_per_shard=2, plan=PruningPlan.layerwise())
    r = StoreReader(tmp_path / "s")
    g = r.manifest.group_of("fc1.weight")
    _flip_a_byte(tmp_path / "s" / g.path / "values" / "c" / "1" / "0")  # shard of steps 2-3
    r = StoreReader(tmp_path / "s")
    with pytest.raises(errors.CorruptStoreError) as info:
        r.sum_updates(range(6))
    assert info.value.tensor == "fc1.weight" and info.value.step in (2, 3)
    assert "fc1.weight" in str(info.value) and f"step {info.value.step}" in str(info.value)
    report = verify_store(tmp_path / "s")
    assert not report.ok
    assert {(p.step, p.tensor) for p in report.problems} <= {(2, "fc1.weight"), (3, "fc1.weight")}


def test_bad_plan_values():
    with pytest.raises(errors.InvalidPlanError, match=r"\[0, 1\)"):
        PruningPlan.uniform(1.2)
    with pytest.raises(errors.InvalidPlanError, match="mode"):
        PruningPlan.uniform(0.5, mode="sideways")


def test_bad_value_dtype_and_codec(tmp_path):
    model = TinyNet()
    with pytest.raises(errors.InvalidArgumentError, match="value_dtype"):
        Recorder(tmp_path / "a", model, make_optimizer("adam", model.parameters()), value_dtype="float8")
    with pytest.raises(errors.InvalidArgumentError, match="codec"):
        Recorder(tmp_path / "b", model, make_optimizer("adam", model.parameters()), codec="rar")


def test_steps_out_of_range(tmp_path):
    record(tmp_path / "s", steps=3)
    with pytest.raises(errors.InvalidArgumentError, match=r"\[0, 3\)"):
        StoreReader(tmp_path / "s").sum_updates([1, 3])


def test_device_that_does_not_exist(tmp_path):
    record(tmp_path / "s", steps=2)
    with pytest.raises(errors.DeviceError):
        StoreReader(tmp_path / "s").sum_updates([0], device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(errors.DeviceError, match="CUDA is not available"):
            StoreReader(tmp_path / "s").sum_updates([0], device="cuda")


def test_errors_are_catchable_as_builtins():
    assert issubclass(errors.StoreExistsError, FileExistsError)
    assert issubclass(errors.StoreNotFoundError, FileNotFoundError)
    assert issubclass(errors.ModelMismatchError, ValueError)
    assert issubclass(errors.SampleIdTypeError, TypeError)
    assert all(issubclass(getattr(errors, n), errors.DeltaStoreError) for n in errors.__all__)
