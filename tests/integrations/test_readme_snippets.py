"""The README's "Recording in your training pipeline" snippets, run as written (DDP and FSDP2 run in
tests/integrations/ranks.py, inside the spawned ranks)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("datasets")

from deltastore import Recorder  # noqa: E402
from deltastore.hf import DeltaStoreCallback  # noqa: E402
from deltastore.read import StoreReader  # noqa: E402

from .snippets import run_snippet  # noqa: E402
from .test_hf import SAMPLES, dataset, texts, tiny_lm, tokenize  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]


def _args(tmp_path, **kw):
    return transformers.TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_train_epochs=1,
                                          report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, seed=0,
                                          disable_tqdm=True, **kw)


def test_hf_and_lora_snippets(tmp_path, monkeypatch):
    peft = pytest.importorskip("peft")
    monkeypatch.chdir(tmp_path)
    no_ids = dataset().remove_columns("sample_id")
    run_snippet("hf", {"Trainer": transformers.Trainer, "model": tiny_lm(), "args": _args(tmp_path, gradient_accumulation_steps=2),
                       "train": no_ids})
    r = StoreReader(tmp_path / "run.ds")
    assert r.committed_steps == 2 and sorted(r.index.samples_for(0).tolist() + r.index.samples_for(1).tolist()) == list(range(SAMPLES))
    ns = run_snippet("lora", {"Trainer": transformers.Trainer, "model": tiny_lm(), "args": _args(tmp_path), "train": dataset(),
                              "DeltaStoreCallback": DeltaStoreCallback})
    assert isinstance(ns["model"], peft.PeftModel)
    lora = StoreReader(tmp_path / "lora.ds")
    assert lora.committed_steps == 4 and all("lora_" in t.name for t in lora.manifest.tensors)


def test_accelerate_snippet(tmp_path, monkeypatch):
    accelerate = pytest.importorskip("accelerate")
    monkeypatch.chdir(tmp_path)
    rows = torch.tensor([tokenize(t) for t in texts()])

    def collate(items):
        ids = [i for i, _ in items]
        x = torch.stack([r for _, r in items])
        return ids, {"input_ids": x, "labels": x}

    loader = torch.utils.data.DataLoader(list(enumerate(rows)), batch_size=4, collate_fn=collate)
    model = tiny_lm()
    run_snippet("accelerate", {"accelerator": accelerate.Accelerator(gradient_accumulation_steps=2, cpu=True), "model": model,
                               "optimizer": torch.optim.AdamW(model.parameters(), lr=1e-3), "loader": loader, "Recorder": Recorder})
    r = StoreReader(tmp_path / "run.ds")
    assert r.committed_steps == 4 and r.index.samples_for(0).tolist() == list(range(8))
