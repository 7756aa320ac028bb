"""Recording inside training pipelines: DDP (2 CPU ranks), the HF Trainer, LoRA vs full fine-tune.

Rows added to ``python -m benchmarks overhead``:

* ``ddp-2-ranks``: an MLP trained with DistributedDataParallel on 2 CPU ranks
  (gloo on 127.0.0.1). Two variants on the same model, each with its own
  optimizer, interleaved round by round as in the single-process rows: plain DDP
  steps, then steps recorded by the default Recorder on every rank (rank 0 writes,
  ids gathered from both ranks each step). A recorded round's time includes its
  ``flush()``. ``overhead`` is the median of the paired per-round ratios
  ``plain_i / recorded_i - 1``.
* ``hf-trainer``: the same ``transformers.Trainer`` run (tiny Llama from a config,
  no downloads) with and without :class:`deltastore.hf.DeltaStoreCallback`,
  alternated; the figure is the median paired ratio of ``train_runtime``.
* ``lora-vs-full``: store bytes per step of the default recording of a LoRA
  fine-tune (r=4 on q/v projections) and a full fine-tune of the same tiny model.

Both machines' cores are shared by the two ranks here: the DDP figure is the
cost on a saturated 2-core machine, an upper bound for one rank per core.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from .common import median, print_table

QUICK = {"ddp": {"width": 256, "steps": 8, "rounds": 3}, "hf": {"samples": 64, "runs": 2}, "lora": {"steps": 8}}
FULL = {"ddp": {"width": 1024, "steps": 16, "rounds": 7}, "hf": {"samples": 128, "runs": 4}, "lora": {"steps": 32}}


def _mlp(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def _ddp_rank(rank: int, world: int, port: int, root: str, width: int, steps: int, rounds: int) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from deltastore import Recorder

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = DDP(_mlp(width))
        opts = {v: torch.optim.SGD(model.parameters(), lr=1e-3) for v in ("plain", "recorded")}
        rec = Recorder(Path(root) / "ddp.ds", model, opts["recorded"], steps_per_shard=steps)
        g = torch.Generator().manual_seed(rank)
        batches = [(torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g)) for _ in range(steps)]
        times: dict[str, list[float]] = {"plain": [], "recorded": []}
        for rnd in range(rounds + 1):  # round 0 warms up
            for v in ("plain", "recorded"):
                dist.barrier()
                t0 = time.perf_counter()
                for i, (x, y) in enumerate(batches):
                    if v == "recorded":
                        rec.samples(range(rank * 10**6 + (rnd * steps + i) * 64, rank * 10**6 + (rnd * steps + i + 1) * 64))
                    nn.functional.cross_entropy(model(x), y).backward()
                    opts[v].step()
                    opts[v].zero_grad()
                if v == "recorded":
                    rec.flush()
                dist.barrier()
                if rnd:
                    times[v].append(time.perf_counter() - t0)
        rec.close()
        if rank == 0:
            Path(root, "ddp.json").write_text(json.dumps(times))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _paired(plain: list[float], recorded: list[float]) -> list[float]:
    return [r / p - 1 for p, r in zip(plain, recorded)]


def measure_ddp(width: int, steps: int, rounds: int) -> dict:
    import torch.multiprocessing as mp

    root = tempfile.mkdtemp(prefix="ds-ddp-bench-")
    try:
        load0 = os.getloadavg()[0]
        mp.spawn(_ddp_rank, args=(2, _free_port(), root, width, steps, rounds), nprocs=2, join=True)
        times = json.loads(Path(root, "ddp.json").read_text())
        per_round = _paired(times["plain"], times["recorded"])
        params = sum(p.numel() for p in _mlp(width).parameters())
        return {"row": "ddp-2-ranks", "params": params, "steps_per_round": steps, "rounds": rounds,
                "steps_per_s_plain": steps / median(times["plain"]), "steps_per_s_recorded": steps / median(times["recorded"]),
                "overhead": median(per_round), "overhead_per_round": per_round,
                "load_avg_1m_start": load0, "load_avg_1m_end": os.getloadavg()[0]}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _tiny_llama(seed: int = 0, hidden: int = 64, layers: int = 2):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg)


def _text_dataset(samples: int):
    import datasets

    from deltastore.hf import add_sample_ids

    g = torch.Generator().manual_seed(0)
    rows = torch.randint(1, 256, (samples, 32), generator=g).tolist()
    return add_sample_ids(datasets.Dataset.from_dict({"input_ids": rows, "labels": rows}))


def measure_hf(samples: int, runs: int) -> dict:
    import transformers

    from deltastore.hf import DeltaStoreCallback

    root = Path(tempfile.mkdtemp(prefix="ds-hf-bench-"))
    try:
        train = _text_dataset(samples)
        times: dict[str, list[float]] = {"plain": [], "recorded": []}
        steps = 0
        load0 = os.getloadavg()[0]
        for run in range(runs + 1):  # run 0 warms up
            for v in ("plain", "recorded"):
                cbs = [DeltaStoreCallback(root / f"{v}-{run}.ds")] if v == "recorded" else []
                args = transformers.TrainingArguments(output_dir=str(root / "out"), per_device_train_batch_size=8, num_train_epochs=1,
                                                      report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
                                                      seed=0, disable_tqdm=True)
                trainer = transformers.Trainer(model=_tiny_llama(), args=args, train_dataset=train, callbacks=cbs)
                t0 = time.perf_counter()
                trainer.train()
                if run:
                    times[v].append(time.perf_counter() - t0)
                steps = trainer.state.global_step
        per_run = _paired(times["plain"], times["recorded"])
        return {"row": "hf-trainer", "params": sum(p.numel() for p in _tiny_llama().parameters()), "steps_per_round": steps,
                "rounds": runs, "steps_per_s_plain": steps / median(times["plain"]),
                "steps_per_s_recorded": steps / median(times["recorded"]), "overhead": median(per_run),
                "overhead_per_round": per_run, "load_avg_1m_start": load0, "load_avg_1m_end": os.getloadavg()[0]}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure_lora(steps: int) -> dict:
    import peft

    from deltastore import Recorder

    root = Path(tempfile.mkdtemp(prefix="ds-lora-bench-"))
    try:
        out = {"row": "lora-vs-full", "steps": steps}
        for variant in ("full", "lora"):
            model = _tiny_llama()
            if variant == "lora":
                model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
            g = torch.Generator().manual_seed(0)
            with Recorder(root / variant, model, opt, steps_per_shard=steps) as rec:
                for s in range(steps):
                    batch = torch.randint(1, 256, (8, 32), generator=g)
                    rec.samples(range(8 * s, 8 * s + 8))
                    model(input_ids=batch, labels=batch).loss.backward()
                    opt.step()
                    opt.zero_grad()
            values = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root / variant) for f in fs
                         if "/index" not in d and not f.endswith(".json") and "trained" not in d)
            total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root / variant) for f in fs)
            out[f"{variant}_recorded_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            out[f"{variant}_value_bytes_per_step"] = values / steps
            out[f"{variant}_store_bytes"] = total
        out["lora_over_full_per_step"] = out["lora_value_bytes_per_step"] / out["full_value_bytes_per_step"]
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(*, quick: bool) -> dict:
    """The pipeline rows; each is skipped (with the reason) when its optional package is missing."""
    sizes = QUICK if quick else FULL
    rows, skipped = [], {}
    rows.append(measure_ddp(**sizes["ddp"]))
    try:
        rows.append(measure_hf(**sizes["hf"]))
    except ImportError as exc:
        skipped["hf-trainer"] = str(exc)
    print_table(rows, ["row", "params", "steps_per_round", "rounds", "steps_per_s_plain", "steps_per_s_recorded", "overhead",
                       "load_avg_1m_start", "load_avg_1m_end"], title="recording overhead in training pipelines (CPU)")
    lora = None
    try:
        lora = measure_lora(**sizes["lora"])
        print(f"[overhead] LoRA vs full fine-tune, store value bytes per step: lora {lora['lora_value_bytes_per_step']:.0f} "
              f"({lora['lora_recorded_params']} params), full {lora['full_value_bytes_per_step']:.0f} "
              f"({lora['full_recorded_params']} params): {lora['lora_over_full_per_step']:.3f}x", flush=True)
    except ImportError as exc:
        skipped["lora-vs-full"] = str(exc)
    return {"rows": rows, "lora": lora, "skipped": skipped}
