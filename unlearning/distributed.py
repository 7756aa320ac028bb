"""forget / restore on a model sharded over ranks (FSDP2 ``fully_shard``, DTensor parameters).

Call on every rank with the same arguments. Rank 0 gathers the whole weights,
runs :func:`~unlearning.forget.forget` (or ``restore``) on them -- every check,
the read of the stored updates and the ledger entry happen there, once -- and
then each rank takes its own shard of the new weights (a scatter from rank 0)
into its local shard. If anything fails on rank 0, every rank raises and no
shard changes: the all-or-nothing rule of ``forget`` holds across ranks.
Without a process group (or with one rank) these are ``forget`` / ``restore``.
"""

from __future__ import annotations

import json

import torch

from deltastore.distributed import RankGroup, full_tensor, is_dtensor, unwrap_model
from deltastore.errors import DeltaStoreError

from .forget import forget, restore
from .ledger import Receipt


def forget_sharded(model: torch.nn.Module, store, sample_ids, **kwargs) -> Receipt:
    """:func:`~unlearning.forget.forget` for a model whose parameters are DTensor shards."""
    return _sharded(forget, model, store, sample_ids, **kwargs)


def restore_sharded(model: torch.nn.Module, store, request_id: str, **kwargs) -> Receipt:
    """:func:`~unlearning.forget.restore` for a model whose parameters are DTensor shards."""
    return _sharded(restore, model, store, request_id, **kwargs)


def _sharded(op, model, store, arg, **kwargs) -> Receipt:
    model = unwrap_model(model)
    ranks = RankGroup.current()
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(dict(model.named_buffers(remove_duplicate=False)))
    if ranks is None:
        whole = {n: full_tensor(t).clone() for n, t in named.items()}
        receipt = op(whole, store, arg, **kwargs)
        _take(named, whole, None)
        return receipt
    whole = {n: full_tensor(t).clone() for n, t in named.items()}  # a collective per DTensor
    receipt, error = None, None
    if ranks.rank == 0:
        try:
            receipt = op(whole, store, arg, **kwargs)  # checks, reads, ledger entry: once, on rank 0
        except BaseException as exc:  # every rank must hear of it before the scatter
            error = exc
    payload = (json.dumps({"ok": True, "receipt": receipt.to_json()} if error is None else
                          {"ok": False, "error": f"{type(error).__name__}: {error}"}).encode() if ranks.rank == 0 else None)
    got = json.loads(ranks.broadcast_bytes(payload).decode())
    if error is not None:
        raise error
    if not got["ok"]:
        raise DeltaStoreError(f"rank {ranks.rank}: {op.__name__} failed on rank 0 ({got['error']}); no shard changed")
    _take(named, whole, ranks)
    return receipt if receipt is not None else Receipt.from_json(got["receipt"])


@torch.no_grad()
def _take(named: dict[str, torch.Tensor], whole: dict[str, torch.Tensor], ranks: RankGroup | None) -> None:
    """Each rank's shard of rank 0's new whole tensors into its local shards (plain tensors whole)."""
    from torch.distributed.tensor import distribute_tensor

    for name, t in named.items():
        new = whole[name]
        if is_dtensor(t):
            # distribute_tensor scatters from src_data_rank (0): every rank gets its shard of rank 0's tensor.
            part = distribute_tensor(new.to(t.dtype), t.device_mesh, t.placements, src_data_rank=0).to_local()
            t.to_local().copy_(part)
        else:
            if ranks is not None:
                new = new.to(ranks.device)
                ranks.dist.broadcast(new, 0, group=ranks.group)
            t.copy_(new.to(t.device))

