"""StoreWriter (deltastore.record.writer): buffers, flushes at shard ends, whole shards written directly."""

from __future__ import annotations

import torch

from deltastore.format import ShardEncoder
from deltastore.plan import PruningPlan
from deltastore.read import StoreReader
from deltastore.record import Recorder, StoreWriter
from deltastore.record.recorder import specs_of
from deltastore.errors import RecorderClosedError
import pytest

from .helpers import TinyNet, record


def _train(rec, model, opt, steps: int, first: int) -> None:
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(first))
    y = torch.arange(8) % 3
    for s in range(first, first + steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        rec.samples(torch.arange(8) + 8 * s)
        opt.step()


def test_shards_shrink_to_what_the_buffer_holds(tmp_path):
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step_bytes = sum(p.numel() for p in model.state_dict().values() if p.is_floating_point()) * 4
    rec = Recorder(tmp_path / "s", model, opt, plan=PruningPlan.dense(), value_dtype="float32", steps_per_shard=64,
                   buffer_bytes=2 * 3 * step_bytes + 100)
    assert rec.writer.manifest.steps_per_shard == 3 == rec.writer.capacity
    rec.close()


def test_flushes_realign_to_shard_ends_after_an_early_flush(tmp_path, monkeypatch):
    calls = []
    original = ShardEncoder.write

    def spy(self, data, start, **kw):
        ok = original(self, data, start, **kw)
        calls.append((start, data.shape[0], ok))
        return ok

    monkeypatch.setattr(ShardEncoder, "write", spy)
    for name, early_flush in (("early", True), ("plain", False)):
        model = TinyNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        rec = Recorder(tmp_path / name, model, opt, plan=PruningPlan.dense(), value_dtype="float32", steps_per_shard=4)
        _train(rec, model, opt, 1, 0)
        if early_flush:
            rec.flush()  # shard 0 now holds 1 of its 4 rows
        _train(rec, model, opt, 11, 1)
        rec.close()
        if early_flush:
            flushes, calls[:] = sorted({(start, rows, ok) for start, rows, ok in calls}), []
    # step 0 (direct, new shard), steps 1-3 (completes shard 0 through Zarr), then whole shards 4-7 and 8-11
    assert flushes == [(0, 1, True), (1, 3, False), (4, 4, True), (8, 4, True)]
    early, plain = StoreReader(tmp_path / "early"), StoreReader(tmp_path / "plain")
    assert early.committed_steps == plain.committed_steps == 12
    for step in range(12):
        for t in early.manifest.tensors:
            torch.testing.assert_close(early.read_step(step, t.name), plain.read_step(step, t.name), rtol=0, atol=0)


def test_the_writer_commits_rows_it_is_given_and_refuses_use_after_close(tmp_path):
    model = TinyNet()
    specs = specs_of(dict(model.named_parameters()), {})
    w = StoreWriter.create(tmp_path / "s", specs, None, pin_memory=False)
    for step in range(3):
        w.begin()
        for g in w.manifest.groups:
            w.put(g, torch.full((g.k,), float(step)), torch.arange(g.k) if g.selection.stores_indices else None)
        assert w.end_step([step], epoch=0) == step
    assert w.committed == 0  # buffered, not yet durable
    w.close(fingerprint=None)
    r = StoreReader(tmp_path / "s")
    assert r.committed_steps == 3
    g = w.manifest.groups[-1]  # a bias: kept whole
    vals, _ = r.read_rows(g.id, [0, 1, 2])
    assert torch.equal(vals, torch.arange(3.0)[:, None].expand(3, g.k))
    with pytest.raises(RecorderClosedError):
        w.end_step([4], epoch=0)


def test_small_recordings_keep_no_index_sidecar(tmp_path):
    # Sidecars pay off from one Parquet row group up (STORE_SIDECAR_MIN_ROWS); below it they only add bytes.
    record(tmp_path / "s", steps=4)
    assert not list((tmp_path / "s" / "index").glob("_part-*.ids"))
    assert StoreReader(tmp_path / "s").index.steps_for([0]).tolist() == [0]
