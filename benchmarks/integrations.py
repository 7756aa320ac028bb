"""Recording inside training pipelines: DDP and FSDP2 (2 CPU ranks), the HF Trainer, LoRA vs full fine-tune.

Rows added to ``python -m benchmarks overhead``:

* ``ddp-2-ranks``, ``fsdp2-2-ranks`` (and ``fsdp2-2-ranks-dense``, float32 without
  pruning): an MLP trained on 2 CPU ranks (gloo on 127.0.0.1) with
  DistributedDataParallel or FSDP2 (``fully_shard``). Three variants on the same
  model, each with its own optimizer, interleaved round by round as in the
  single-process rows: plain steps; steps recorded with ``rank_writes="coordinator"``
  (rank 0 records and writes every group; under FSDP2 every group's update is first
  assembled on rank 0); and with the default per-rank writes (``"spread"``: each rank
  records, encodes and writes the groups the plan gives it, rank 0 commits after both
  ranks' writes). Ids are gathered from both ranks each step in both. A recorded
  round's time includes its ``flush()``. ``overhead_<variant>`` is the median of the
  paired per-round ratios ``plain_i / recorded_i - 1``; ``overhead`` is the default's
  (``rank_writes="auto"``: spread under FSDP2, coordinator under DDP).
  ``writer_s_*_per_rank`` (writer-thread seconds) include a rank's wait in the commit
  agreement for the other rank's writes.
* ``hf-trainer``: the same ``transformers.Trainer`` run (tiny Llama from a config,
  no downloads) with and without :class:`deltastore.hf.DeltaStoreCallback`,
  alternated; the figure is the median paired ratio of ``train_runtime``.
* ``lora-vs-full``: store bytes per step of the default recording of a LoRA
  fine-tune (r=4 on q/v projections) and a full fine-tune of the same tiny model.

Both machines' cores are shared by the two ranks here: the DDP and FSDP2 figures are
the cost on a saturated 2-core machine, an upper bound for one rank per core.
``python -m benchmarks integrations`` runs these rows alone.
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

# FSDP2 rows: 6 equal hidden layers, so the plan can give each rank half the bytes (one layer is one group).
QUICK = {"ddp": {"width": 256, "steps": 8, "rounds": 3}, "fsdp": {"width": 256, "depth": 6, "steps": 8, "rounds": 3},
         "hf": {"samples": 64, "runs": 2}, "lora": {"steps": 8}}
FULL = {"ddp": {"width": 1024, "steps": 16, "rounds": 7}, "fsdp": {"width": 512, "depth": 6, "steps": 16, "rounds": 7},
        "hf": {"samples": 128, "runs": 4}, "lora": {"steps": 32}}


def _mlp(width: int, depth: int = 1) -> nn.Module:
    """64 -> width, ``depth`` hidden width x width layers, -> 10."""
    torch.manual_seed(0)
    hidden = [m for _ in range(depth) for m in (nn.Linear(width, width), nn.ReLU())]
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), *hidden, nn.Linear(width, 10))


VARIANTS = ("plain", "coordinator", "spread")


def _rank(rank: int, world: int, port: int, root: str, kind: str, width: int, depth: int, steps: int, rounds: int, dense: bool) -> None:
    """One rank of a DDP or FSDP2 row: the three variants on one model, interleaved round by round."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    from deltastore import Recorder
    from deltastore.plan import PruningPlan
    from deltastore.record.exchange import group_step_bytes

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = _mlp(width, depth)
        if kind == "fsdp2":
            fully_shard(model)
        else:
            model = DDP(model)
        opts = {v: torch.optim.SGD(model.parameters(), lr=1e-3) for v in VARIANTS}
        extra = dict(plan=PruningPlan.dense(), value_dtype="float32") if dense else {}
        recs = {v: Recorder(Path(root) / f"{v}.ds", model, opts[v], steps_per_shard=steps, rank_writes=v, **extra)
                for v in ("coordinator", "spread")}
        g = torch.Generator().manual_seed(rank)
        batches = [(torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g)) for _ in range(steps)]
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for rnd in range(rounds + 1):  # round 0 warms up
            for v in VARIANTS:
                dist.barrier()
                t0 = time.perf_counter()
                for i, (x, y) in enumerate(batches):
                    if v in recs:
                        recs[v].samples(range(rank * 10**6 + (rnd * steps + i) * 64, rank * 10**6 + (rnd * steps + i + 1) * 64))
                    nn.functional.cross_entropy(model(x), y).backward()
                    opts[v].step()
                    opts[v].zero_grad()
                if v in recs:
                    recs[v].flush()
                dist.barrier()
                if rnd:
                    times[v].append(time.perf_counter() - t0)
        hooks = {v: r.timings for v, r in recs.items()}
        for v, r in recs.items():  # what the plan gave this rank: stored bytes per step, update elements received
            hooks[v]["bytes_per_step_written"] = sum(group_step_bytes(r.manifest, g) for g in r.manifest.groups if r._owns(g))
            hooks[v]["elements_received_per_step"] = r._exchange.received_elements if r._exchange is not None else 0
        for r in recs.values():
            r.close()
        Path(root, f"times-{rank}.json").write_text(json.dumps({"times": times, "timings": hooks}))
    finally:
        dist.destroy_process_group()


def measure_ranked(kind: str, width: int, steps: int, rounds: int, depth: int = 1, dense: bool = False) -> dict:
    """DDP or FSDP2 on 2 ranks: plain vs rank 0 writing every group vs per-rank writes, interleaved in one run."""
    import torch.multiprocessing as mp

    root = tempfile.mkdtemp(prefix=f"ds-{kind}-bench-")
    try:
        load0 = os.getloadavg()[0]
        mp.spawn(_rank, args=(2, _free_port(), root, kind, width, depth, steps, rounds, dense), nprocs=2, join=True)
        per_rank = [json.loads(Path(root, f"times-{r}.json").read_text()) for r in range(2)]
        times = per_rank[0]["times"]
        row = {"row": f"{kind}-2-ranks" + ("-dense" if dense else ""), "params": sum(p.numel() for p in _mlp(width, depth).parameters()),
               "layers": depth + 2,
               "steps_per_round": steps, "rounds": rounds, "steps_per_s_plain": steps / median(times["plain"])}
        for v in ("coordinator", "spread"):
            per_round = _paired(times["plain"], times[v])
            row[f"steps_per_s_{v}"] = steps / median(times[v])
            row[f"overhead_{v}"] = median(per_round)
            row[f"overhead_{v}_per_round"] = per_round
            # Writer-thread seconds per rank (encoding, compression, files): where per-rank writes move work.
            row[f"writer_s_{v}_per_rank"] = [p["timings"][v]["writer_seconds"] for p in per_rank]
            row[f"hook_s_{v}_per_rank"] = [p["timings"][v]["hook_seconds"] for p in per_rank]
            row[f"bytes_per_step_written_{v}_per_rank"] = [p["timings"][v]["bytes_per_step_written"] for p in per_rank]
            row[f"elements_received_per_step_{v}_per_rank"] = [p["timings"][v]["elements_received_per_step"] for p in per_rank]
        # The default Recorder (rank_writes="auto": spread under FSDP2, coordinator under DDP) as
        # "recorded", the columns of the other rows.
        default = "spread" if kind == "fsdp2" else "coordinator"
        row.update(steps_per_s_recorded=row[f"steps_per_s_{default}"], overhead=row[f"overhead_{default}"], default=default,
                   load_avg_1m_start=load0, load_avg_1m_end=os.getloadavg()[0])
        return row
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _paired(plain: list[float], recorded: list[float]) -> list[float]:
    return [r / p - 1 for p, r in zip(plain, recorded)]


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


def run(*, quick: bool, **_) -> dict:
    """The pipeline rows; each is skipped (with the reason) when its optional package is missing."""
    sizes = QUICK if quick else FULL
    rows, skipped = [], {}
    ranked = [measure_ranked("ddp", **sizes["ddp"]), measure_ranked("fsdp2", **sizes["fsdp"]),
              measure_ranked("fsdp2", **sizes["fsdp"], dense=True)]
    rows.append(ranked[0])
    print_table(ranked, ["row", "params", "steps_per_round", "rounds", "steps_per_s_plain", "steps_per_s_coordinator",
                         "steps_per_s_spread", "overhead_coordinator", "overhead_spread", "load_avg_1m_start", "load_avg_1m_end"],
                title="DDP and FSDP2, 2 ranks: rank 0 writes every group vs per-rank writes (CPU)")
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
    return {"rows": rows, "ranked": ranked, "lora": lora, "skipped": skipped}
