"""Recording under torch.distributed and through training wrappers.

What the :class:`~deltastore.Recorder` needs to record the same store whatever
wraps the model and the optimizer, and however many ranks train:

- :func:`unwrap_model` / :func:`unwrap_optimizer`: the module whose tensor names
  the store uses (DDP's ``module.`` prefix and ``torch.compile``'s ``_orig_mod.``
  dropped) and the torch optimizer whose step hooks fire on real steps only
  (accelerate's ``AcceleratedOptimizer`` skips the inner step while it
  accumulates, and a ``GradScaler`` skips it on inf/NaN gradients).
- :class:`RankGroup`: the few collectives of a multi-rank recording, with tensors
  only (no pickle, no ``all_gather_object``): every rank's sample ids reach rank 0
  each step (string ids as UTF-8 bytes plus lengths), rank 0 tells the other
  ranks what it opened, and every rank checks it was given the same arguments.
- :func:`full_delta`: the update of a DTensor parameter (FSDP2's ``fully_shard``)
  as the full tensor, so masks stay defined on the full tensor and a store's
  decoded updates do not depend on the number of ranks.

Collectives run on the CPU for gloo and on the current CUDA device for NCCL
(:attr:`RankGroup.device`); every other line is device-generic.
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import torch

from .errors import InvalidArgumentError, RecordingFailedError
from .index import SampleIds, parse_sample_ids

def _dtensor_type():
    """DTensor's class if torch.distributed.tensor is loaded (no DTensor can exist otherwise).

    Looked up, not imported: importing it costs ~0.5-1.7 s, on every ``import deltastore``.
    """
    mod = sys.modules.get("torch.distributed.tensor")
    return getattr(mod, "DTensor", None)


def _wrapper_types() -> tuple[type, ...]:
    types: list[type] = [torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel]
    try:
        from torch._dynamo.eval_frame import OptimizedModule

        types.append(OptimizedModule)
    except ImportError:  # pragma: no cover - torch without dynamo
        pass
    return tuple(types)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose parameter names a store uses: DDP, DataParallel and torch.compile wrappers removed.

    Only these known wrappers are removed (a user module may well have its own
    ``.module`` attribute); FSDP2's ``fully_shard`` changes no names.
    """
    wrappers = _wrapper_types()
    while isinstance(model, wrappers):
        model = model._orig_mod if hasattr(model, "_orig_mod") else model.module
    return model


def unwrap_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside ``optimizer`` (accelerate, Lightning and similar wrappers).

    A wrapper is anything exposing the real optimizer as ``.optimizer`` or
    ``._optimizer``; accelerate's ``AcceleratedOptimizer`` even subclasses
    ``torch.optim.Optimizer`` without its hook tables, so the test is the
    attribute, not the type. Hooks go on the innermost optimizer: it steps only
    on real steps (after accumulation, and not when a GradScaler skips).
    """
    seen = 0
    opt = optimizer
    while True:
        inner = getattr(opt, "optimizer", None)
        if inner is None or inner is opt:
            inner = getattr(opt, "_optimizer", None)
        if inner is None or inner is opt:
            break
        opt = inner
        seen += 1
        if seen > 16:
            raise InvalidArgumentError(f"optimizer: expected a torch optimizer inside at most 16 wrappers, got a deeper chain ({type(optimizer).__name__})")
    if not isinstance(opt, torch.optim.Optimizer) or not hasattr(opt, "_optimizer_step_pre_hooks"):
        raise InvalidArgumentError(
            f"optimizer: expected a torch.optim.Optimizer or a wrapper exposing one as .optimizer, got {type(optimizer).__name__}"
        )
    return opt


def is_dtensor(t: torch.Tensor) -> bool:
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def local_part(t: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds: a DTensor's local shard, any other tensor itself."""
    return t.to_local() if is_dtensor(t) else t


def full_delta(t: torch.Tensor, before_local: torch.Tensor) -> torch.Tensor:
    """Flat float32 update of ``t`` given its local part before the step; a collective for DTensors.

    For a DTensor each rank subtracts on its own shard; the shards' deltas are
    then gathered into the full tensor (an all-gather of the update, once per
    step), so masks and top-k selection see exactly what a single process would.
    """
    now = local_part(t.detach()).float()
    delta = now - before_local
    if is_dtensor(t):
        delta = _dtensor_type().from_local(delta, t.device_mesh, t.placements, run_check=False, shape=t.shape, stride=t.stride()).full_tensor()
    return delta.reshape(-1)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for DTensors)."""
    return t.detach().full_tensor() if is_dtensor(t) else t.detach()


class RankGroup:
    """The collectives a multi-rank recording uses; tensors only, never pickle.

    Every rank must make the same calls in the same order (the Recorder's hooks
    do: each real optimizer step runs on every rank).
    """

    def __init__(self, group=None):
        import torch.distributed as dist

        self.dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        backend = str(dist.get_backend(group)).lower()
        # gloo reduces CPU tensors; NCCL only device tensors (the rank's current device).
        if "nccl" in backend and torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())
        elif backend not in ("gloo", "mpi") and hasattr(torch, "accelerator") and torch.accelerator.is_available():
            self.device = torch.accelerator.current_accelerator()
        else:
            self.device = torch.device("cpu")

    @classmethod
    def current(cls) -> "RankGroup | None":
        """The default process group when one with more than one rank is initialized, else None."""
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
            return None
        return cls()

    # ---- primitives -----------------------------------------------------------
    def _all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        t = t.to(self.device)
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        self.dist.all_gather(out, t, group=self.group)
        return [o.cpu() for o in out]

    def _gather_ragged(self, t: torch.Tensor) -> list[torch.Tensor]:
        """All-gather 1-D tensors of different lengths (padded to the longest)."""
        n = torch.tensor([t.numel()], dtype=torch.int64)
        sizes = [int(s) for s in torch.cat(self._all_gather(n))]
        padded = torch.zeros(max(sizes), dtype=t.dtype)
        padded[: t.numel()] = t
        return [part[:s] for part, s in zip(self._all_gather(padded), sizes)]

    def broadcast_bytes(self, data: bytes | None, src: int = 0) -> bytes:
        """``data`` from rank ``src`` on every rank."""
        n = torch.tensor([len(data) if self.rank == src else 0], dtype=torch.int64, device=self.device)
        self.dist.broadcast(n, src, group=self.group)
        buf = torch.zeros(int(n.item()), dtype=torch.uint8, device=self.device)
        if self.rank == src and len(data):
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        self.dist.broadcast(buf, src, group=self.group)
        return buf.cpu().numpy().tobytes()

    # ---- what the recorder needs ----------------------------------------------
    def require_same(self, what: str, description: str) -> None:
        """Raise on every rank unless every rank passed the same ``description`` (compared by sha256)."""
        digest = torch.frombuffer(bytearray(hashlib.sha256(description.encode()).digest()), dtype=torch.uint8)
        digests = self._all_gather(digest)
        differ = [r for r, d in enumerate(digests) if not torch.equal(d, digests[0])]
        if differ:
            raise InvalidArgumentError(
                f"{what}: expected every rank to construct the Recorder with the same model, optimizer and options, "
                f"got ranks {differ} differing from rank 0"
            )

    def share_opened(self, opened: dict | None, error: BaseException | None) -> dict:
        """Rank 0 tells every rank what it opened (a JSON object), or that it failed."""
        payload = json.dumps({"ok": True, **opened} if error is None and opened is not None else
                             {"ok": False, "error": f"{type(error).__name__}: {error}"}).encode() if self.rank == 0 else None
        got = json.loads(self.broadcast_bytes(payload).decode())
        if not got["ok"] and self.rank != 0:
            raise RecordingFailedError(f"rank {self.rank}: rank 0 could not open the store ({got['error']})", committed_steps=0)
        return got

    def gather_ids(self, ids: SampleIds) -> SampleIds:
        """Every rank's ids of this step, rank 0's first (on every rank: an all-gather)."""
        if ids.id_type == "int64":
            parts = self._gather_ragged(torch.from_numpy(np.array(ids.values, dtype=np.int64)))
            return parse_sample_ids(torch.cat(parts).numpy(), "int64")
        lengths, blob = encode_strings(ids.values)
        parts = zip(self._gather_ragged(lengths), self._gather_ragged(blob))
        return parse_sample_ids([s for lens, raw in parts for s in decode_strings(lens, raw)], "string")


def encode_strings(values) -> tuple[torch.Tensor, torch.Tensor]:
    """String ids as tensors for a collective: (int64 byte lengths, uint8 UTF-8 bytes, concatenated)."""
    encoded = [s.encode("utf-8") for s in values]
    blob = b"".join(encoded)
    data = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)
    return torch.tensor([len(e) for e in encoded], dtype=torch.int64), data


def decode_strings(lengths: torch.Tensor, data: torch.Tensor) -> list[str]:
    """Inverse of :func:`encode_strings`."""
    raw, pos, out = data.numpy().tobytes(), 0, []
    for n in lengths.tolist():
        out.append(raw[pos : pos + n].decode("utf-8"))
        pos += n
    if pos != len(raw):
        raise ValueError(f"string ids: expected {pos} bytes for {len(out)} ids, got {len(raw)}")
    return out
