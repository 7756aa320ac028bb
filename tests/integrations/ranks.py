"""Multi-rank workers for the integration tests (run under torch.multiprocessing spawn, gloo, CPU).

Each worker does several checks, because each spawn costs seconds of process start.
Workers raise on a failed check; mp.spawn re-raises it in the test with the traceback.
"""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

WORLD = 2
SAMPLES = 32
PER_RANK_BATCH = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, *args, nprocs: int = WORLD, timeout_s: float = 120) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_entry, args=(nprocs, free_port(), fn, args, timeout_s), nprocs=nprocs, join=True)


def _entry(rank: int, world: int, port: int, fn, args, timeout_s: float = 120) -> None:
    torch.set_num_threads(1)
    # What torchrun would set: Lightning then joins this process group instead of launching its own.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), NODE_RANK="0", GROUP_RANK="0")
    # A collective that waits for a dead or diverged rank fails after timeout_s instead of hanging CI.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        fn(rank, world, *args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def net(seed: int = 0) -> nn.Module:
    """Two linears (the second one's rows do not split evenly over 2 ranks) and a LayerNorm."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.LayerNorm(10), nn.ReLU(), nn.Linear(10, 3))


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(SAMPLES, 6, generator=g), torch.randint(0, 3, (SAMPLES,), generator=g)


def batches(rank: int, world: int, epochs: int = 2):
    """(ids, x, y) of this rank, per step: step s uses ids [8s, 8s+8) mod 32, split over the ranks."""
    x, y = data()
    per_step = PER_RANK_BATCH * WORLD
    per_rank = per_step // world
    for _ in range(epochs):
        for start in range(0, SAMPLES, per_step):
            ids = torch.arange(start + rank * per_rank, start + (rank + 1) * per_rank)
            yield ids, x[ids], y[ids]


def train(model, opt, rec, rank: int, world: int, *, strings_rec=None, steps: int | None = None) -> None:
    for i, (ids, x, y) in enumerate(batches(rank, world)):
        if steps is not None and i == steps:
            break
        rec.samples(ids)
        if strings_rec is not None:
            strings_rec.samples([f"s-{int(j)}" for j in ids])
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()


def ddp_worker(rank: int, world: int, root: str) -> None:
    """DDP: ids of both ranks (int and string) in rank 0's store (or per-rank writes), unwrapped names, forget on the plain model."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from deltastore import InvalidArgumentError, Recorder
    from deltastore.errors import DeltaStoreError, RecordingFailedError
    from deltastore.plan import PruningPlan
    from deltastore.read import StoreReader
    from unlearning.forget import forget

    root = Path(root)
    model = net()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)

    # Ranks given different arguments: every rank refuses, none hangs.
    try:
        Recorder(root / "mismatch", ddp, opt, value_dtype="float32" if rank == 0 else "bfloat16")
        raise AssertionError("different arguments on the ranks were accepted")
    except InvalidArgumentError as exc:
        assert "ranks [1]" in str(exc), exc
    # Rank 0 cannot create the store (something is there): every rank hears of it.
    if rank == 0:
        (root / "occupied").mkdir()
        (root / "occupied" / "file").write_text("x")
    dist.barrier()
    try:
        Recorder(root / "occupied", ddp, opt)
        raise AssertionError("an occupied path was accepted")
    except DeltaStoreError as exc:
        assert rank == 0 or isinstance(exc, RecordingFailedError), exc

    dense = dict(plan=PruningPlan.dense(), value_dtype="float32")
    seam = CountShardWrites()
    rec = Recorder(root / "ints", ddp, opt, **dense)  # DDP's default: rank 0 records and writes everything
    rec_c = Recorder(root / "ints-spread", ddp, opt, rank_writes="spread", **dense)  # each rank its groups, from its replica

    class Both:
        def samples(self, ids):
            rec.samples(ids)
            rec_c.samples(ids)

    rec_s = Recorder(root / "strs", ddp, opt, sample_id_type="string")  # default pruned int8 store
    train(ddp, opt, Both(), rank, world, strings_rec=rec_s)
    assert rec.step == 8 and rec_s.step == 8, (rec.step, rec_s.step)
    for r in (rec, rec_c, rec_s):
        r.close()
    seam.remove()
    written = {store for store, _, _ in seam.written}
    # Both ranks wrote the per-rank store; only rank 0 the others.
    assert "ints-spread" in written and ({"ints", "strs"} <= written) == (rank == 0), (rank, written)
    assert ({"ints", "strs"} & written) == set() or rank == 0, (rank, written)
    dist.barrier()
    if rank != 0:
        assert not (root / "ints" / "rank1").exists()
        return
    from deltastore import verify_store

    assert verify_store(root / "ints").ok and verify_store(root / "strs").ok and verify_store(root / "ints-spread").ok
    r, rc = StoreReader(root / "ints"), StoreReader(root / "ints-spread")
    for step in range(8):  # who records a replica's group does not change a bit
        a, b = r.sum_updates([step]).updates, rc.sum_updates([step]).updates
        assert all(torch.equal(a[t], b[t]) for t in a), step
    assert r.committed_steps == 8
    assert all(not t.name.startswith("module.") for t in r.manifest.tensors), [t.name for t in r.manifest.tensors]
    for step in range(8):  # step s saw ids [8s, 8s+8) mod 32: both ranks' halves
        start = (step * 8) % SAMPLES
        assert sorted(r.index.samples_for(step).tolist()) == list(range(start, start + 8)), step
    rs = StoreReader(root / "strs")
    steps, unknown = rs.index.lookup(["s-5", "s-13"])  # rank 1's ids of steps 0/4 and 1/5
    assert sorted(int(s) for s in steps) == [0, 1, 4, 5] and not len(unknown), (steps, unknown)
    # The DDP store forgets on the plain model (no "module." prefix); all ids -> initial weights.
    plain = net()
    plain.load_state_dict(model.state_dict())
    forget(plain, root / "ints", list(range(SAMPLES)))
    for k, v in plain.state_dict().items():
        assert torch.allclose(v, initial[k], atol=1e-5), k


class CountShardWrites:
    """A counting seam: the shard objects this process writes (store name, array path, first row), while installed."""

    def __init__(self):
        from deltastore.format.shards import ShardEncoder

        self.cls, self.original, self.written = ShardEncoder, ShardEncoder.write, []
        seam = self

        def counting(encoder, data, start, *, fsync=False):
            done = seam.original(encoder, data, start, fsync=fsync)
            seam.written.append((Path(encoder.io.url).name, encoder.layout.path, int(start)))
            return done

        ShardEncoder.write = counting

    def remove(self) -> None:
        self.cls.write = self.original


def fsdp_worker(rank: int, world: int, root: str) -> None:
    """FSDP2: the store of a 2-rank run decodes to the 1-process run's updates; forget on the shards.

    Every rank writes the groups the plan gives it: what each rank wrote is saved for the test."""
    import json

    from torch.distributed.fsdp import fully_shard

    from deltastore import Recorder
    from deltastore.plan import PruningPlan
    from unlearning.distributed import forget_sharded

    root = Path(root)
    seam = CountShardWrites()
    model = net()
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    recs = [Recorder(root / "fsdp-dense", model, opt, plan=PruningPlan.dense(), value_dtype="float32"),
            Recorder(root / "fsdp-random", model, opt, plan=PruningPlan.uniform(0.5), value_dtype="float32"),
            Recorder(root / "fsdp-magnitude", model, opt, plan=PruningPlan.uniform(0.5, mode="magnitude"), value_dtype="float32"),
            # The same recording with rank 0 writing every group: the test requires the same decoded bits.
            Recorder(root / "fsdp-random-coordinator", model, opt, plan=PruningPlan.uniform(0.5), value_dtype="float32",
                     rank_writes="coordinator")]

    class Both:
        def samples(self, ids):
            for r in recs:
                r.samples(ids)

    train(model, opt, Both(), rank, world)
    for r in recs:
        r.close()
    seam.remove()
    owners = {Path(r.writer.io.url).name: r.writer.owners for r in recs}
    (root / f"fsdp-writes-{rank}.json").write_text(json.dumps({"written": seam.written, "owners": owners}))
    final = {k: v.full_tensor().clone() for k, v in model.state_dict().items()}
    if rank == 0:
        torch.save({k: v for k, v in final.items()}, root / "fsdp-final.pt")
    # Forget on the sharded model: rank 0 computes, each rank takes its shard of the new weights.
    receipt = forget_sharded(model, root / "fsdp-random", list(range(8)))
    assert receipt.steps == [0, 4], receipt.steps
    after = {k: v.full_tensor().clone() for k, v in model.state_dict().items()}
    if rank == 0:
        torch.save(after, root / "fsdp-after-forget.pt")


def fsdp_one_rank_worker(rank: int, world: int, root: str) -> None:
    """FSDP2 on a 1-rank mesh (no peers, no exchange): the whole step's batch on one rank."""
    from torch.distributed.fsdp import fully_shard

    from deltastore import Recorder
    from deltastore.plan import PruningPlan

    model = net()
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(Path(root) / "fsdp-one-rank", model, opt, plan=PruningPlan.uniform(0.5), value_dtype="float32") as rec:
        train(model, opt, rec, rank, world)


def fsdp_url_worker(rank: int, world: int, url: str) -> None:
    """FSDP2 recorded to a store URL (object storage) with per-rank writes: both ranks must write."""
    from torch.distributed.fsdp import fully_shard

    from deltastore import Recorder
    from deltastore.plan import PruningPlan

    seam = CountShardWrites()
    model = net()
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(url, model, opt, plan=PruningPlan.uniform(0.5), value_dtype="float32", steps_per_shard=2) as rec:
        train(model, opt, rec, rank, world)
    seam.remove()
    assert seam.written, f"rank {rank} wrote no shard"


def fsdp_layouts_worker(rank: int, world: int, root: str) -> None:
    """FSDP2 with weights sharded along dim 1, and biases taken through the gather-whole fallback."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard

    from deltastore import Recorder
    from deltastore.plan import PruningPlan
    from deltastore.record import exchange

    layout = exchange._layout
    exchange._layout = lambda t, w: ("full", 0) if t.ndim == 1 else layout(t, w)  # as for a 2-D mesh or strided shards
    try:
        model = net()
        fully_shard(model, shard_placement_fn=lambda p: Shard(1) if p.ndim == 2 else None)
        assert str(model[3].weight.placements[0]) == "S(1)", model[3].weight.placements
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        rec = Recorder(Path(root) / "fsdp-layouts", model, opt, plan=PruningPlan.dense(), value_dtype="float32")
        modes = {s.mode for s in rec._exchange._tensors.values()}
        assert modes == {"shard", "full"}, modes
        train(model, opt, rec, rank, world)
        rec.close()
    finally:
        exchange._layout = layout


def lightning_worker(rank: int, world: int, root: str) -> None:
    """The Lightning callback under the DDP strategy: rank 0 writes, both ranks' ids in each step."""
    import warnings

    import lightning

    from deltastore.lightning import DeltaStoreCallback
    from deltastore.plan import PruningPlan
    from deltastore.read import StoreReader

    warnings.simplefilter("ignore")  # Lightning's own advice about workers and loggers

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net()

        def training_step(self, batch, batch_idx):
            x, y, _ids = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x, y = data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y, torch.arange(SAMPLES)), batch_size=PER_RANK_BATCH)
    module = Module()
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = lightning.Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", devices=world, strategy="ddp",
        callbacks=[DeltaStoreCallback(Path(root) / "lightning", plan=PruningPlan.dense(), value_dtype="float32")])
    trainer.fit(module, loader)
    dist.barrier()
    if rank != 0:
        return
    r = StoreReader(Path(root) / "lightning")
    assert r.committed_steps == 8, r.committed_steps  # 32 samples / (4 per rank x 2 ranks) x 2 epochs
    assert [t.name for t in r.manifest.tensors][:2] == ["net.0.weight", "net.0.bias"]
    for epoch in range(2):
        per_step = [r.index.samples_for(s).tolist() for s in range(4 * epoch, 4 * epoch + 4)]
        assert all(len(ids) == 8 for ids in per_step), per_step  # both ranks' halves of each step
        assert sorted(i for ids in per_step for i in ids) == list(range(SAMPLES))
    total = r.sum_updates(range(8)).updates
    for name, upd in total.items():
        assert torch.allclose(module.state_dict()[name] - upd, initial[name], atol=1e-5), name


def readme_worker(rank: int, world: int, root: str, name: str) -> None:
    """Run the README's DDP or FSDP2 snippet as written, in a folder of its own."""
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    from deltastore import Recorder
    from deltastore.read import StoreReader

    from .snippets import run_snippet

    folder = Path(root) / f"readme-{name}"
    folder.mkdir(exist_ok=True)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        model = net()
        run_snippet(name, {"DistributedDataParallel": DistributedDataParallel, "fully_shard": fully_shard, "torch": torch,
                           "Recorder": Recorder, "net": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
                           "loader": list(batches(rank, world)), "loss_fn": nn.functional.cross_entropy})
    finally:
        os.chdir(cwd)
    dist.barrier()
    if rank == 0:
        r = StoreReader(folder / "run.ds")
        assert r.committed_steps == 8 and sorted(r.index.samples_for(0).tolist()) == list(range(8))


def ddp_and_lightning_worker(rank: int, world: int, root: str) -> None:
    ddp_worker(rank, world, root)
    dist.barrier()
    readme_worker(rank, world, root, "ddp")
    lightning_worker(rank, world, root)
    (Path(root) / f"done-{rank}").write_text("ok")


KILL_AT_COMMIT = 4  # steps_per_shard=2: the commit of steps [2, 4) never happens


def killed_rank_worker(rank: int, world: int, root: str) -> None:
    """Rank 0 (the writer) dies mid-flush: its shards of steps [2, 4) are written, commit.json is not."""
    from deltastore import Recorder
    from deltastore.plan import PruningPlan
    from deltastore.record.writer import StoreWriter

    if rank == 0:
        commit = StoreWriter._commit

        def dying_commit(self, steps, fingerprint, digests=None):
            if steps >= KILL_AT_COMMIT:
                (Path(root) / "killed").write_text(str(steps))
                os._exit(9)  # like SIGKILL: no cleanup, no more bytes
            return commit(self, steps, fingerprint, digests)

        StoreWriter._commit = dying_commit
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(net())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(Path(root) / "killed-store", model, opt, plan=PruningPlan.dense(), value_dtype="float32", steps_per_shard=2)
    train(model, opt, rec, rank, world)  # rank 0 exits at the second flush; rank 1 then fails in a collective
    rec.close()


def fsdp_then_kill_worker(rank: int, world: int, root: str) -> None:
    fsdp_worker(rank, world, root)
    fsdp_layouts_worker(rank, world, root)
    readme_worker(rank, world, root, "fsdp")
    hf_trainer_worker(rank, world, root)
    (Path(root) / f"fsdp-done-{rank}").write_text("ok")
    dist.barrier()
    killed_rank_worker(rank, world, root)


def hf_trainer_worker(rank: int, world: int, root: str) -> None:
    """The HF Trainer under DDP (the ranks torchrun would start): string ids of both ranks in rank 0's store."""
    import warnings

    import transformers

    from deltastore.hf import DeltaStoreCallback
    from deltastore.read import StoreReader

    from .test_hf import SAMPLES as N, dataset, tiny_lm

    warnings.simplefilter("ignore")
    ids = [f"doc-{i:03d}" for i in range(N)]
    args = transformers.TrainingArguments(output_dir=str(Path(root) / "hf-out"), per_device_train_batch_size=4, num_train_epochs=1,
                                          report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, seed=0,
                                          disable_tqdm=True, gradient_accumulation_steps=2)
    cb = DeltaStoreCallback(Path(root) / "hf-ddp", sample_id_type="string")
    trainer = transformers.Trainer(model=tiny_lm(), args=args, train_dataset=dataset(ids), callbacks=[cb])
    trainer.train()
    dist.barrier()
    if rank == 0:
        r = StoreReader(Path(root) / "hf-ddp")
        assert r.committed_steps == trainer.state.global_step == 2, (r.committed_steps, trainer.state.global_step)
        got = sorted(i for s in range(2) for i in r.index.samples_for(s))
        assert got == ids, got  # 32 ids: 2 ranks x 2 micro-batches x 4, per step
