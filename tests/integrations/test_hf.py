"""Hugging Face Trainer, accelerate and PEFT/LoRA: a tiny causal LM built from a config (no downloads)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from deltastore.hf import DeltaStoreCallback, add_sample_ids  # noqa: E402
from deltastore.plan import PruningPlan  # noqa: E402
from deltastore.read import StoreReader  # noqa: E402
from unlearning.forget import forget  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]

VOCAB, LENGTH, SAMPLES = 64, 12, 32
WORDS = ["forget", "remember", "store", "delta", "step", "model", "sample", "rank"]


def texts(n: int = SAMPLES) -> list[str]:
    g = torch.Generator().manual_seed(0)
    return [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (4,), generator=g)) for _ in range(n)]


def tokenize(text: str) -> list[int]:
    """Bytes mod the vocabulary, cut or padded to LENGTH: a tokenizer with no files."""
    ids = [b % (VOCAB - 1) + 1 for b in text.encode()][:LENGTH]
    return ids + [0] * (LENGTH - len(ids))


def dataset(ids=None):
    rows = [tokenize(t) for t in texts()]
    ds = datasets.Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * LENGTH] * SAMPLES, "labels": rows,
                                     "text": texts()})
    return add_sample_ids(ds, ids=ids)


class SpyLM(transformers.LlamaForCausalLM):
    """A Llama whose forward notes every keyword it was called with."""

    seen: list[set] = []

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        SpyLM.seen.append(set(kwargs))
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)


def tiny_lm(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=LENGTH)
    return SpyLM(cfg)


def named(model) -> dict[str, torch.Tensor]:
    """Parameters and buffers (persistent or not: the recorder records every float buffer), copied."""
    return {k: v.detach().clone() for k, v in [*model.named_parameters(), *model.named_buffers()]}


def trainer_for(model, train, tmp_path, callbacks, **args):
    targs = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_train_epochs=2, learning_rate=1e-2,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, seed=0, disable_tqdm=True, **args)
    return transformers.Trainer(model=model, args=targs, train_dataset=train, callbacks=callbacks)


def test_trainer_ids_reach_the_store_not_forward_with_accumulation(tmp_path):
    model = tiny_lm()
    initial = named(model)
    cb = DeltaStoreCallback(tmp_path / "s", id_column="sample_id", plan=PruningPlan.dense(), value_dtype="float32")
    trainer = trainer_for(model, dataset(), tmp_path, [cb], gradient_accumulation_steps=2)
    assert trainer.args.remove_unused_columns  # the Trainer's default: unused columns are dropped
    SpyLM.seen.clear()
    trainer.train()
    assert SpyLM.seen and all("sample_id" not in kw for kw in SpyLM.seen)  # the ids never reached forward
    r = StoreReader(tmp_path / "s")
    assert r.committed_steps == trainer.state.global_step == 8  # 32 samples / (4 x 2 accumulated) x 2 epochs
    for epoch in range(2):  # each real step holds the 8 ids of its two micro-batches; each epoch every id once
        per_step = [r.index.samples_for(s).tolist() for s in range(4 * epoch, 4 * epoch + 4)]
        assert all(len(ids) == 8 for ids in per_step)
        assert sorted(i for ids in per_step for i in ids) == list(range(SAMPLES))
    final = named(model)
    total = r.sum_updates(range(8)).updates
    for name, upd in total.items():
        assert torch.allclose(final[name] - upd, initial[name], atol=1e-5), name
    forget(model, tmp_path / "s", list(range(SAMPLES)))  # the store forgets on the Trainer's model
    for k, v in named(model).items():
        assert torch.allclose(v, initial[k], atol=1e-5), k


def test_lora_records_adapters_only_with_string_ids_and_forgets_on_the_peft_model(tmp_path):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_lm(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                           lora_dropout=0.0, init_lora_weights="gaussian"))
    base_before = {k: v.clone() for k, v in model.named_parameters() if not v.requires_grad}
    lora_before = {k: v.clone() for k, v in model.named_parameters() if v.requires_grad}
    ids = [f"doc-{i:03d}" for i in range(SAMPLES)]
    cb = DeltaStoreCallback(tmp_path / "lora", plan=PruningPlan.dense(), value_dtype="float32", sample_id_type="string")
    # remove_unused_columns=False: the id and text columns reach the collator; the callback takes the ids out first.
    trainer = trainer_for(model, dataset(ids), tmp_path, [cb], remove_unused_columns=False)
    trainer.train()
    r = StoreReader(tmp_path / "lora")
    names = [t.name for t in r.manifest.tensors]
    assert names and all("lora_" in n for n in names) and set(names) == set(lora_before), names
    assert r.committed_steps == trainer.state.global_step == 16
    steps, unknown = r.index.lookup(["doc-007"])
    assert len(steps) == 2 and not len(unknown)  # once per epoch
    receipt = forget(model, tmp_path / "lora", ids)
    assert receipt.steps == list(range(16))
    for k, v in model.named_parameters():
        if k in base_before:
            assert torch.equal(v, base_before[k]), k  # frozen weights untouched
        else:
            assert torch.allclose(v, lora_before[k], atol=1e-5), k  # adapters back to where they started


def test_accelerate_loop_records_real_steps_only(tmp_path):
    accelerate = pytest.importorskip("accelerate")
    from deltastore import Recorder

    acc = accelerate.Accelerator(gradient_accumulation_steps=2, cpu=True)
    model = tiny_lm()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, opt = acc.prepare(model, opt)
    assert type(opt).__name__ == "AcceleratedOptimizer"
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    rows = torch.tensor([tokenize(t) for t in texts()])
    with Recorder(tmp_path / "acc", model, opt, plan=PruningPlan.dense(), value_dtype="float32") as rec:
        for micro in range(8):  # 4 real steps of 2 micro-batches; the third one's gradients overflow
            batch = rows[4 * micro : 4 * micro + 4]
            with acc.accumulate(model):
                rec.samples(range(4 * micro, 4 * micro + 4))
                loss = model(input_ids=batch, labels=batch).loss
                scaler.scale(loss * (float("inf") if micro == 5 else 1.0)).backward()
                scaler.step(opt)  # skips the inner step on inf; accelerate skips it while accumulating
                scaler.update()
                opt.zero_grad()
    r = StoreReader(tmp_path / "acc")
    assert r.committed_steps == 3
    assert r.index.samples_for(0).tolist() == list(range(8))
    assert r.index.samples_for(1).tolist() == list(range(8, 16))
    # The skipped step's ids go with the next real step (listing an id with a step it did not shape is safe).
    assert r.index.samples_for(2).tolist() == list(range(16, 32))


def test_bad_input_is_refused_with_what_was_expected(tmp_path):
    from deltastore.errors import InvalidArgumentError

    ds = dataset()
    with pytest.raises(InvalidArgumentError, match="expected a name the dataset does not use"):
        add_sample_ids(ds)  # it has "sample_id" already
    with pytest.raises(InvalidArgumentError, match=r"expected one id per row \(32\), got 3"):
        add_sample_ids(ds, column="other", ids=[1, 2, 3])
    late = DeltaStoreCallback(tmp_path / "late")
    trainer = trainer_for(tiny_lm(), ds, tmp_path, [])
    trainer.add_callback(late)  # after the Trainer was built: the column would be dropped
    with pytest.raises(InvalidArgumentError, match="expected to be passed in Trainer"):
        trainer.train()
    assert not (tmp_path / "late").exists()
