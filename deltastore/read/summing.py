"""Summing stored updates: work units, reader threads taking turns, the unlearn-time plan.

``sum_updates(reader, steps, device=...)`` is what unlearning uses: chunk reads
and decoding run on worker threads. On CUDA the caller's thread moves decoded
rows to the device (pinned, non-blocking) and scatter-adds them into one dense
accumulator per group; random-mode masks are regenerated on the device, and
nothing but values crosses the bus. On CPU the workers also add what they
decoded, each group's units in step order.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable

import torch

from ..devices import parse_device
from ..errors import InvalidArgumentError
from ..format import build_groups
from ..masks import MaskGenerator
from ..plan import PruningPlan
from ..progress import progress_bar
from ..selection import ALL
from .accumulators import Sums

UNIT_BYTES = 16 * 2**20  # float32 bytes one read task decodes at most (see work_units)


@dataclass
class SumResult:
    """Dense summed updates per tensor, and what it cost."""

    updates: dict[str, torch.Tensor]
    steps: list[int]
    bytes_read: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def sum_updates(reader, steps: Iterable[int], *, device="cpu", plan: PruningPlan | None = None, progress: bool = False) -> SumResult:
    dev = parse_device(device)
    order = reader.parse_steps(steps)
    t0 = time.perf_counter()
    b0 = reader.bytes_read
    if plan is not None:
        accs = _sum_with_plan(reader, order, dev, plan, progress)
    else:
        accs = _sum_stored(reader, order, dev, progress)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return SumResult(updates=accs, steps=order, bytes_read=reader.bytes_read - b0, seconds=time.perf_counter() - t0)


def read_decode(reader, steps: Iterable[int]) -> dict:
    order = reader.parse_steps(steps)
    t0 = time.perf_counter()
    b0 = reader.bytes_read
    n = 0
    with ThreadPoolExecutor(max_workers=reader.threads) as pool:
        for vals, _ in pool.map(lambda u: reader.read_rows(*u), work_units(reader, order)):
            n += vals.numel()
    return {"seconds": time.perf_counter() - t0, "bytes_read": reader.bytes_read - b0, "values": n}


def work_units(reader, order: list[int], *, split: bool = True) -> list[tuple[int, list[int]]]:
    """(group id, steps of one shard) to read and decode as one task.

    With ``split``, a unit decodes to at most ``UNIT_BYTES`` of float32: memory in
    flight stays bounded, and buffers stay small enough for malloc to reuse
    (fresh multi-MB allocations page-fault on every use).
    """
    out: list[tuple[int, list[int]]] = []
    for b in reader.shard_batches(order):
        per_group = []
        for g in reader.manifest.groups:
            rows = max(1, UNIT_BYTES // (4 * max(1, g.k))) if split else len(b)
            per_group.append([(g.id, b[i : i + rows]) for i in range(0, len(b), rows)])
        # Round-robin over groups: neighbouring units belong to different groups, so
        # workers adding them never wait on each other (a group's units add in order).
        out.extend(u for level in itertools.zip_longest(*per_group) for u in level if u is not None)
    return out


def _load_unit(reader, unit, dev: torch.device):
    """Read and decode one unit, with its selection's row contexts (a fresh reader builds
    its mask base sets here, on the worker: in parallel and overlapped with reading)."""
    gid, b = unit
    g = reader.manifest.groups[gid]
    vals, idx = reader.read_rows(gid, b)
    if dev.type == "cuda":
        vals = vals.pin_memory()
        idx = idx.pin_memory() if idx is not None else None
    contexts = [g.selection.row_context(reader.masks, g, s, dev) for s in b]
    return vals, idx, contexts


def _stream(reader, units, dev: torch.device, progress: bool):
    """Read+decode units on worker threads; yield ``(unit, values, indices, contexts)`` in order, on ``dev``."""
    window = max(2, 2 * reader.threads)
    bar = progress_bar(len(units), progress, "reading updates")
    with ThreadPoolExecutor(max_workers=reader.threads) as pool:
        queue: deque = deque()
        it = iter(units)
        for _ in range(window):
            u = next(it, None)
            if u is not None:
                queue.append((u, pool.submit(_load_unit, reader, u, dev)))
        try:
            while queue:
                u, fut = queue.popleft()
                vals, idx, contexts = fut.result()
                nxt = next(it, None)
                if nxt is not None:
                    queue.append((nxt, pool.submit(_load_unit, reader, nxt, dev)))
                if dev.type != "cpu":
                    vals = vals.to(dev, non_blocking=True)
                    idx = idx.to(dev, non_blocking=True) if idx is not None else None
                bar.update(1)
                yield u, vals, idx, contexts
        finally:
            for _, f in queue:
                f.cancel()
            bar.close()


def _sum_stored(reader, order: list[int], dev: torch.device, progress: bool) -> dict[str, torch.Tensor]:
    groups = reader.manifest.groups
    sums = Sums(groups, dev)
    units = work_units(reader, order)
    if dev.type == "cpu":
        _accumulate_on_workers(reader, units, sums, progress)
    else:
        for (gid, b), vals, idx, contexts in _stream(reader, units, dev, progress):
            sums.add_rows(groups[gid], b, vals, idx, reader.masks, contexts)
    return sums.tensors(reader.manifest, groups)


def _accumulate_on_workers(reader, units: list, sums: Sums, progress: bool) -> None:
    """CPU: each worker reads, decodes and adds its own unit.

    With one accumulating thread, the adds (about as costly as decoding for random
    groups) ran beside two decoding threads on two cores and the cores sat ~35 %
    idle (ResNet-18 class request: 2.6 CPU-s in 2.05 s). Here every thread does
    both. A group's units still add in order -- a unit waits for its group's
    previous unit -- so every element gets its additions in step order and the sum
    is bit-identical to the one-thread path. Units are submitted in order, so the
    unit a worker waits for has already started.
    """
    groups = reader.manifest.groups
    seq: list[int] = []
    counts: dict[int, int] = {}
    for gid, _ in units:
        seq.append(counts.get(gid, 0))
        counts[gid] = seq[-1] + 1
    turn = dict.fromkeys(counts, 0)
    cond = threading.Condition()
    failed = [False]
    cpu = torch.device("cpu")

    def work(i: int) -> None:
        gid, b = units[i]
        try:
            vals, idx, contexts = _load_unit(reader, units[i], cpu)
            with cond:
                cond.wait_for(lambda: failed[0] or turn[gid] == seq[i])
                if failed[0]:
                    return
            sums.add_rows(groups[gid], b, vals, idx, reader.masks, contexts)  # this group is ours until turn moves
        except BaseException:
            with cond:
                failed[0] = True
                cond.notify_all()
            raise
        with cond:
            turn[gid] += 1
            cond.notify_all()

    window = max(2, 2 * reader.threads)  # units decoded ahead: bounds memory
    bar = progress_bar(len(units), progress, "reading updates")
    with ThreadPoolExecutor(max_workers=reader.threads) as pool:
        pending: deque = deque()
        try:
            for i in range(len(units)):
                if len(pending) >= window:
                    pending.popleft().result()
                    bar.update(1)
                pending.append(pool.submit(work, i))
            while pending:
                pending.popleft().result()
                bar.update(1)
        except BaseException:
            with cond:
                failed[0] = True
                cond.notify_all()
            for f in pending:
                f.cancel()
            raise
        finally:
            bar.close()


def _sum_with_plan(reader, order: list[int], dev: torch.device, plan: PruningPlan, progress: bool) -> dict[str, torch.Tensor]:
    """Prune a dense store's rows at unlearning time, as the recorder would have with ``plan``."""
    m = reader.manifest
    if any(g.selection is not ALL for g in m.groups):
        raise InvalidArgumentError(
            f"plan: unlearn-time pruning needs a store recorded dense (rho=0), this one was recorded with {m.plan.describe()}"
        )
    vgroups = build_groups(list(m.tensors), plan)
    masks = MaskGenerator(plan.seed if plan.seed is not None else m.mask_seed, m.mask_pool)
    # The same accumulator as the stored path, row by row: both paths add in the same order.
    sums = Sums(vgroups, dev)
    stored_of = {g.tensors[0]: g.id for g in m.groups}
    units = work_units(reader, order, split=False)  # every group of a batch together
    pending: dict[tuple, dict[int, torch.Tensor]] = {}
    for (gid, b), vals, _, _ in _stream(reader, units, dev, progress):
        key = tuple(b)
        pending.setdefault(key, {})[gid] = vals
        if len(pending[key]) < len(m.groups):
            continue
        rows = pending.pop(key)
        for vg in vgroups:
            dense = torch.cat([rows[stored_of[t]] for t in vg.tensors], dim=1) if len(vg.tensors) > 1 else rows[stored_of[vg.tensors[0]]]
            for j, s in enumerate(b):
                kept, idx = vg.selection.select(dense[j], s, vg, masks)
                sums.add_rows(vg, [s], kept[None], None if idx is None else idx[None], masks)
    return sums.tensors(m, vgroups)
