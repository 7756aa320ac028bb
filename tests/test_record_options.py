"""RecordOptions (deltastore.record.options): every recording setting declared once, checked at the edge."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from deltastore.errors import InvalidArgumentError
from deltastore.plan import PruningPlan
from deltastore.record import RecordOptions, Recorder

from .helpers import TinyNet


def test_defaults_are_filled_in_and_explained():
    o = RecordOptions.from_kwargs()
    assert o.plan == PruningPlan.layerwise()
    assert (o.value_dtype, o.codec, o.codec_level) == ("int8", "blosc-lz4", 5)
    assert RecordOptions.from_kwargs(value_dtype="float32").codec == "blosc-zstd"
    assert RecordOptions.from_kwargs(codec="zstd").codec_level == 3


def test_keywords_override_an_options_object():
    base = RecordOptions(value_dtype="bfloat16", steps_per_shard=8)
    o = RecordOptions.from_kwargs(base, steps_per_shard=4)
    assert (o.value_dtype, o.steps_per_shard) == ("bfloat16", 4)


@pytest.mark.parametrize("field,value,match", [
    ("steps_per_shard", 0, "steps_per_shard: expected an integer >= 1"),
    ("buffer_bytes", True, "buffer_bytes: expected an integer >= 1"),
    ("int8_block", 2.5, "int8_block"),
    ("mask_seed", -1, r"mask_seed: expected an integer in \[0, 2\*\*63\)"),
    ("sample_id_type", "uuid", "sample_id_type: expected one of"),
    ("value_dtype", "int2", "value_dtype: expected one of"),
    ("codec", "gzip", "codec: expected one of"),
    ("plan", 0.5, "plan: expected a PruningPlan"),
])
def test_bad_values_name_what_was_expected(field, value, match):
    with pytest.raises(InvalidArgumentError, match=match):
        RecordOptions.from_kwargs(**{field: value})


def test_unknown_option_names_are_refused(tmp_path):
    with pytest.raises(InvalidArgumentError, match="unknown"):
        RecordOptions.from_kwargs(value_type="int8")
    model = TinyNet()
    with pytest.raises(InvalidArgumentError, match="unknown"):
        Recorder(tmp_path / "s", model, torch.optim.SGD(model.parameters(), lr=0.1), steps_per_shrad=4)
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_the_recorder_takes_every_option_by_keyword(tmp_path):
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    names = {f.name for f in dataclasses.fields(RecordOptions)}
    assert {"plan", "value_dtype", "codec", "grad_accumulation", "record_buffers", "fsync"} <= names
    rec = Recorder(tmp_path / "s", model, opt, RecordOptions(value_dtype="float16"), mask_seed=11, record_buffers=False)
    m = rec.manifest
    assert (m.value_dtype, m.mask_seed) == ("float16", 11)
    assert all(t.kind == "parameter" for t in m.tensors)
    rec.close()
