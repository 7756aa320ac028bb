"""FSDP2 per-rank writes, the plan and the exchange: which rank writes each group, and its update there.

*Plan* (:func:`plan_owners`): each group of the manifest gets one owner rank, the
same on every rank (computed from the manifest alone): stored bytes per step
balanced greedily, largest group first. Groups that are not made of DTensor
parameters alone (buffers, plain tensors) stay with the coordinator, rank 0,
whose copy is the model's (the rule before per-rank writes).

*Exchange* (:class:`ShardExchange`): after a step every rank holds the update of
its own shard of each parameter. Each group's whole update is assembled on its
owner only -- one ``all_to_all_single`` per bucket of groups, each rank sending
each owner exactly its shards of that owner's groups -- so no rank holds more
than the whole updates of the groups it writes (an all-gather would put every
whole update on every rank). The owner then prunes with masks defined on the
whole tensor, exactly as one process would: decoded updates do not depend on the
number of ranks.

Layouts understood: DTensors on a 1-D mesh of every rank in rank order, placed
``Shard(d)`` (``torch.chunk`` along ``d``: what ``fully_shard`` does) or
``Replicate()``. Any other DTensor (2-D meshes, strided shards) is gathered whole
on every rank (``full_tensor()``) and the owner keeps its copy: correct, just
not cheaper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..distributed import RankGroup, is_dtensor
from ..format import Group, Manifest

# Whole updates one rank receives per all-to-all at most (memory bound of the exchange).
EXCHANGE_BUCKET_BYTES = 256 * 2**20


def group_step_bytes(manifest: Manifest, g: Group) -> int:
    """Stored bytes one step of group ``g`` takes before compression (every rows array)."""
    return sum(cols * np.dtype(dt).itemsize for cols, dt, _ in manifest.arrays(g).values())


def plan_owners(manifest: Manifest, world: int, movable: Callable[[Group], bool]) -> list[int]:
    """Owner rank of each group (manifest order): bytes per step balanced; unmovable groups on rank 0.

    Deterministic (same manifest, same answer on every rank): groups by decreasing
    bytes, ties by id, each to the least-loaded rank; a tie goes to a peer before
    rank 0 (which also writes the index and commits), then to the lowest rank. The
    coordinator starts with the load of the groups it must keep.
    """
    load = [0] * world
    owners = [0] * len(manifest.groups)
    sizes = [group_step_bytes(manifest, g) for g in manifest.groups]
    spread = []
    for i, g in enumerate(manifest.groups):
        if movable(g):
            spread.append(i)
        else:
            load[0] += sizes[i]
    for i in sorted(spread, key=lambda i: (-sizes[i], i)):
        r = min(range(world), key=lambda r: (load[r], r == 0, r))
        owners[i] = r
        load[r] += sizes[i]
    return owners


def chunk_shapes(shape: tuple[int, ...], dim: int, world: int) -> list[tuple[int, ...]]:
    """Each rank's local shape of a tensor split along ``dim`` as ``torch.chunk`` does (trailing ranks may get 0 rows)."""
    n = shape[dim]
    c = -(-n // world) if n else 0
    out = []
    for r in range(world):
        rows = max(0, min(n, (r + 1) * c) - r * c)
        out.append(tuple(rows if i == dim else s for i, s in enumerate(shape)))
    return out


@dataclass
class _Tensor:
    """How one tensor of a group reaches its owner."""

    gid: int
    pos: int  # position in the group
    mode: str  # "shard": exchanged; "local": the owner's own copy; "full": gathered whole on every rank
    dim: int = 0
    shapes: list = field(default_factory=list)  # every rank's local shape ("shard")
    t: torch.Tensor | None = None

    @property
    def numels(self) -> list[int]:
        return [int(np.prod(s)) for s in self.shapes]


@dataclass
class _Bucket:
    send: list  # _Tensor in the order this rank sends them: by owner, then group, then position
    in_splits: list
    recv: list  # _Tensor this rank receives (groups it owns), by group, then position
    out_splits: list


def _layout(t: torch.Tensor, world: int) -> tuple[str, int]:
    """("shard", dim), ("local", 0) or ("full", 0) for one recorded tensor."""
    if not is_dtensor(t):
        return "local", 0
    from torch.distributed.tensor import Replicate, Shard

    mesh = t.device_mesh
    if mesh.ndim != 1 or mesh.mesh.flatten().tolist() != list(range(world)) or len(t.placements) != 1:
        return "full", 0
    (p,) = t.placements
    if type(p) is Replicate:
        return "local", 0
    if type(p) is Shard and t.ndim:  # exactly Shard: _StridedShard (FSDP2 + TP) lays rows out otherwise
        return "shard", p.dim % t.ndim
    return "full", 0


class ShardExchange:
    """Assembles each group's whole flat update on its owner (build on every rank, call on every rank).

    ``groups``: (group, its tensors) for every group recorded by exchange or by its
    owner; ``owners``: owner rank per group id. Construction is a collective (the
    ranks agree on which tensors their local shapes allow to exchange).
    """

    def __init__(self, ranks: RankGroup, groups: list[tuple[Group, list[torch.Tensor]]], owners: dict[int, int],
                 bucket_bytes: int = EXCHANGE_BUCKET_BYTES):
        self.ranks = ranks
        self.owners = owners
        world, me = ranks.world_size, ranks.rank
        tensors: list[_Tensor] = []
        for g, ts in groups:
            for pos, t in enumerate(ts):
                mode, dim = _layout(t, world)
                spec = _Tensor(g.id, pos, mode, dim, t=t)
                if mode == "shard":
                    spec.shapes = chunk_shapes(tuple(t.shape), dim, world)
                tensors.append(spec)
        # A local shard not laid out as torch.chunk would be assembled wrong: such a tensor is
        # gathered whole instead, on every rank alike (the ranks agree first).
        ok = [int(s.mode != "shard" or tuple(s.t.to_local().shape) == s.shapes[me]) for s in tensors]
        for s, agreed in zip(tensors, ranks.all_min(ok) if tensors else []):
            if not agreed:
                s.mode, s.shapes = "full", []
        self._full = [s for s in tensors if s.mode == "full"]
        self._tensors = {(s.gid, s.pos): s for s in tensors}
        self._groups = {g.id: len(ts) for g, ts in groups}
        self.involves = {s.gid for s in tensors if s.mode != "local"}  # groups every rank takes part in
        self._buckets = self._plan_buckets([s for s in tensors if s.mode == "shard"], bucket_bytes)

    def _plan_buckets(self, shard: list[_Tensor], bucket_bytes: int) -> list[_Bucket]:
        world, me = self.ranks.world_size, self.ranks.rank
        batches, current, size = [], [], 0
        for s in shard:  # consecutive groups, whole groups per bucket
            nbytes = 4 * sum(s.numels)
            if current and size + nbytes > bucket_bytes and current[-1].gid != s.gid:
                batches.append(current)
                current, size = [], 0
            current.append(s)
            size += nbytes
        if current:
            batches.append(current)
        out = []
        for batch in batches:
            send = [s for o in range(world) for s in batch if self.owners[s.gid] == o]
            in_splits = [sum(s.numels[me] for s in batch if self.owners[s.gid] == o) for o in range(world)]
            recv = [s for s in batch if self.owners[s.gid] == me]
            out_splits = [sum(s.numels[r] for s in recv) for r in range(world)]
            out.append(_Bucket(send, in_splits, recv, out_splits))
        return out

    @property
    def received_elements(self) -> int:
        """Update elements this rank receives per step by all-to-all, its own shards included (an
        all-gather of every update would bring every element of the model to every rank)."""
        return sum(sum(b.out_splits) for b in self._buckets)

    def assemble(self, local: dict[int, list[torch.Tensor]]) -> dict[int, torch.Tensor]:
        """Whole flat float32 update of each group this rank owns (a collective).

        ``local[gid]``: this rank's flat float32 update of each tensor of group ``gid``
        (its local shard for a DTensor), for every group in :attr:`involves` and every
        group this rank owns.
        """
        dist, dev, me = self.ranks.dist, self.ranks.device, self.ranks.rank
        whole: dict[tuple[int, int], torch.Tensor] = {}
        for s in self._full:  # every rank, in group order: an all-gather per tensor
            from torch.distributed.tensor import DTensor

            t = s.t
            part = local[s.gid][s.pos].reshape(t.to_local().shape)
            d = DTensor.from_local(part, t.device_mesh, t.placements, run_check=False, shape=t.shape, stride=t.stride())
            whole[(s.gid, s.pos)] = d.full_tensor().reshape(-1)
        for b in self._buckets:
            parts = [local[s.gid][s.pos].reshape(-1).to(dev) for s in b.send]
            send = torch.cat(parts) if parts else torch.empty(0, dtype=torch.float32, device=dev)
            recv = torch.empty(sum(b.out_splits), dtype=torch.float32, device=dev)
            dist.all_to_all_single(recv, send, output_split_sizes=b.out_splits, input_split_sizes=b.in_splits,
                                   group=self.ranks.group)
            pieces: dict[tuple[int, int], list[torch.Tensor]] = {(s.gid, s.pos): [] for s in b.recv}
            offset = 0
            for r in range(self.ranks.world_size):  # from each rank: its shard of each tensor I own, in order
                for s in b.recv:
                    n = s.numels[r]
                    pieces[(s.gid, s.pos)].append(recv[offset : offset + n].view(s.shapes[r]))
                    offset += n
            for s in b.recv:
                whole[(s.gid, s.pos)] = torch.cat(pieces[(s.gid, s.pos)], dim=s.dim).reshape(-1)
        out = {}
        for gid, n in self._groups.items():
            if self.owners[gid] != me:
                continue
            flats = [whole[(gid, i)] if (gid, i) in whole else local[gid][i].reshape(-1) for i in range(n)]
            out[gid] = flats[0] if n == 1 else torch.cat([f.to(flats[0].device) for f in flats])
        return out
