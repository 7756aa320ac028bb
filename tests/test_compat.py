"""Format compatibility: stores written before the engine was re-housed read the same today.

The fixtures in ``tests/fixtures/v1/`` were written by ``tests/fixtures/make_compat_stores.py``
on main at commit 6ebf4f5, with the sums, lookups and single steps that version computed
saved beside them. Every committed byte of those stores must keep meaning the same thing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deltastore import StoreReader, verify_store

FIXTURES = Path(__file__).parent / "fixtures" / "v1"
NAMES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


def test_fixtures_present():
    assert NAMES == ["bf16-magnitude-strings", "f16-dense", "f32-global", "int8-random-layerwise"]


@pytest.mark.parametrize("name", NAMES)
def test_old_store_reads_bit_for_bit(name, tmp_path):
    store = tmp_path / name
    shutil.copytree(FIXTURES / name, store)  # never touch the committed fixture
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    expected = load_file(str(FIXTURES / f"{name}.expected.safetensors"))
    reader = StoreReader(store)
    assert reader.committed_steps == meta["committed_steps"]
    assert reader.model_fingerprint == meta["model_fingerprint"]
    steps = reader.index.steps_for(meta["ids"])
    assert torch.equal(torch.as_tensor(steps, dtype=torch.int64), expected["steps_for_ids"])
    for key, sel in (("all", range(reader.committed_steps)), ("ids", steps.tolist())):
        sums = reader.sum_updates(sel).updates
        names = {k.split("/", 1)[1] for k in expected if k.startswith(f"sum_{key}/")}
        assert names == set(sums)
        for tensor in names:
            assert torch.equal(sums[tensor], expected[f"sum_{key}/{tensor}"]), (key, tensor)
    for tensor in ("fc1.weight", "fc2.bias"):
        assert torch.equal(reader.read_step(3, tensor), expected[f"step3/{tensor}"])
    assert verify_store(store).ok


@pytest.mark.parametrize("name", ["f32-global", "int8-random-layerwise"])
def test_old_store_without_trained_weights_forgets_incrementally(name, tmp_path):
    """Stores closed before trained weights were kept: forget/restore fall back to
    subtracting from (and adding back to) the given model, and say so in the receipt."""
    from unlearning.forget import forget, restore

    store = tmp_path / name
    shutil.copytree(FIXTURES / name, store)
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    expected = load_file(str(FIXTURES / f"{name}.expected.safetensors"))
    reader = StoreReader(store)
    assert reader.commit.get("trained") is None
    model = {t.name: torch.zeros(t.shape) for t in reader.manifest.tensors}
    r = forget(model, store, meta["ids"], force="compat fixture: the trained model was not kept", buffers="subtract")
    assert r.derived_from == "model" and r.force_reason.startswith("compat fixture")
    for tensor in model:
        assert torch.equal(model[tensor], -expected[f"sum_ids/{tensor}"]), tensor
    restore(model, store, r.request_id)
    assert all(torch.equal(v, torch.zeros_like(v)) for v in model.values())
